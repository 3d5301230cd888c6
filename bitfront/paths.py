"""Where bitfront keeps what it computes once: the user cache directory."""

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
    see a partial file, and concurrent writers (workers on one machine) never collide. A
    write that fails (a full disk) leaves nothing behind and is a one-line error."""
    with atomic_files(path) as scratch:
        (scratch / path.name).write_text(text)


@contextlib.contextmanager
def atomic_files(*paths: Path) -> Iterator[Path]:
    """A scratch directory beside the first of `paths` (same file system) to build them in:
    when the block completes, each `scratch / path.name` is renamed to its path (in order:
    put the one readers look for last), and the scratch, with whatever else it holds, is
    removed; a failure (a full disk: one line) leaves nothing at any path."""
    path = Path(paths[0])
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        with disk_errors(path):
            yield scratch
            for target in paths:
                os.replace(scratch / Path(target).name, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn a failure to write `path` (a full disk, a missing permission: an OSError, or
    safetensors' report of one) into a one-line BitfrontError."""
    from bitfront.errors import BitfrontError

    try:
        yield
    except OSError as exc:
        raise BitfrontError(f"cannot write {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # safetensors reports I/O errors as its own SafetensorError
        code = re.search(r"os error (\d+)|Os \{ code: (\d+)", str(exc))
        if type(exc).__name__ != "SafetensorError" or code is None:
            raise
        number = int(code.group(1) or code.group(2))
        raise BitfrontError(f"cannot write {path}: {os.strerror(number)}") from None


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A directory to fill that appears at `path` only once it is complete: it is written as
    a temporary sibling and renamed into place (an earlier export at `path` is replaced; an
    empty directory too; anything else there is refused before any work). A failure, a full
    disk or a kill leaves nothing at `path` that a loader accepts (a killed run leaves only
    the hidden `.NAME.partial-*` sibling) and is a one-line error."""
    from bitfront.errors import BitfrontError

    path = Path(path)
    if path.exists() and not (path.is_dir() and (not any(path.iterdir())
                                                 or (path / EXPORT_MARK).exists())):
        raise BitfrontError(f"{path} exists and is not an earlier export: remove it or "
                            "choose another output")
    with disk_errors(path):
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial-"))
    try:
        with disk_errors(path):
            yield tmp
            old = None
            if path.exists():
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
                os.rename(path, old / "export")
            try:
                os.rename(tmp, path)
            except OSError:
                if old is not None:  # put the earlier export back
                    os.rename(old / "export", path)
                raise
            finally:
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


EXPORT_MARK = "bitplan.json"  # what every checkpoint export holds


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
