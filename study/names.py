"""Names the command line offers before it imports anything heavy (torch, the models): the
built-in presets and the schedule methods, so that ``sigmatune --help`` and a mistyped
command answer in about a second. ``study.config`` and ``study.schedules`` hold the things
these names stand for; ``tests/study/test_structure.py`` checks that the two agree."""

from __future__ import annotations

from importlib import resources
from typing import Any

# study.schedules.METHODS: models.schedules.SCHEDULES, then models.placement.PLACEMENTS
SCHEDULE_METHODS = ("karras", "loglinear", "gits", "ld3")


def presets_dir() -> Any:
    """The folder of the built-in presets (``study/presets/*.toml``) in the installed package."""
    return resources.files("sigmatune.study").joinpath("presets")


def preset_names() -> list[str]:
    """The built-in presets (``study/presets/*.toml``), sorted."""
    return sorted(
        p.name[: -len(".toml")] for p in presets_dir().iterdir() if p.name.endswith(".toml")
    )
