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
    """±1 of `like`'s shape, as int8 (a quarter of a float32 copy)."""
    signs = torch.randint(0, 2, like.shape, generator=generator, dtype=torch.int8)
    return (signs * 2 - 1).to(like.device)


def _dot(v: torch.Tensor, g: torch.Tensor) -> float:
    return float((v * g).sum(dtype=torch.float64))


def _gradient_dots(loss: torch.Tensor, params, vs) -> list[float]:
    """vᵢ·∇ᵢloss for every parameter, each taken (and its gradient freed) as soon as the
    backward pass has produced it: never more than a few layers' gradients exist."""
    dots = [0.0] * len(params)

    def take(i):
        def hook(p):
            dots[i] = _dot(vs[i], p.grad)
            p.grad = None
        return hook

    handles = [p.register_post_accumulate_grad_hook(take(i)) for i, p in enumerate(params)]
    try:
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return dots


def hutchinson_traces(loss_fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module,
                      weights: dict[str, torch.Tensor], batches: Sequence[torch.Tensor], *,
                      probes: int = 8, method: str = "fd", eps: float = 1e-3, seed: int = 0,
                      restore: Callable[[], None] | None = None,
                      show_progress: bool = False) -> dict[str, float]:
    """Tr(∂²L/∂wᵢ²) for each weight in `weights` (name -> parameter of `module`), averaged
    over `batches` (the loss of each is `loss_fn(batch)`, which must be deterministic) and
    `probes` probes per batch.

    Memory beyond the model and the loss's own: the probes (int8), and the gradients
    (`exact`: all of them; `fd`: a few layers' at a time). `fd` also needs the original
    weights back after each probe, which `restore` writes (e.g. from the candidate cache;
    default: an in-memory copy of the weights)."""
    if method not in METHODS:
        raise ValueError(f"unknown Hessian-vector method {method!r}; choose from {METHODS}")
    attention = getattr(getattr(module, "config", None), "_attn_implementation", None)
    if method == "exact" and attention not in (None, "eager", "sdpa"):
        raise BitfrontError(f"exact Hessian-vector products need an attention path with a "
                            f"second derivative, and this model runs {attention}: load it "
                            "with --attn sdpa (or eager), or use the fd method")
    names, params = list(weights), list(weights.values())
    if method == "fd" and restore is None:
        originals = [p.detach().clone() for p in params]

        def restore():
            for p, original in zip(params, originals, strict=True):
                p.data.copy_(original)
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    generator = torch.Generator().manual_seed(seed)
    totals = dict.fromkeys(names, 0.0)
    steps = [(b, k) for b in range(len(batches)) for k in range(probes)]
    try:
        for b, _ in track(steps, f"Hessian traces ({method})", show=show_progress):
            vs = [rademacher(p, generator) for p in params]
            quadratic = (_exact_vhv(loss_fn, batches[b], params, vs) if method == "exact"
                         else _fd_vhv(loss_fn, batches[b], params, vs, eps, restore))
            for name, value in zip(names, quadratic, strict=True):
                totals[name] += value
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return {name: total / len(steps) for name, total in totals.items()}


def _exact_vhv(loss_fn, batch, params, vs) -> list[float]:
    """vᵢᵀ(Hv)ᵢ by double backward."""
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(loss_fn(batch), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vs, strict=True))
        return [_dot(v, h) for v, h in zip(vs, torch.autograd.grad(dot, params), strict=True)]


def _fd_vhv(loss_fn, batch, params, vs, eps, restore) -> list[float]:
    """vᵢᵀ(Hv)ᵢ ≈ vᵢᵀ(∇ᵢL(w + εv) − ∇ᵢL(w − εv)) / 2εᵢ, each side reduced to its dot
    product at once, so only one set of gradients exists at a time."""
    scales = [eps * float(p.detach().pow(2).mean().sqrt().clamp(min=1e-8)) for p in params]
    try:
        sides = []
        for sign in (1.0, -2.0):
            with torch.no_grad():
                for p, v, scale in zip(params, vs, scales, strict=True):
                    p.add_(v, alpha=sign * scale)
            with torch.enable_grad():
                sides.append(_gradient_dots(loss_fn(batch), params, vs))
    finally:
        with torch.no_grad():
            restore()
    return [(plus - minus) / (2 * s)
            for plus, minus, s in zip(*sides, scales, strict=True)]
