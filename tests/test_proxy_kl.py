"""The KL proxy: KL(16-bit || plan) of the next-token (AR) / masked-token (diffusion)
distributions with the top-k + tail-bucket approximation, as a retention beside top-1 and
likelihood, and fidelity reporting every proxy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bitfront.models import base, load_local
from bitfront.models.base import head_token_stats
from bitfront.objectives.proxy import AccuracyProxy, ProxyConfig
from bitfront.planner.metrics import TrialMetrics, objective_metric
from bitfront.quant.apply import PlanApplier
from bitfront.quant.calibration import CalibrationConfig, calibration_set
from bitfront.quant.candidates import QuantizerSettings, build_candidates
from bitfront.space.layers import layer_space
from bitfront.space.plan import BitPlan

GROUP = 32  # the micro models' layers are 64 wide


def exact_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row of full log-probabilities [N, V]."""
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def full(topk: base.TopK, vocab: int) -> torch.Tensor:
    """Full log-probabilities [N, V] from a top-k that holds the whole vocabulary."""
    assert topk.logp.shape[1] == vocab and torch.all(topk.tail == float("-inf"))
    return torch.full((len(topk), vocab), float("-inf")).scatter(
        -1, topk.ids.long(), topk.logp)


def test_topk_kl_is_exact_at_full_vocabulary_and_a_lower_bound_below(monkeypatch):
    torch.manual_seed(0)
    vocab, hidden_size, n = 50, 16, 23
    monkeypatch.setattr(base, "HEAD_CHUNK_BYTES", 4 * vocab * 5)  # chunks of 5 positions
    p_head, q_head = nn.Linear(hidden_size, vocab), nn.Linear(hidden_size, vocab)
    with torch.no_grad():
        q_head.weight.copy_(p_head.weight + 0.3 * torch.randn_like(p_head.weight))
        q_head.bias.copy_(p_head.bias)
    hidden, targets = torch.randn(n, hidden_size), torch.randint(0, vocab, (n,))
    logp = torch.log_softmax(p_head(hidden).detach(), -1)
    logq = torch.log_softmax(q_head(hidden).detach(), -1)
    exact = exact_kl(logp, logq)
    assert exact.min() > 0

    reference = head_token_stats(p_head, hidden, targets, topk=vocab).topk
    assert reference.ids.dtype == torch.int32 and len(reference) == n
    got = head_token_stats(q_head, hidden, targets, reference=reference)
    torch.testing.assert_close(got.kl, exact, rtol=1e-4, atol=1e-6)
    itself = head_token_stats(p_head, hidden, targets, reference=reference).kl
    assert torch.all(itself.abs() < 1e-6)
    # Scores are what they were without the KL.
    correct, logprob = base.token_stats(q_head(hidden).detach(), targets)
    torch.testing.assert_close(got.correct, correct)
    torch.testing.assert_close(got.logprob, logprob)

    # Fewer tokens: the KL of the distributions coarsened to k + 1 outcomes, computed here
    # directly, which is at most the exact KL (data-processing inequality).
    k = 4
    small = head_token_stats(p_head, hidden, targets, topk=k).topk
    top = logp.topk(k, dim=-1)
    torch.testing.assert_close(small.logp, top.values)
    assert torch.equal(small.ids.long(), top.indices)
    rest = torch.ones_like(logp, dtype=torch.bool).scatter(-1, top.indices, False)
    coarse_p = torch.cat([top.values, logp.masked_fill(~rest, -torch.inf).logsumexp(-1,
                                                                                  True)], -1)
    coarse_q = torch.cat([logq.gather(-1, top.indices),
                          logq.masked_fill(~rest, -torch.inf).logsumexp(-1, True)], -1)
    approx = head_token_stats(q_head, hidden, targets, reference=small).kl
    torch.testing.assert_close(approx, exact_kl(coarse_p, coarse_q), rtol=1e-4, atol=1e-6)
    assert torch.all(approx <= exact + 1e-6) and torch.all(approx > 0)

    with pytest.raises(ValueError, match="positions"):
        head_token_stats(q_head, hidden[:-1], targets[:-1], reference=reference)


@pytest.fixture(scope="module", params=["pocket-ar-micro", "pocket-diffusion-micro"])
def quantized(request, micro_pair, tmp_path_factory):
    """A micro model, its candidates (2 and 8 bits) and its uniform 2-bit plan."""
    lm = load_local(micro_pair[request.param], device="cpu")
    space = layer_space(lm)
    calib = calibration_set(lm, CalibrationConfig(samples=8, seq_len=64, batch_size=4))
    cands = build_candidates(lm, space, calib, root=tmp_path_factory.mktemp("cands"),
                             settings=QuantizerSettings(bits=(2, 8), group_size=GROUP),
                             show_progress=False)
    return lm, PlanApplier(lm, cands), BitPlan.uniform(space, lm.fingerprint(), 2, GROUP)


def test_kl_of_the_16bit_model_is_zero_and_grows_at_2_bits(quantized):
    lm, applier, plan = quantized
    vocab = lm.head.out_features
    proxy = AccuracyProxy(lm, ProxyConfig(tasks=8, bench="pocket", batch_size=4))
    assert proxy.reference.logp.shape[1] == 64 and len(proxy.reference) > 8
    exact = AccuracyProxy(lm, ProxyConfig(tasks=8, bench="pocket", batch_size=4,
                                          kl_topk=vocab))
    same = proxy()
    assert same.kl == 0.0 and same.kl_retention == 1.0
    assert same.kl_retention_low == same.kl_retention_high == 1.0
    assert set(same.per_task_kl) == {0.0}
    with applier.applied(plan):
        low, full_vocab = proxy(), exact()
    assert low.kl > 0.01 and low.kl_retention == pytest.approx(math.exp(-low.kl))
    assert low.kl_retention_low <= low.kl_retention <= low.kl_retention_high < 1.0
    assert low.kl == pytest.approx(sum(low.per_task_kl) / 8)
    # k = 64 is a lower bound on the exact KL (close to it for a trained model; the micro
    # models' distributions are flat after 100 steps, so here it holds 85-90% of it).
    assert 0.5 * full_vocab.kl <= low.kl <= full_vocab.kl + 1e-6
    assert all(a <= b + 1e-6 for a, b in zip(low.per_task_kl, full_vocab.per_task_kl,
                                              strict=True))
    assert {"kl", "kl_retention", "kl_retention_low", "kl_retention_high"} <= set(
        low.to_dict())
    assert "per_task_kl" not in low.to_dict()
    assert proxy().kl == 0.0  # restored
    assert proxy.fingerprint() != exact.fingerprint()  # k is part of what the proxy measures


def test_kl_at_full_vocabulary_equals_the_exact_kl_of_each_sample(quantized):
    """score_tokens with k = vocab keeps whole distributions: the KL it reports for a sample
    equals the exact KL averaged over the sample's scored positions (next tokens for AR,
    masked tokens at every mask ratio for diffusion; the masks are seeded alike)."""
    lm, applier, plan = quantized
    vocab = lm.head.out_features
    contexts, targets = [[5, 6, 7, 8], [9, 10]], [list(range(20, 45)), list(range(50, 61))]
    for ctx, tgt in zip(contexts, targets, strict=True):
        base16 = lm.score_tokens([ctx], [tgt], seed=3, topk=vocab)
        with applier.applied(plan):
            low = lm.score_tokens([ctx], [tgt], seed=3, topk=vocab, reference=base16.topk)
        expected = exact_kl(full(base16.topk, vocab), full(low.topk, vocab)).mean().item()
        assert low.kl[0] == pytest.approx(expected, rel=1e-4, abs=1e-7) and expected > 0.01
        assert low.accuracy[0] != base16.accuracy[0] or low.logprob[0] != base16.logprob[0]
    both = lm.score_tokens(contexts, targets, batch_size=1, seed=3, topk=3)
    assert lm.score_tokens(contexts, targets, batch_size=1, seed=3,
                           reference=both.topk).kl == [0.0, 0.0]
    with pytest.raises(ValueError, match="positions"):
        lm.score_tokens(contexts[:1], targets[:1], seed=3, reference=both.topk)


def test_kl_is_an_accuracy_option_with_a_retention_metric():
    from bitfront.planner.study import ACCURACIES

    assert "kl" in ACCURACIES and objective_metric("accuracy", "kl") == "kl_retention"
    metrics = TrialMetrics.from_dict({"retention": 0.9, "logprob_retention": 0.8, "top1": 0.5,
                                      "logprob": -1.0, "memory_bytes": 10, "avg_bits": 3,
                                      "nominal_bits": 3, "kl": 0.5,
                                      "kl_retention": math.exp(-0.5), "other": 1})
    assert metrics.value("accuracy", "kl") == pytest.approx(math.exp(-0.5))
    assert metrics.to_dict()["kl"] == 0.5
    old = TrialMetrics.from_dict({k: v for k, v in metrics.to_dict().items()
                                  if not k.startswith("kl")})
    assert "kl_retention" not in old.to_dict()
    with pytest.raises(ValueError, match="kl_retention"):
        old.value("accuracy", "kl")


def test_fidelity_reports_every_proxy(quantized, tmp_path, monkeypatch):
    """τ for each proxy against pass@1 on the same plans (the evaluation is stubbed: its
    pass@1 follows the plans' bits)."""
    from bitfront.objectives import fidelity
    from bitfront.objectives.fidelity import measure_fidelity, sample_plans

    lm, applier, _ = quantized
    truth = {"uniform-2": 0.1, "uniform-8": 0.5, "uniform-16": 0.6, "mixed-0": 0.2,
             "mixed-1": 0.3, "mixed-2": 0.55}

    def fake_evaluate(lm, config, path, **kw):
        return {"pass@1": truth[path.stem], "pass@1_interval": [0.0, 1.0]}

    monkeypatch.setattr(fidelity, "evaluate", fake_evaluate)
    plans = sample_plans(applier.candidates, lm.fingerprint(), mixed=3)
    proxy = AccuracyProxy(lm, ProxyConfig(tasks=8, bench="pocket", batch_size=4))
    result = measure_fidelity(lm, applier.candidates, plans, proxy, None, tmp_path,
                              show_progress=False)
    by_plan = {r["plan"]: r for r in result.rows}
    assert by_plan["uniform-16"]["kl_retention"] == 1.0 and by_plan["uniform-16"]["kl"] == 0.0
    assert by_plan["uniform-2"]["kl_retention"] < by_plan["uniform-8"]["kl_retention"]
    low, high = by_plan["uniform-2"]["kl_retention_interval"]
    assert low <= by_plan["uniform-2"]["kl_retention"] <= high
    assert set(result.proxies) == {"top1", "likelihood", "kl"}
    from scipy import stats

    for name, key in (("top1", "proxy_retention"), ("likelihood", "logprob_retention"),
                      ("kl", "kl_retention")):
        tau = result.proxies[name].kendall_tau
        expected = stats.kendalltau([r[key] for r in result.rows],
                                    [r["pass@1"] for r in result.rows]).statistic
        assert tau.estimate == pytest.approx(expected) and tau.low <= tau.estimate <= tau.high
    assert result.kendall_tau == result.proxies["top1"].kendall_tau
    data = result.to_dict()
    assert set(data["proxies"]) == {"top1", "likelihood", "kl"}
    assert data["best"] in data["proxies"] and data["kendall_tau"] is not None


def test_report_rates_each_stored_proxy_and_skips_missing_ones():
    from bitfront.studies.report import _fidelity

    def row(bits, top1, lik, pass1, kl=None):
        out = {"bits": bits, "retention": top1, "logprob_retention": lik,
               "pass@1": {"pocket": pass1}}
        return out if kl is None else {**out, "kl_retention": kl}

    old = {"uniform": [row(16, 1.0, 1.0, 0.6), row(2, 0.8, 0.5, 0.1)],
           "verified": [row(3, 0.9, 0.8, 0.4)], "mixed": [row(4, 0.95, 0.85, 0.5)]}
    fid = _fidelity(old, "pocket")
    assert set(fid["proxies"]) == {"top1", "likelihood"} and fid["plans"] == 4
    assert fid["kendall_tau"] == fid["proxies"]["top1"]["kendall_tau"]
    new = {"uniform": [row(16, 1.0, 1.0, 0.6, 1.0), row(2, 0.8, 0.5, 0.1, 0.4)],
           "verified": [row(3, 0.9, 0.8, 0.4, 0.3)], "mixed": []}
    fid = _fidelity(new, "pocket")
    assert set(fid["proxies"]) == {"top1", "likelihood", "kl"}
    assert fid["proxies"]["kl"]["kendall_tau"]["estimate"] == pytest.approx(1 / 3)
