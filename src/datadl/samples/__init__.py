"""Real sample datasets shipped with datadl (see README.md here for sources and licences)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

NAMES = ("penguins.csv", "penguins-raw.csv", "seattle-weather.csv", "airports.csv", "cars.json")


def path(name: str) -> Path:
    """The path of a shipped sample file; ``KeyError`` for a name not shipped."""
    if name not in NAMES:
        raise KeyError(name)
    return Path(str(resources.files(__package__).joinpath(name)))
