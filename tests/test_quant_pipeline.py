"""Hessian capture, loss-Hessian traces, plans and memory, the candidate cache and plan
application, on tiny random models and the micro pocket pair."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch.nn.attention import SDPBackend, sdpa_kernel

from bitfront.errors import BitfrontError, PlanError
from bitfront.kernels.hessian import capture_hessians
from bitfront.kernels.hvp import hutchinson_traces
from bitfront.models import load_local
from bitfront.objectives.sensitivity import Sensitivity, SensitivityConfig, hawq_sensitivity
from bitfront.quant.apply import PlanApplier
from bitfront.quant.calibration import CalibrationConfig, calibration_set
from bitfront.quant.candidates import QuantizerSettings, build_candidates
from bitfront.space.layers import group_layers, layer_space
from bitfront.space.memory import plan_memory
from bitfront.space.plan import BitPlan, QuantSpec

TRACES = SensitivityConfig(probes=2, batches=1)
SMALL_CALIB = CalibrationConfig(samples=8, seq_len=64, batch_size=4)


@pytest.fixture(scope="module")
def ar_micro(micro_pair):
    return load_local(micro_pair["pocket-ar-micro"], device="cpu")


@pytest.fixture(scope="module")
def dm_micro(micro_pair):
    return load_local(micro_pair["pocket-diffusion-micro"], device="cpu")


@pytest.fixture(scope="module")
def ar_candidates(ar_micro, tmp_path_factory):
    space = layer_space(ar_micro)
    calib = calibration_set(ar_micro, SMALL_CALIB)
    cands = build_candidates(ar_micro, space, calib, root=tmp_path_factory.mktemp("cands"),
                             settings=QuantizerSettings(group_size=32), show_progress=False)
    return cands, calib


def test_hessians_are_shared_by_siblings_and_match_a_direct_computation(ar_micro):
    calib = calibration_set(ar_micro, SMALL_CALIB)
    modules = ar_micro.quantizable()
    hs = capture_hessians(ar_micro.logits, modules, calib.batches)
    block = "model.layers.0"
    assert hs.owner[f"{block}.self_attn.k_proj"] == f"{block}.self_attn.q_proj"
    assert hs.owner[f"{block}.self_attn.v_proj"] == f"{block}.self_attn.q_proj"
    assert hs.owner[f"{block}.mlp.up_proj"] == f"{block}.mlp.gate_proj"
    assert hs.owner[f"{block}.self_attn.o_proj"] == f"{block}.self_attn.o_proj"
    assert len(hs.hessians) == 4 * 2  # qkv, o, gate/up, down per block
    # Direct: collect the inputs of down_proj of block 1 and form 2/n Σ x xᵀ.
    seen = []
    target = modules["model.layers.1.mlp.down_proj"]
    handle = target.register_forward_hook(
        lambda m, i, o: seen.append(i[0].reshape(-1, i[0].shape[-1])))
    with torch.no_grad():
        for batch in calib.batches:
            ar_micro.logits(batch)
    handle.remove()
    x = torch.cat(seen).double()
    direct = 2 * x.t() @ x / x.shape[0]
    torch.testing.assert_close(hs["model.layers.1.mlp.down_proj"].double(), direct,
                               rtol=1e-4, atol=1e-6)
    hs64 = capture_hessians(ar_micro.logits, modules, calib.batches, dtype=torch.float64)
    assert hs64["model.layers.0.mlp.down_proj"].dtype == torch.float64
    diagonal = capture_hessians(ar_micro.logits, modules, calib.batches, diagonal=True)
    for name in ("model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"):
        torch.testing.assert_close(diagonal[name], hs[name].diagonal(), rtol=1e-4, atol=1e-6)


def test_diffusion_calibration_is_mask_aware_and_seeded(dm_micro):
    a = calibration_set(dm_micro, SMALL_CALIB)
    b = calibration_set(dm_micro, SMALL_CALIB)
    assert a.fingerprint() == b.fingerprint()
    masked = torch.cat(a.batches) == dm_micro.tokens.mask
    assert 0.05 < masked.float().mean() < 0.95
    plain = calibration_set(dm_micro, CalibrationConfig(**{**SMALL_CALIB.to_dict(),
                                                           "mask_aware": False}))
    assert not (torch.cat(plain.batches) == dm_micro.tokens.mask).any()
    assert plain.fingerprint() != a.fingerprint()


def full_layer_hessian(lm, name: str, batch: torch.Tensor) -> torch.Tensor:
    """The exact n x n Hessian of the loss w.r.t. one small layer, row block by row block
    (second backward of the exact gradient against unit vectors)."""
    weight = dict(lm.module.named_modules())[name].weight
    n = weight.numel()
    with sdpa_kernel(SDPBackend.MATH):
        grad = torch.autograd.grad(lm.loss(batch, seed=0), weight, create_graph=True)[0]
        rows = []
        for start in range(0, n, 256):
            eye = torch.zeros(min(256, n - start), n)
            eye[torch.arange(eye.shape[0]), torch.arange(start, start + eye.shape[0])] = 1
            rows.append(torch.autograd.grad(grad.reshape(-1), weight,
                                            grad_outputs=eye,
                                            retain_graph=True, is_grads_batched=True)[0])
    return torch.cat(rows).reshape(n, n)


@pytest.mark.parametrize("family", ["ar", "diffusion"])
def test_hutchinson_traces_agree_with_the_exact_trace(micro_pair, family):
    lm = load_local(micro_pair[f"pocket-{family}-micro"], device="cpu", attn="eager")
    name = "model.layers.0.self_attn.v_proj"  # 32 x 64 = 2048 weights
    batch = calibration_set(lm, SMALL_CALIB).clean[0][:2, :48]
    H = full_layer_hessian(lm, name, batch)
    exact = float(torch.diagonal(H).sum())
    probes = 64
    # Rademacher Hutchinson: variance 2 Σ_{i≠j} H_ij² per probe.
    sigma = float((2 * (H.pow(2).sum() - torch.diagonal(H).pow(2).sum()) / probes).sqrt())
    weights = {name: dict(lm.module.named_modules())[name].weight}
    loss_fn = lambda b: lm.loss(b, seed=0)  # noqa: E731
    est = {m: hutchinson_traces(loss_fn, lm.module, weights, [batch], probes=probes, method=m,
                                seed=1)[name] for m in ("exact", "fd")}
    # Stated tolerances: the two Hv methods, with the same probes, agree within 2%; each
    # estimate lies within 4 standard deviations of the estimator around the exact trace.
    assert est["fd"] == pytest.approx(est["exact"], rel=2e-2)
    for value in est.values():
        assert abs(value - exact) <= 4 * sigma, (value, exact, sigma)
    assert sigma < abs(exact)  # the check is informative: the noise is below the signal
    assert all(p.requires_grad for p in lm.module.parameters())


def test_exact_traces_refuse_attention_without_a_second_derivative(micro_pair):
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu", attn="eager")
    lm.module.config._attn_implementation = "flash_attention_2"
    weights = {"model.layers.0.self_attn.v_proj":
               lm.module.model.layers[0].self_attn.v_proj.weight}
    with pytest.raises(BitfrontError, match="--attn sdpa"):
        hutchinson_traces(lambda b: lm.loss(b, seed=0), lm.module, weights, [], method="exact")


def test_layer_space_grouping_and_plans(ar_micro):
    space = layer_space(ar_micro)
    assert len(space) == 14 and space.layers[0].block == 0
    assert layer_space(ar_micro, include_head=True).names()[-1] == "lm_head"
    emb = layer_space(ar_micro, include_embeddings=True)
    assert "model.embed_tokens" in emb.names()
    assert emb.other_params < space.other_params
    assert len(group_layers(space, "linear")) == 14
    assert list(group_layers(space, "block")) == ["block.0", "block.1"]
    assert len(group_layers(space, "type")) == 7
    plan = BitPlan.uniform(space, "fp", 4, group_size=32)
    again = BitPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    with pytest.raises(PlanError, match="does not have"):
        BitPlan(model="fp", specs={**plan.specs, "model.bogus": QuantSpec(4)}).validate(space)
    with pytest.raises(PlanError, match="without a spec"):
        BitPlan(model="fp", specs=dict(list(plan.specs.items())[1:])).validate(space)
    with pytest.raises(PlanError, match="unsupported bitwidth 5"):
        QuantSpec(5)
    with pytest.raises(PlanError, match="schema"):
        BitPlan.from_dict({**plan.to_dict(), "schema": 99})


def test_memory_accounting_equals_the_packed_tensors(ar_micro, ar_candidates):
    cands, _ = ar_candidates
    space = cands.space
    bits = dict(zip(space.names(), [2, 3, 4, 8, 16, 4, 2] * 2, strict=True))
    plan = BitPlan.from_bits(ar_micro.fingerprint(), bits, group_size=32)
    report = plan_memory(space, plan)
    actual = 0
    for name, b in bits.items():
        if b == 16:
            actual += cands.weight(name, 16).numel() * 2
        else:
            actual += cands.packed(name, b).nbytes()
    others = sum(p.numel() for n, p in ar_micro.module.named_parameters()
                 if n.removesuffix(".weight") not in bits)
    assert report.layer_bytes == actual
    assert report.total_bytes == actual + 2 * others
    uniform = [plan_memory(space, BitPlan.uniform(space, "x", b, 32)).avg_bits
               for b in (2, 3, 4, 8, 16)]
    assert uniform == sorted(uniform) and uniform[-1] == 16.0
    assert 4.0 < uniform[2] < 5.5  # 4 bits plus scales/zeros/g_idx overhead


def test_the_cache_holds_each_original_once_and_packed_forms_only(ar_micro, ar_candidates):
    """No dequantized copy of a candidate is written: per layer the original weight, then for
    each bitwidth integer codes/zeros/g_idx and fp16 scales; the bytes are exactly those."""
    cands, _ = ar_candidates
    packed_dtypes = {"qweight": torch.int32, "qzeros": torch.int32, "scales": torch.float16,
                     "g_idx": torch.int32}
    for name in cands.space.names():
        with safe_open(cands.file(name), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        original = tensors.pop("w16")
        assert torch.equal(original, dict(ar_micro.module.named_modules())[name].weight)
        assert set(tensors) == {f"{b}.{f}" for b in cands.settings.bits for f in packed_dtypes}
        for key, tensor in tensors.items():
            assert tensor.dtype == packed_dtypes[key.split(".")[1]], key
        # The file is these tensors and a header: nothing else is stored.
        header = cands.file(name).stat().st_size - original.nbytes - sum(
            t.nbytes for t in tensors.values())
        assert 0 < header < 4096


def test_candidates_are_cached_verified_and_resumed(ar_micro, ar_candidates, tmp_path):
    cands, calib = ar_candidates
    root = cands.directory.parent
    name = cands.space.names()[3]
    path = cands.file(name)
    before = path.stat().st_mtime_ns
    again = build_candidates(ar_micro, cands.space, calib, root=root,
                             settings=cands.settings, show_progress=False)
    assert again.key == cands.key and path.stat().st_mtime_ns == before  # nothing recomputed
    # Corrupt one file, truncate another, delete a third: exactly those are recomputed.
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    other = cands.file(cands.space.names()[5])
    other.write_bytes(other.read_bytes()[:100])
    cands.file(cands.space.names()[7]).unlink()
    untouched = cands.file(cands.space.names()[0]).stat().st_mtime_ns
    rebuilt = build_candidates(ar_micro, cands.space, calib, root=root,
                               settings=cands.settings, show_progress=False)
    assert cands.file(cands.space.names()[0]).stat().st_mtime_ns == untouched
    for i in (3, 5, 7):
        n = cands.space.names()[i]
        for b in (2, 4):
            assert torch.equal(rebuilt.weight(n, b), cands.weight(n, b))
    other_calib = calibration_set(ar_micro, CalibrationConfig(samples=8, seq_len=64, seed=5))
    assert build_candidates(ar_micro, cands.space, other_calib, root=tmp_path,
                            settings=cands.settings, show_progress=False).key != cands.key


def test_applying_plans_swaps_weights_in_place(ar_micro, ar_candidates):
    cands, calib = ar_candidates
    space = cands.space
    applier = PlanApplier(ar_micro, cands)
    fp = ar_micro.fingerprint()
    ids = calib.batches[0]
    with torch.no_grad():
        base = ar_micro.logits(ids)
    plan_a = BitPlan.from_bits(fp, dict.fromkeys(space.names(), 2), group_size=32)
    plan_b = BitPlan.from_bits(fp, dict(zip(space.names(), [8, 4, 16, 3, 2, 4, 8] * 2,
                                            strict=True)), group_size=32)
    weights_before = {n: w.data_ptr() for n, w in applier.weights.items()}
    with torch.no_grad():
        applier.apply(plan_b)
        direct_b = ar_micro.logits(ids)
        applier.apply(plan_a)
        applier.apply(plan_b)
        a_then_b = ar_micro.logits(ids)
        applier.restore()
        restored = ar_micro.logits(ids)
    assert torch.equal(a_then_b, direct_b)
    assert not torch.allclose(direct_b, base)
    assert torch.equal(restored, base)
    assert weights_before == {n: w.data_ptr() for n, w in applier.weights.items()}
    assert applier.apply(plan_b) == 12 and applier.apply(plan_b) == 0  # two layers stay 16
    applier.restore()
    with pytest.raises(PlanError, match="group size"):
        applier.apply(BitPlan.uniform(space, fp, 4, group_size=128))
    with pytest.raises(PlanError, match="made for model"):
        applier.apply(BitPlan.uniform(space, "another-model", 4, group_size=32))


def test_hawq_sensitivity_table(ar_micro, ar_candidates, tmp_path):
    cands, calib = ar_candidates
    sens = hawq_sensitivity(ar_micro, cands, calib, TRACES, show_progress=False)
    assert len(sens.rows) == 14 * 4
    for layer in cands.space.names():
        omegas = [sens.omega(layer, b) for b in (2, 3, 4, 8)]
        cheap = [next(r.gptq_loss for r in sens.rows if r.layer == layer and r.bits == b)
                 for b in (2, 3, 4, 8)]
        assert cheap == sorted(cheap, reverse=True) and cheap[-1] >= 0
        assert all(abs(o) >= abs(omegas[-1]) for o in omegas)
        assert sens.omega(layer, 16) == 0
    json_path, csv_path = sens.save(tmp_path)
    assert Sensitivity.from_dict(json.loads(json_path.read_text())) == sens
    assert len(csv_path.read_text().splitlines()) == 1 + 14 * 4


def test_sensitivity_of_a_bfloat16_model_is_computed_in_float32(micro_pair, tmp_path):
    """Finite-difference steps of 1e-3 of a weight's scale vanish in bfloat16: traces of a
    bfloat16 model must equal those of the very same weights held in float32."""
    lm16 = load_local(micro_pair["pocket-ar-micro"], device="cpu", dtype=torch.bfloat16)
    lm32 = load_local(micro_pair["pocket-ar-micro"], device="cpu", dtype=torch.bfloat16)
    lm32.module.float()  # bfloat16-rounded weights, float32 arithmetic
    calib = calibration_set(lm16, SMALL_CALIB)
    traces = {}
    for name, lm in (("bf16", lm16), ("fp32", lm32)):
        cands = build_candidates(lm, layer_space(lm), calib, root=tmp_path,
                                 settings=QuantizerSettings(group_size=32),
                                 show_progress=False)
        traces[name] = [r.trace for r in hawq_sensitivity(lm, cands, calib, TRACES,
                                                          show_progress=False).rows]
    assert next(lm16.module.parameters()).dtype == torch.bfloat16  # restored afterwards
    assert traces["bf16"] == pytest.approx(traces["fp32"], rel=1e-3, abs=1e-6)
