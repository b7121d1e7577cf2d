"""Generate pdp/v1 (protobuf + gRPC Python code and typed stubs) from proto/.

``python tools/gen_proto.py`` rewrites the generated package in place;
``python tools/gen_proto.py --check`` generates into a temp dir and fails if pdp/v1 is stale.
The generated files are committed (no build step at install time) and never edited by hand.

The check compares what the protos say, not which generator said it: the lines that only
carry the generator's own version (``GRPC_GENERATED_VERSION``, the protobuf version a
``_pb2.py`` was made with) are left out of the comparison. Those lines set the oldest
runtime the code accepts, so the committed files keep theirs: a newer grpcio-tools on a
fresh machine must not fail the check, nor raise the runtime floor behind anyone's back.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto"
OUT_PKG = ROOT / "pdp" / "v1"

#: Generator-version lines, left out of the --check comparison (see the module doc).
_VERSION_LINES = [
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.\w+,)"
               r"\s*\d+,\s*\d+,\s*\d+,"),
]


def _content(path: Path) -> str:
    text = path.read_text()
    for pattern in _VERSION_LINES:
        text = pattern.sub(lambda m: m.group(1) if m.groups() else "", text)
    return text


def stale_files(generated: Path, committed: Path) -> list[str]:
    """Files that differ in what the protos say (or exist on one side only)."""
    names = {p.name for p in generated.iterdir() if p.is_file()}
    have = {p.name for p in committed.iterdir() if p.is_file()}
    out = sorted(names ^ have)
    out += sorted(n for n in names & have
                  if _content(generated / n) != _content(committed / n))
    return out


def generate(out_root: Path) -> Path:
    files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "pdp" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    pkg = out_root / "pdp" / "v1"
    (pkg / "__init__.py").write_text(
        '"""Generated from proto/pdp/v1 by tools/gen_proto.py; do not edit."""\n')
    return pkg


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pkg = generate(Path(tmp))
        if "--check" in argv:
            stale = stale_files(pkg, OUT_PKG)
            if stale:
                print(f"generated code in pdp/v1 is stale: {sorted(stale)}; run tools/gen_proto.py")
                return 1
            print("pdp/v1 is up to date with proto/")
            return 0
        if OUT_PKG.exists():
            shutil.rmtree(OUT_PKG)
        shutil.copytree(pkg, OUT_PKG)
        print(f"wrote {OUT_PKG}")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
