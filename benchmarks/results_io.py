"""What the benchmarks share: printing a result as JSON and keeping it under results/."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def emit(result: dict, out: str | None) -> None:
    """Print `result` as JSON; with `out`, also write it to results/OUT."""
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / out).write_text(text + "\n")
