"""Where pocket models live: the user cache, else the copy shipped in the package, else they
are trained on first use (both twins of a size at once). A copy whose training record does
not match the current recipe is not used."""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from importlib import resources
from pathlib import Path

from bitfront.paths import cache_dir
from bitfront.pocket.train import SIZES, PocketSize, train_pair


def pocket_size_of(name: str) -> PocketSize | None:
    """The size a pocket model name belongs to, or None if `name` is not a pocket name."""
    for size in SIZES.values():
        if name in size.names():
            return size
    return None


def pocket_names() -> list[str]:
    return [name for size in SIZES.values() for name in size.names()]


def cached_dir(name: str) -> Path:
    return cache_dir() / "pocket" / name


def shipped_dir(name: str) -> Path:
    return Path(str(resources.files("bitfront.pocket") / "weights" / name))


def is_current(directory: Path, size: PocketSize) -> bool:
    """A complete copy trained with today's recipe (a changed recipe means retraining)."""
    record = directory / "training.json"
    if not (directory / "config.json").exists() or not record.exists():
        return False
    return json.loads(record.read_text()).get("size") == asdict(size)


def provide() -> dict:
    """The pocket names for the model registry (entry point `bitfront.models`)."""
    return {name: partial(_resolve, name) for name in pocket_names()}


def _resolve(name: str, show_progress: bool) -> Path:
    return pocket_dir(name, show_progress=show_progress)


def pocket_dir(name: str, *, show_progress: bool = True) -> Path:
    """The directory of pocket model `name`, training its pair if no copy exists."""
    size = pocket_size_of(name)
    if size is None:
        raise KeyError(name)
    for directory in (cached_dir(name), shipped_dir(name)):
        if is_current(directory, size):
            return directory
    return train_pair(size, cache_dir() / "pocket", show_progress=show_progress)[name]
