"""Reading and writing sizes and durations as people type them ("1.2GiB", "120ms")."""

from __future__ import annotations

import re

from bitfront.errors import BitfrontError

_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """'1.2GiB', '800MB', '123456' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = (match.group(2) or "b").lower() if match else ""
    if not match or unit not in _UNITS:
        raise BitfrontError(f"cannot read {text!r} as a size: use e.g. 1.2GiB, 800MB, 1500000")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_seconds(text: str) -> float:
    """'0.5s', '120ms', '2' -> seconds."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|us|)\s*", str(text))
    if not match:
        raise BitfrontError(f"cannot read {text!r} as a duration: use e.g. 0.5s or 120ms")
    scale = {"ms": 1e-3, "us": 1e-6, "s": 1.0, "": 1.0}[match.group(2)]
    return float(match.group(1)) * scale


def format_bytes(n: float) -> str:
    """Bytes for people: 512B, 1.5KiB, 3.67MiB, 1.2GiB (3 significant digits)."""
    if abs(n) < 1024:
        return f"{int(n)}B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.3g}{unit}"
    return f"{n / 1024:.3g}GiB"


def format_seconds(s: float) -> str:
    """Durations for people: 0.4s, 42s, 7.5min, 3.2h."""
    if s < 60:
        return f"{s:.2g}s" if s < 10 else f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.2g}min"
    return f"{s / 3600:.2g}h"
