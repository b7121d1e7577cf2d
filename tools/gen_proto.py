"""Generate pdp/v1 (protobuf + gRPC Python code and typed stubs) from proto/.

``python tools/gen_proto.py`` rewrites the generated package in place;
``python tools/gen_proto.py --check`` generates into a temp dir and fails if pdp/v1 is stale.
The generated files are committed (no build step at install time) and never edited by hand.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto"
OUT_PKG = ROOT / "pdp" / "v1"


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
            cmp = filecmp.dircmp(pkg, OUT_PKG, ignore=["__pycache__"])
            stale = cmp.left_only + cmp.right_only + cmp.diff_files
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
