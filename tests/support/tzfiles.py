"""A zone read straight from the tzdata package's file, independently of pdp.zones: what
the tests compare pdp's local times against."""

from __future__ import annotations

import importlib.resources
import zoneinfo


def bundled(name: str) -> zoneinfo.ZoneInfo:
    res = importlib.resources.files("tzdata.zoneinfo")
    for part in name.split("/"):
        res = res.joinpath(part)
    with res.open("rb") as f:
        return zoneinfo.ZoneInfo.from_file(f, key=name)
