"""Attention paths, the packed low-bit linear, packed models, and the latency / memory
objectives (structure and agreement only: timings are never asserted in tests)."""

from __future__ import annotations

import json

import pytest
import torch

from bitfront.kernels.attention import SDPA_FLASH, choose_attention
from bitfront.kernels.qlinear import QuantLinear, module_nbytes
from bitfront.kernels.quant import rtn_quantize
from bitfront.models import load_local, load_model
from bitfront.objectives.latency import LatencyTable, Workload, measure_latency_table
from bitfront.objectives.memory import measure_memory
from bitfront.quant.apply import PlanApplier, packed_module
from bitfront.space.memory import plan_memory
from bitfront.space.plan import BitPlan


def test_attention_choice():
    assert choose_attention("eager") == "eager" and choose_attention("sdpa") == "sdpa"
    assert choose_attention(None, "cpu") == "sdpa"  # SDPA's fused CPU kernel
    assert choose_attention("flash", "cuda") in ("flash_attention_2", SDPA_FLASH)
    from bitfront.errors import BitfrontError

    with pytest.raises(BitfrontError, match="unknown attention backend"):
        choose_attention("xformers")


@pytest.mark.parametrize("kind", ["qwen3", "coda"])
def test_attention_paths_agree(tiny_dirs, kind):
    ids = torch.randint(0, 151000, (2, 10))
    logits = {}
    for attn in ("eager", "sdpa", "flash", SDPA_FLASH):
        lm = load_model(str(tiny_dirs[kind]), device="cpu", attn=attn) if attn != SDPA_FLASH \
            else _with_impl(tiny_dirs[kind], SDPA_FLASH)
        with torch.no_grad():
            logits[attn] = lm.logits(ids)
    for attn, value in logits.items():
        # Stated tolerance: max |Δlogit| < 1e-4 in float32 between any two paths.
        assert (value - logits["eager"]).abs().max() < 1e-4, attn


def _with_impl(directory, impl):
    """The model with transformers' attention implementation set to `impl` (the CUDA choice
    of `flash` without flash-attn, run here on CPU)."""
    lm = load_local(directory, device="cpu", attn="sdpa")
    lm.module.config._attn_implementation = impl
    return lm


@pytest.mark.parametrize("bits,group_size,sym", [(2, 64, False), (3, 128, False),
                                                 (4, 128, False), (4, 64, True),
                                                 (8, -1, True), (8, 128, False)])
def test_quant_linear_computes_the_quantized_weight(bits, group_size, sym):
    weight, bias = torch.randn(96, 256) * 0.05, torch.randn(96)
    dq, packed = rtn_quantize(weight, bits, group_size, sym)
    x = torch.randn(3, 5, 256)
    expected = x @ dq.t() + bias
    exact = QuantLinear(packed, bias, dtype=torch.float32)
    assert exact.kernel == "dequant"
    torch.testing.assert_close(exact(x), expected, rtol=1e-5, atol=1e-5)
    fast = QuantLinear(packed, bias, dtype=torch.bfloat16)
    want = {4: "int4pack", 8: "int8pack" if (group_size == -1 and sym) else "dequant"}
    assert fast.kernel == want.get(bits, "dequant")
    got = fast(x).float()
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()


@pytest.mark.parametrize("bits", [2, 4])
def test_quant_linear_with_a_short_last_group(bits):
    """in_features not a multiple of the group size (e.g. 192 with groups of 128)."""
    weight = torch.randn(48, 192) * 0.05
    dq, packed = rtn_quantize(weight, bits, 128, False)
    layer = QuantLinear(packed, None, dtype=torch.float32)
    torch.testing.assert_close(layer.dequantized(), dq, rtol=0, atol=0)


@pytest.fixture(scope="module")
def packed_setup(micro_pair):
    from bitfront.quant.calibration import CalibrationConfig, calibration_set
    from bitfront.quant.candidates import QuantizerSettings, build_candidates
    from bitfront.space.layers import layer_space

    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    space = layer_space(lm)
    cands = build_candidates(lm, space, calibration_set(lm, CalibrationConfig(samples=16)),
                             settings=QuantizerSettings(group_size=32), show_progress=False)
    return lm, space, cands


def test_packed_model_matches_fake_quant_and_analytic_memory(packed_setup):
    lm, space, cands = packed_setup
    fp = lm.fingerprint()
    bits = dict(zip(space.names(), [2, 3, 4, 8, 16, 4, 2] * 2, strict=True))
    ids = torch.randint(0, len(lm.tokenizer), (2, 24))
    applier = PlanApplier(lm, cands)
    for plan in [BitPlan.from_bits(fp, bits, 32), BitPlan.uniform(space, fp, 4, 32)]:
        with applier.applied(plan), torch.no_grad():
            fake = lm.logits(ids)
        exact = packed_module(lm, plan, cands, dtype=torch.float32)
        with torch.no_grad():
            torch.testing.assert_close(exact(input_ids=ids).logits, fake, rtol=1e-4,
                                       atol=1e-4)
        real = packed_module(lm, plan, cands, dtype=torch.bfloat16)
        kernels = {m.kernel for m in real.modules() if isinstance(m, QuantLinear)}
        assert "int4pack" in kernels
        with torch.no_grad():
            out = real(input_ids=ids).logits.float()
        assert (out - fake).abs().max() < 0.05 * fake.abs().max()
        analytic = plan_memory(space, plan).total_bytes
        assert abs(module_nbytes(real) - analytic) <= 0.01 * analytic
    assert torch.equal(lm.module.model.layers[0].self_attn.q_proj.weight,
                       cands.weight("model.layers.0.self_attn.q_proj", 16))


def test_latency_table_is_additive_cached_and_validated(packed_setup, tmp_path):
    from bitfront.objectives.fidelity import sample_plans
    from bitfront.objectives.validation import validate_costs

    lm, space, cands = packed_setup
    workload = Workload(prompt_len=8, answer_len=6, backend="torch")
    table = measure_latency_table(lm, space, workload, group_size=32, repeats=1,
                                  root=tmp_path, show_progress=False)
    assert set(k.split("|")[0] for k in table.layers) == {"prefill", "decode"}
    plan = BitPlan.from_bits(lm.fingerprint(), dict.fromkeys(space.names(), 4), 32)
    pred = table.predict(space, plan)
    by_hand = table.rest + sum(
        calls * table.layer_time(phase, layer.out_features, layer.in_features, 4)
        for phase, calls in workload.phases("ar").items() for layer in space.layers)
    assert pred["seconds"] == pytest.approx(by_hand)
    assert pred["per_token"] == pytest.approx(pred["seconds"] / 6)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    again = measure_latency_table(lm, space, workload, group_size=32, root=tmp_path)
    assert again == LatencyTable.from_dict(json.loads(files[0].read_text()))
    plans = sample_plans(cands, lm.fingerprint(), mixed=1)
    report = validate_costs(lm, cands, table, plans, repeats=1, show_progress=False)
    assert [r["plan"] for r in report["rows"]] == [p.meta["name"] for p in plans]
    assert all(r["measured_s"] > 0 and r["predicted_s"] > table.rest for r in report["rows"])
    assert report["max_memory_rel_error"] < 0.01


def test_diffusion_latency_counts_steps(micro_pair, tmp_path):
    from bitfront.objectives.latency import generate_fixed
    from bitfront.space.layers import layer_space

    lm = load_local(micro_pair["pocket-diffusion-micro"], device="cpu")
    space = layer_space(lm)
    workload = Workload(prompt_len=8, answer_len=8, steps=4)
    calls = []
    handle = lm.module.register_forward_hook(lambda *_: calls.append(1))
    generate_fixed(lm.module, "diffusion", workload, vocab=len(lm.tokenizer),
                   mask_id=lm.tokens.mask)
    handle.remove()
    assert len(calls) == 4  # one full forward pass per denoising step
    table = measure_latency_table(lm, space, workload, bits=(4, 16), group_size=32,
                                  repeats=1, root=tmp_path, show_progress=False)
    assert set(k.split("|")[0] for k in table.layers) == {"step"}
    with pytest.raises(Exception, match="answer_len must be at least 2"):
        Workload(answer_len=1)


def test_memory_measurement(packed_setup):
    lm, space, cands = packed_setup
    plan = BitPlan.uniform(space, lm.fingerprint(), 4, 32)
    result = measure_memory(lambda: packed_module(lm, plan, cands), Workload(8, 8),
                            vocab=len(lm.tokenizer), device=lm.device)
    analytic = plan_memory(space, plan).total_bytes
    assert abs(result.parameter_bytes - analytic) <= 0.01 * analytic
    assert result.how == "cpu rss delta"  # the peak is reported, not asserted: RSS is noisy


def test_latency_table_times_each_distinct_kernel_once(packed_setup, tmp_path, monkeypatch):
    import bitfront.objectives.latency as latency

    lm, space, _ = packed_setup
    shapes = {(l.out_features, l.in_features) for l in space.layers if not l.embedding}
    assert len(shapes) < len([l for l in space.layers if not l.embedding])  # shapes repeat
    quantized, forwards = [], []
    real = latency.rtn_quantize
    monkeypatch.setattr(latency, "rtn_quantize",
                        lambda w, *a, **k: quantized.append(tuple(w.shape)) or real(w, *a, **k))
    for name in ("_short_run", "generate_fixed"):
        fn = getattr(latency, name)
        monkeypatch.setattr(latency, name, lambda *a, n=name, f=fn, **k: forwards.append(n)
                            or f(*a, **k))
    workload = Workload(prompt_len=8, answer_len=40, backend="torch")
    table = measure_latency_table(lm, space, workload, bits=(4, 8, 16), group_size=32,
                                  repeats=1, calls=2, root=tmp_path, show_progress=False)
    assert sorted(quantized) == sorted(list(shapes) * 2)  # one packing per (shape, bits)
    assert table.dtype == str(lm.dtype)  # by default, the dtype the model runs in
    assert set(table.layers) == {f"{phase}|{o}|{i}|{b}" for phase in ("prefill", "decode")
                                 for o, i in shapes for b in (4, 8, 16)}
    # short runs per bitwidth (warm-up + repeats); whole generations only for the rest
    assert forwards.count("_short_run") == 3 * 2 and forwards.count("generate_fixed") == 2
