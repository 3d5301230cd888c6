"""The one place that decides how attention runs, for both families.

Backends are named as transformers' attention implementations: "sdpa" (PyTorch scaled
dot-product attention; the default) and "eager" (plain math, differentiable twice).
"""

from __future__ import annotations

from bitfront.errors import BitfrontError

BACKENDS = ("sdpa", "eager")


def choose_attention(requested: str | None = None) -> str:
    """The transformers `attn_implementation` for a requested backend (None: the default)."""
    if requested is None:
        return "sdpa"
    if requested not in BACKENDS:
        raise BitfrontError(f"unknown attention backend {requested!r}; choose from {BACKENDS}")
    return requested
