"""Quantizer, bit packing and multi-bitwidth GPTQ against the single-bitwidth reference."""

from __future__ import annotations

import pytest
import torch
from gptq_reference import reference_gptq

from bitfront.kernels.gptq import gptq_quantize
from bitfront.kernels.quant import dequantize, pack_rows, rtn_quantize, unpack_rows


def correlated_inputs(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated features and a few outlier channels, like LLM
    activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5 + torch.eye(dim)
    scale = torch.ones(dim)
    scale[torch.randperm(dim, generator=g)[: dim // 16]] = 8.0
    latent = torch.randn(n, dim // 4, generator=g) @ torch.randn(dim // 4, dim, generator=g)
    return (latent + 0.3 * torch.randn(n, dim, generator=g) @ mix) * scale


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 / x.shape[0] * x.t() @ x


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [32, 96, 100, 1])
def test_pack_round_trip_is_exact(bits, n):
    values = torch.randint(0, 2**bits, (n, 7))
    words = pack_rows(values, bits)
    assert words.dtype == torch.int32 and words.shape == (-(-n // 32) * bits, 7)
    assert torch.equal(unpack_rows(words, bits, n).long(), values)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group_size", [128, 32, -1])
def test_rtn_packed_form_holds_the_dequantized_weight(sym, group_size):
    w = torch.randn(48, 256)
    for bits in (2, 3, 4, 8):
        dq, packed = rtn_quantize(w, bits, group_size, sym)
        assert torch.equal(dequantize(packed), dq)
        step = (w.abs().max() * 2) / (2**bits - 1)
        assert (dq - w).abs().max() <= step  # at most one step off, half a step per group
    errors = [(rtn_quantize(w, b, group_size, sym)[0] - w).norm() for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)


CASES = [
    dict(group_size=128),
    dict(group_size=-1),
    dict(group_size=32),
    dict(group_size=64, sym=True),
    dict(group_size=32, act_order=True),
    dict(group_size=32, act_order=True, static_groups=True),
    dict(group_size=64, static_groups=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_multibit_gptq_matches_single_bitwidth_reference(case):
    torch.manual_seed(0)
    x = correlated_inputs(512, 256)
    w = torch.randn(64, 256) * 0.05
    H = hessian(x)
    H_before = H.clone()
    results = gptq_quantize(w, H, [2, 3, 4, 8], blocksize=64, **case)
    assert torch.equal(H, H_before)
    ref_kwargs = {"groupsize": case.get("group_size"), "sym": case.get("sym", False),
                  "actorder": case.get("act_order", False),
                  "static_groups": case.get("static_groups", False)}
    for bits, result in results.items():
        ref_w, ref_loss = reference_gptq(w, H, bits, blocksize=64, **ref_kwargs)
        # Stacked rows change float summation order only; allow a rare rounding flip.
        close = torch.isclose(result.weight, ref_w, rtol=1e-5, atol=1e-6)
        assert close.float().mean() > 0.999, (bits, close.float().mean())
        assert result.loss == pytest.approx(ref_loss, rel=1e-3)
        assert torch.equal(dequantize(result.packed), result.weight)


def test_gptq_beats_rtn_on_correlated_inputs():
    x = correlated_inputs(1024, 256, seed=1)
    w = torch.randn(128, 256) * 0.05
    results = gptq_quantize(w, hessian(x), [3, 4])
    for bits in (3, 4):
        gptq_err = (x @ w.t() - x @ results[bits].weight.t()).norm()
        rtn_err = (x @ w.t() - x @ rtn_quantize(w, bits)[0].t()).norm()
        assert gptq_err < 0.9 * rtn_err, (bits, gptq_err, rtn_err)


def test_dead_columns_are_zeroed():
    x = correlated_inputs(256, 128)
    x[:, [3, 77]] = 0
    w = torch.randn(16, 128)
    for result in gptq_quantize(w, hessian(x), [4, 8]).values():
        assert torch.all(result.weight[:, [3, 77]] == 0)
        assert torch.isfinite(result.weight).all()
