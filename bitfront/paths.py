"""Where bitfront keeps what it computes once: the user cache directory."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$BITFRONT_CACHE`, else `$XDG_CACHE_HOME/bitfront`, else `~/.cache/bitfront`."""
    if env := os.environ.get("BITFRONT_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bitfront"
