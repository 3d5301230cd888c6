"""Model names provided by other packages (the pocket pair registers its names here).

Providers are found through the `bitfront.models` entry-point group: each entry point names a
function returning `{model name: resolver}`, where `resolver(show_progress)` returns the
model's local directory (training or fetching it if needed). Looking names up this way keeps
`models` free of imports from the packages above it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

Resolver = Callable[[bool], Path]
GROUP = "bitfront.models"


@cache
def registered() -> dict[str, Resolver]:
    """Every provided model name with its resolver."""
    names: dict[str, Resolver] = {}
    for entry in entry_points(group=GROUP):
        names.update(entry.load()())
    return names
