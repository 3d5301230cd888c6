"""The memory objective: analytic bytes of a plan (space/memory.py, used by every trial) and
measured memory of the real packed model: the bytes of its parameters and buffers, and its
peak at the reference batch (CUDA: max allocated; CPU: growth of the resident set size)."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from bitfront.kernels.qlinear import module_nbytes
from bitfront.objectives.latency import Workload


@dataclass(frozen=True)
class MemoryMeasurement:
    parameter_bytes: int  # every parameter and buffer of the packed model
    peak_bytes: int  # building it plus one forward pass at the reference batch
    how: str  # "cuda max allocated" or "cpu rss delta"

    def to_dict(self) -> dict:
        return asdict(self)


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@torch.no_grad()
def measure_memory(build: Callable[[], nn.Module], workload: Workload, *, vocab: int,
                   device: torch.device) -> MemoryMeasurement:
    """Build the packed model with `build()` and run one forward pass over the reference
    batch (batch × (prompt + answer) tokens), measuring what that costs."""
    gc.collect()
    ids = torch.randint(0, vocab, (workload.batch, workload.prompt_len + workload.answer_len))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        module = build()
        # The build passes through a full-precision copy; the peak counts from the built model.
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        module(ids.to(device))
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        how = "cuda max allocated"
    else:
        base = rss_bytes()
        module = build()
        built = rss_bytes()
        module(ids)
        peak = max(built, rss_bytes()) - base
        how = "cpu rss delta"
    return MemoryMeasurement(parameter_bytes=module_nbytes(module), peak_bytes=peak, how=how)
