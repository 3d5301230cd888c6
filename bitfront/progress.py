"""One progress display style for every long stage (rich, with ETA)."""

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_bar(transient: bool = False, show: bool = True) -> Progress:
    """A rich Progress with description, bar, count, elapsed time and ETA, drawn on stderr so
    that stdout holds only results (`--json` output stays parseable); nothing when `show` is
    False."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=transient,
        console=Console(stderr=True),
        disable=not show,
    )


def track(items: Iterable[T], description: str, total: int | None = None,
          show: bool = True) -> Iterator[T]:
    """Iterate over `items` with a progress bar (silent when `show` is False)."""
    if not show:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, info="")
        for item in items:
            yield item
            bar.advance(task)
