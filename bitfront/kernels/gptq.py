"""GPTQ (Frantar et al., 2022) for several bitwidths from one Hessian and one factorisation.

For a linear layer with weight W [out, in] and input Hessian H = 2/n Σ x xᵀ, GPTQ quantizes
the columns of W one at a time and spreads each column's error over the columns not yet
quantized, using the upper Cholesky factor of H⁻¹. Our twist: the bitwidths are stacked along
the rows (every output row once per bitwidth, each with its own maxq), so the Hessian
preparation (dead columns, damping, optional act-order permutation, Cholesky, inverse, upper
Cholesky) happens once and every step of the column loop serves all bitwidths at once. The
rows never interact in GPTQ, so each bitwidth's result equals a separate single-bitwidth run
(to float rounding). Block size 128 with lazy batch updates, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bitfront.kernels.quant import (
    PackedWeight,
    check_bits,
    group_count,
    pack_weight,
    quant_params,
)


@dataclass
class GPTQResult:
    """One bitwidth's outcome for one layer."""

    bits: int
    weight: torch.Tensor  # dequantized [out, in], float32
    packed: PackedWeight
    loss: float  # GPTQ's reconstruction loss: Σ (w - q)² / (2 Uᵢᵢ²), U = chol(H⁻¹) upper


def inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + percdamp · mean(diag H) · I)⁻¹; `H` is not modified."""
    H = H.clone()
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(Hinv, upper=True)


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: Sequence[int], *,
                  group_size: int = 128, sym: bool = False, act_order: bool = False,
                  static_groups: bool = False, percdamp: float = 0.01, blocksize: int = 128,
                  mse: bool = False) -> dict[int, GPTQResult]:
    """GPTQ of `weight` [out, in] at every bitwidth in `bits`, sharing one factorisation.

    Internally the stacked weight is held transposed ([in, bits x out]) so that each step of
    the column loop reads one contiguous vector and updates the rest of its block with one
    rank-1 BLAS call; blocks are updated lazily with one matrix product.
    """
    bits = list(dict.fromkeys(bits))
    for b in bits:
        check_bits(b)
    if group_size != -1 and group_size <= 0:
        raise ValueError(f"group_size must be positive or -1, got {group_size}")
    rows, cols = weight.shape
    nb = len(bits)
    device = weight.device
    Wt = weight.detach().float().t().repeat(1, nb).contiguous()  # [cols, nb * rows]
    row_bits = torch.tensor(bits, device=device).repeat_interleave(rows)
    maxq = (2**row_bits - 1).float()
    gs = cols if group_size == -1 else group_size

    def params(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zero = quant_params(block.t(), row_bits.unsqueeze(1), sym, mse)
        return scale.squeeze(1), zero.squeeze(1)

    # Per-channel parameters (group_size -1) come from the weight as given, as in reference GPTQ.
    channel_params = params(Wt) if group_size == -1 else None
    H = H.detach().to(device).float().clone()
    dead = torch.diag(H) == 0  # inputs that never fire: fix H, zero the weight
    H[dead, dead] = 1
    Wt[dead] = 0

    n_groups = group_count(cols, group_size)
    scales = torch.zeros(n_groups, nb * rows, device=device)
    zeros = torch.zeros(n_groups, nb * rows, device=device)
    if static_groups:  # parameters fixed up front, in the original column order
        for group, g in enumerate(range(0, cols, gs)):
            scales[group], zeros[group] = params(Wt[g : g + gs])
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        Wt, H = Wt[perm], H[perm][:, perm]
    Hinv = inverse_cholesky(H, percdamp)

    g_idx = torch.arange(cols, device=device) // gs  # group of each (permuted) column
    if static_groups and perm is not None:
        g_idx = perm // gs
    col_group = g_idx.tolist()
    codes = torch.empty_like(Wt)
    err_sq = torch.zeros(nb * rows, device=device)
    scale = zero = None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = Wt[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag = Hinv1.diagonal().tolist()
        for i in range(i2 - i1):
            col = i1 + i
            if static_groups:
                scale, zero = scales[col_group[col]], zeros[col_group[col]]
            elif col % gs == 0:
                # As in reference GPTQ: parameters from the outer W (lazily updated).
                scale, zero = channel_params or params(Wt[col : col + gs])
                scales[col // gs], zeros[col // gs] = scale, zero
            w = W1[i]
            c = torch.minimum(torch.round(w / scale).add_(zero).clamp_(min=0), maxq)
            codes[col] = c
            err = Err1[i]
            torch.sub(w, c.sub_(zero).mul_(scale), out=err).div_(diag[i])
            if i + 1 < i2 - i1:
                W1[i + 1 :].addr_(Hinv1[i, i + 1 :], err, alpha=-1)
        err_sq += Err1.pow(2).sum(0)
        if i2 < cols:
            Wt[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1)

    if perm is not None:
        inv = torch.argsort(perm)
        codes, g_idx = codes[inv], g_idx[inv]
    gi = g_idx.long()
    dequant = (codes - zeros[gi]) * scales[gi]  # [cols, nb * rows]
    results = {}
    for k, b in enumerate(bits):
        part = slice(k * rows, (k + 1) * rows)
        results[b] = GPTQResult(
            bits=b,
            weight=dequant[:, part].t().contiguous(),
            packed=pack_weight(codes[:, part].t(), scales[:, part].t(), zeros[:, part].t(), b,
                               group_size, g_idx),
            loss=float(err_sq[part].sum() / 2),
        )
    return results
