"""Benchmarks, prompts, code extraction, pass@k, the harness check, the proxy and fidelity."""

from __future__ import annotations

import json
import math
from itertools import combinations

import pytest

from bitfront.data.humaneval import load_humaneval
from bitfront.data.mbpp import load_mbpp
from bitfront.evaluators.harness import (
    EvalConfig,
    bench_tasks,
    eval_batches,
    evaluate,
    pass_at_k,
    program_for,
)
from bitfront.evaluators.prompts import (
    CODE_PREFIX,
    humaneval_prompt,
    mbpp_prompt,
    sanitize,
)
from bitfront.evaluators.sandbox import run_programs
from bitfront.models import load_local
from bitfront.models.base import cut_at_stops
from bitfront.objectives.proxy import AccuracyProxy, ProxyConfig


def test_pass_at_k_matches_the_combinatorial_definition():
    for n in (1, 5, 10):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact)
    # Direct check against enumerating all k-subsets of 6 samples with 2 correct.
    samples = [1, 1, 0, 0, 0, 0]
    subsets = list(combinations(samples, 3))
    assert pass_at_k(6, 2, 3) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_instruct_fewshot_and_plain_prompts():
    tasks = {t.task_id: t for t in load_mbpp()}
    task = tasks[11]
    p = mbpp_prompt(task, "instruct").prompt
    assert p.user == ("You are an expert Python programmer, and here is your task: "
                      f"{task.text} Your code should pass these tests:\n\n"
                      + "\n".join(task.test_list))
    assert p.assistant_prefix == "Here is the completed function:\n```python\n" == CODE_PREFIX
    few = mbpp_prompt(task, "fewshot", [tasks[2], tasks[3], tasks[4]])
    assert few.prompt.user.count("[BEGIN]") == 4 and few.prompt.user.count("[DONE]") == 3
    assert few.prompt.user.endswith("[BEGIN]\n") and few.stop == ("[DONE]",)
    he = load_humaneval()[0]
    hp = humaneval_prompt(he, "instruct")
    assert hp.prompt.user == ("Write a solution to the following problem and make sure that "
                              f"it passes the tests:\n```{he.prompt}")
    assert hp.prompt.assistant_prefix == f"{CODE_PREFIX}{he.prompt}\n"
    assert mbpp_prompt(task, "plain").prompt.user.startswith('"""')


def test_extraction_and_sanitising():
    answer = ("def helper(x):\n    return x * 2\n\nLIMIT = 3\n\ndef solve(a):\n"
              "    return helper(a) + LIMIT\n\nprint(solve(1))\nassert solve(1) == 5\n"
              "def unused():\n    pass\n```\nThis function doubles.")
    code = cut_at_stops(answer, ("```",))
    assert "This function" not in code
    clean = sanitize(code, "solve")
    assert "def helper" in clean and "LIMIT = 3" in clean and "def solve" in clean
    assert "print(" not in clean and "assert" not in clean and "unused" not in clean
    broken = "import math\ndef f(x):\n    return math.sqrt(x)\ndef g(:\n"
    assert sanitize(broken, "f").strip().endswith("return math.sqrt(x)")


@pytest.mark.parametrize("bench", ["mbpp", "humaneval"])
def test_every_reference_solution_passes_in_the_sandbox(bench):
    """The harness check: all 500 MBPP test-split references and all 164 HumanEval canonical
    solutions pass their own tests, written as a model would answer an instruct prompt."""
    tasks = bench_tasks(bench, style="instruct")
    assert len(tasks) == (500 if bench == "mbpp" else 164)
    bodies = ([t.canonical_solution for t in load_humaneval()] if bench == "humaneval"
              else [t.reference for t in tasks])
    answers = [body + "```\nExplanation after the fence." for body in bodies]
    outcomes = run_programs([program_for(t, a) for t, a in zip(tasks, answers, strict=True)],
                            workers=2)
    failures = [(t.task_id, o.status, o.detail) for t, o in zip(tasks, outcomes, strict=True)
                if not o.passed]
    assert failures == []


def test_eval_runs_end_to_end_and_resumes(micro_pair, tmp_path):
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    config = EvalConfig(bench="humaneval", limit=3, max_new_tokens=24)
    out = tmp_path / "he.json"
    report = evaluate(lm, config, out, show_progress=False)
    assert report["tasks"] == 3 and 0.0 <= report["pass@1"] <= 1.0
    assert sum(report["outcomes"].values()) == 3
    assert json.loads(out.read_text())["results"][0]["samples"][0]["status"] in (
        "passed", "failed", "timeout", "crashed")
    journal = out.with_name(out.name + ".partial.jsonl")
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # killed mid-write
    again = evaluate(lm, EvalConfig(bench="humaneval", limit=3, max_new_tokens=24), out,
                     show_progress=False)
    assert [r["task_id"] for r in again["results"]] == [r["task_id"] for r in report["results"]]
    from bitfront.errors import BitfrontError

    with pytest.raises(BitfrontError, match="other settings"):
        evaluate(lm, EvalConfig(bench="humaneval", limit=3, max_new_tokens=8), out,
                 show_progress=False)


def test_eval_batches_group_prompts_of_similar_length_in_a_fixed_partition():
    tasks = bench_tasks("humaneval", style="plain", limit=40)
    config = EvalConfig(bench="humaneval", batch_size=8, samples=2, temperature=0.8)
    partition = eval_batches(tasks, config)
    assert [len(b) for b in partition] == [4] * 10  # batch_size // samples tasks per batch
    assert sorted(t.task_id for b in partition for t in b) == sorted(t.task_id for t in tasks)
    size = [len(t.prompt.prompt.user) + len(t.prompt.prompt.assistant_prefix)
            for b in partition for t in b]
    assert size == sorted(size, reverse=True)


def test_proxy_sees_quantization(micro_pair):
    from bitfront.quant.apply import PlanApplier
    from bitfront.quant.calibration import CalibrationConfig, calibration_set
    from bitfront.quant.candidates import build_candidates
    from bitfront.space.layers import layer_space
    from bitfront.space.plan import BitPlan

    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    proxy = AccuracyProxy(lm, ProxyConfig(tasks=32))
    assert {t.task_id for t in proxy.tasks} <= {f"mbpp/{i}" for i in range(511, 601)}
    assert proxy().retention == 1.0
    space = layer_space(lm)
    cands = build_candidates(lm, space, calibration_set(lm, CalibrationConfig(samples=16)),
                             show_progress=False)
    applier = PlanApplier(lm, cands)
    scores = {}
    for bits in (2, 8):
        with applier.applied(BitPlan.uniform(space, lm.fingerprint(), bits)):
            scores[bits] = proxy()
    assert scores[2].retention < scores[8].retention <= 1.0
    assert scores[2].logprob_retention < scores[8].logprob_retention
    assert proxy().retention == 1.0  # restored
    again = AccuracyProxy(lm, ProxyConfig(tasks=32))
    assert again.fingerprint() == proxy.fingerprint()


def test_fidelity_correlations_and_plans(micro_pair, tmp_path):
    from bitfront.objectives.fidelity import correlations, measure_fidelity, sample_plans
    from bitfront.quant.calibration import CalibrationConfig, calibration_set
    from bitfront.quant.candidates import build_candidates
    from bitfront.space.layers import layer_space

    tau, rho, note = correlations([0.9, 0.8, 0.5, 1.0], [0.4, 0.3, 0.1, 0.5])
    assert tau.estimate == pytest.approx(1.0) and rho.estimate == pytest.approx(1.0)
    assert note == "" and tau.low <= 1.0 <= tau.high
    tau, rho, note = correlations([0.9, 0.8, 0.5], [0.0, 0.0, 0.0])
    assert tau is None and "pass@1 is the same" in note

    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    proxy = AccuracyProxy(lm, ProxyConfig(tasks=16))
    cands = build_candidates(lm, layer_space(lm),
                             calibration_set(lm, CalibrationConfig(samples=16)),
                             show_progress=False)
    plans = sample_plans(cands, lm.fingerprint(), mixed=1)
    assert [p.meta["name"] for p in plans] == ["uniform-2", "uniform-3", "uniform-4",
                                               "uniform-8", "uniform-16", "mixed-0"]
    result = measure_fidelity(lm, cands, plans, proxy,
                              EvalConfig(bench="mbpp", limit=2, max_new_tokens=16),
                              tmp_path, show_progress=False)
    assert [r["plan"] for r in result.rows] == [p.meta["name"] for p in plans]
    by_plan = {r["plan"]: r for r in result.rows}
    assert by_plan["uniform-16"]["proxy_retention"] == 1.0
    assert by_plan["uniform-2"]["proxy_retention"] < by_plan["uniform-8"]["proxy_retention"]
    assert (tmp_path / "uniform-2.json").exists()
    if len({r["pass@1"] for r in result.rows}) == 1:  # a micro model passes nothing
        assert result.kendall_tau is None and result.note.startswith("undefined")
    else:
        from scipy import stats

        expected = stats.kendalltau([r["proxy_retention"] for r in result.rows],
                                    [r["pass@1"] for r in result.rows]).statistic
        assert result.kendall_tau.estimate == pytest.approx(expected)
