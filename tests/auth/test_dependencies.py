"""mTLS needs `cryptography` at run time (client certificate identities are parsed with it):
it is a dependency of the package, not of its tests only."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0] \
        .strip().lower()


def test_cryptography_is_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "cryptography" in {_name(r) for r in project["dependencies"]}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        assert "cryptography" not in {_name(r) for r in requirements}, extra
