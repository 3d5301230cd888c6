"""Pareto dominance over loss vectors (every objective minimised), shared by the fronts of a
stored study and the samplers that move from the current front."""

from __future__ import annotations

import numpy as np


def nondominated(losses: np.ndarray) -> list[int]:
    """Indices of the rows of `losses` that no other row dominates (≤ everywhere, < somewhere)."""
    losses = np.asarray(losses, dtype=float)
    return [i for i, row in enumerate(losses)
            if not np.any(np.all(losses <= row, axis=1) & np.any(losses < row, axis=1))]
