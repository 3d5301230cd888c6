"""Hutchinson estimates of the loss Hessian's trace per layer, for HAWQ.

For each calibration batch and Rademacher probe v (one ±1 tensor per layer weight), the
Hessian-vector product Hv of the loss w.r.t. all chosen weights is formed once and
vᵢᵀ(Hv)ᵢ estimates Tr(Hᵢᵢ) for every layer i at the same time (cross-layer terms vanish in
expectation). Two ways to form Hv:

- `exact`: double backward, ∂/∂w (∇L · v). Needs an attention path with a second derivative,
  so it runs under PyTorch's math SDPA backend (use the `eager` or `sdpa` implementation).
- `fd`: central finite differences, Hv ≈ (∇L(w + εv) − ∇L(w − εv)) / 2ε with a per-layer
  ε = `eps` · rms(wᵢ). Only first derivatives: works with fused flash-attention kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bitfront.errors import BitfrontError
from bitfront.progress import track

METHODS = ("exact", "fd")


def rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, like.shape, generator=generator, dtype=torch.int8)
    return (signs.to(like.device, like.dtype) * 2 - 1)


def _grads(loss_fn, batch, params) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss_fn(batch), params))


def hutchinson_traces(loss_fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module,
                      weights: dict[str, torch.Tensor], batches: Sequence[torch.Tensor], *,
                      probes: int = 8, method: str = "fd", eps: float = 1e-3, seed: int = 0,
                      show_progress: bool = False) -> dict[str, float]:
    """Tr(∂²L/∂wᵢ²) for each weight in `weights` (name -> parameter of `module`), averaged
    over `batches` (the loss of each is `loss_fn(batch)`, which must be deterministic) and
    `probes` probes per batch."""
    if method not in METHODS:
        raise ValueError(f"unknown Hessian-vector method {method!r}; choose from {METHODS}")
    attention = getattr(getattr(module, "config", None), "_attn_implementation", None)
    if method == "exact" and attention not in (None, "eager", "sdpa"):
        raise BitfrontError(f"exact Hessian-vector products need an attention path with a "
                            f"second derivative, and this model runs {attention}: load it "
                            "with --attn sdpa (or eager), or use the fd method")
    names, params = list(weights), list(weights.values())
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    totals = dict.fromkeys(names, 0.0)
    steps = [(b, k) for b in range(len(batches)) for k in range(probes)]
    try:
        for b, _ in track(steps, f"Hessian traces ({method})", show=show_progress):
            vs = [rademacher(p, generator) for p in params]
            hv = (_exact_hv if method == "exact" else _fd_hv)(loss_fn, batches[b], params, vs,
                                                               eps)
            for name, v, h in zip(names, vs, hv, strict=True):
                totals[name] += float((v * h).sum())
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return {name: total / len(steps) for name, total in totals.items()}


def _exact_hv(loss_fn, batch, params, vs, eps) -> list[torch.Tensor]:
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(loss_fn(batch), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
        return list(torch.autograd.grad(dot, params))


@torch.no_grad()
def _shift(params, steps, sign: float) -> None:
    for p, step in zip(params, steps, strict=True):
        p.add_(step, alpha=sign)


def _fd_hv(loss_fn, batch, params, vs, eps) -> list[torch.Tensor]:
    originals = [p.detach().clone() for p in params]
    scales = [eps * float(p.detach().pow(2).mean().sqrt().clamp(min=1e-8)) for p in params]
    steps = [v * s for v, s in zip(vs, scales, strict=True)]
    try:
        _shift(params, steps, +1.0)
        with torch.enable_grad():
            plus = _grads(loss_fn, batch, params)
        _shift(params, steps, -2.0)
        with torch.enable_grad():
            minus = _grads(loss_fn, batch, params)
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals, strict=True):
                p.copy_(original)
    return [(gp - gm) / (2 * s) for gp, gm, s in zip(plus, minus, scales, strict=True)]
