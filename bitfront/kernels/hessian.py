"""Input Hessians H = 2/n Σ x xᵀ of linear layers from one calibration pass, by forward hooks.

Linears that read the same input tensor (q/k/v of a block; gate/up) share one Hessian: the
first of them accumulates and the others point to it. Accumulation streams over batches in
float32 or float64 (`dtype`), on the module's device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from bitfront.progress import track


@dataclass
class HessianSet:
    hessians: dict[str, torch.Tensor]  # owner name -> H [in, in] (or its diagonal [in])
    owner: dict[str, str]  # layer name -> the layer whose Hessian it shares

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.hessians[self.owner[name]]

    def get(self, name: str) -> torch.Tensor | None:
        return self[name] if name in self.owner else None


@torch.no_grad()
def capture_hessians(forward, modules: dict[str, nn.Module], batches: Iterable[torch.Tensor],
                     *, dtype: torch.dtype = torch.float32, diagonal: bool = False,
                     show_progress: bool = False) -> HessianSet:
    """Run `forward(batch)` over `batches` and return the input Hessians of `modules`
    (name -> nn.Linear or nn.Embedding-free linear-like modules taking one input); only
    their diagonals (2 × each input column's mean square) when `diagonal`."""
    sums: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}
    count = {"tokens": 0}
    last: dict[str, object] = {"input": None, "name": None}

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0]
            if x is last["input"]:  # same tensor as the previous linear: share its Hessian
                owner[name] = owner[last["name"]]
                return
            last["input"], last["name"] = x, name
            owner[name] = name
            flat = x.detach().reshape(-1, x.shape[-1]).to(dtype)
            if name not in sums:
                shape = (flat.shape[1],) if diagonal else (flat.shape[1], flat.shape[1])
                sums[name] = torch.zeros(shape, dtype=dtype, device=flat.device)
            if diagonal:
                sums[name].add_(flat.square().sum(0))
            else:
                sums[name].addmm_(flat.t(), flat)
        return fn

    handles = [mod.register_forward_hook(hook(name)) for name, mod in modules.items()]
    try:
        batches = list(batches)
        for batch in track(batches, "calibration pass", show=show_progress):
            last["input"] = last["name"] = None
            count["tokens"] += batch.numel()
            forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    for total in sums.values():  # in place: no second copy of every Hessian
        total.mul_(2 / count["tokens"])
    return HessianSet(hessians=sums, owner=owner)
