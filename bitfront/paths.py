"""Where bitfront keeps what it computes once: the user cache directory."""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def cache_dir() -> Path:
    """`$BITFRONT_CACHE`, else `$XDG_CACHE_HOME/bitfront`, else `~/.cache/bitfront`."""
    if env := os.environ.get("BITFRONT_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bitfront"


def check_writable(directory: Path) -> None:
    """Create `directory` if needed and write a file there, or raise a one-line error."""
    from bitfront.errors import BitfrontError

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise BitfrontError(f"cannot write to {directory}: {exc.strerror or exc}") from None


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a unique temporary file and a rename: readers never
    see a partial file, and concurrent writers (workers on one machine) never collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


RUNS = Path("runs")


def run_dir(kind: str, name: str) -> Path:
    """`runs/KIND/NAME`: where a command writes its outputs by default (`name` may be a
    model name, path or hub id; only its last part is kept, made file-name safe)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).name)
    return RUNS / kind / safe


def default_storage(study_name: str) -> str:
    """The SQLite storage of a search run that names no storage."""
    return f"sqlite:///{(run_dir('search', study_name) / 'study.db').resolve()}"


def read_cached(path: Path, parse: Callable[[dict], T]) -> T | None:
    """`parse` of the JSON cache file at `path`; None when it is absent or damaged (cut
    short, not JSON, or not the structure `parse` expects), so the caller recomputes it."""
    try:
        return parse(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return None
