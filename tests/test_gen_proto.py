"""The generated-code check compares what the protos say, not the generator's version."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import gen_proto  # noqa: E402


def _generate(where: Path) -> Path:
    where.mkdir()
    return gen_proto.generate(where)


def test_a_newer_generator_is_not_stale_but_a_changed_proto_is(tmp_path: Path) -> None:
    committed = tmp_path / "committed"
    shutil.copytree(gen_proto.OUT_PKG, committed, ignore=shutil.ignore_patterns("__pycache__"))
    assert gen_proto.stale_files(_generate(tmp_path / "gen"), committed) == []
    # only the generator's version differs: up to date
    grpc_file = committed / "common_pb2_grpc.py"
    grpc_file.write_text(grpc_file.read_text().replace(
        "GRPC_GENERATED_VERSION = '", "GRPC_GENERATED_VERSION = '9"))
    pb2 = committed / "common_pb2.py"
    text = pb2.read_text()
    pb2.write_text(text.replace("# Protobuf Python Version: ", "# Protobuf Python Version: 9"))
    assert gen_proto.stale_files(_generate(tmp_path / "gen2"), committed) == []
    # what the protos say differs: stale
    pb2.write_text(text.replace("DESCRIPTOR = ", "DESCRIPTOR  = ", 1))
    (committed / "extra_pb2.py").write_text("")
    assert gen_proto.stale_files(_generate(tmp_path / "gen3"), committed) == [
        "extra_pb2.py", "common_pb2.py"]
