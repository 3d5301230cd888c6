"""The search: ILP seeds, the Optuna study (storage, resume, refusal, killed workers), fronts,
best-under-budget, exports, and workers sharing a PostgreSQL, SQLite or journal-file study."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from dataclasses import replace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from bitfront.exports.formats import gptqmodel_config, resolve_dynamic
from bitfront.models import load_local
from bitfront.objectives.latency import Workload
from bitfront.objectives.proxy import ProxyConfig
from bitfront.objectives.sensitivity import SensitivityConfig
from bitfront.planner.front import (
    NoPlanError,
    Point,
    SearchResult,
    best_under,
    hypervolume,
    knee,
    pareto_front,
    plan_of,
    points,
    study_config,
)
from bitfront.planner.metrics import TrialMetrics
from bitfront.planner.moves import Moves
from bitfront.planner.pipeline import Setup, build_search
from bitfront.planner.refine import (
    RefineConfig,
    answer,
    best_recorded,
    budget_label,
    kept_note,
    refine,
)
from bitfront.planner.seeds import (
    BudgetError,
    SeedProblem,
    hawq_seeds,
    seed_budgets,
    uniform_memory,
)
from bitfront.planner.study import SearchConfig, StudyMismatchError, open_storage
from bitfront.quant.calibration import CalibrationConfig
from bitfront.quant.candidates import QuantizerSettings
from bitfront.units import format_bytes, parse_bytes, parse_seconds

SETUP = Setup(quantizer=QuantizerSettings(group_size=32),
              calibration=CalibrationConfig(samples=16, seq_len=64),
              proxy=ProxyConfig(tasks=16), latency=Workload(prompt_len=16, answer_len=8),
              sensitivity=SensitivityConfig(probes=1, batches=1))


def test_ilp_is_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    groups = {f"g{i}": [f"g{i}"] for i in range(4)}
    choices = [2, 4, 8]
    omega = rng.random((4, 3)) * np.array([8.0, 2.0, 0.1])  # fewer bits, more damage
    nbytes = np.array([[2, 4, 8]] * 4) * rng.integers(1, 4, (4, 1))
    problem = SeedProblem(groups=groups, choices=choices, omega=omega, nbytes=nbytes,
                          fixed_bytes=5)
    low, high = problem.memory_range()
    for budget in range(low, high + 1, 3):
        picked = problem.solve(budget)
        k = [choices.index(picked[g]) for g in groups]
        cost = sum(omega[i, k[i]] for i in range(4))
        best = min(sum(omega[i, c[i]] for i in range(4))
                   for c in itertools.product(range(3), repeat=4)
                   if sum(nbytes[i, c[i]] for i in range(4)) + 5 <= budget)
        assert cost == pytest.approx(best)
        assert sum(nbytes[i, k[i]] for i in range(4)) + 5 <= budget
    with pytest.raises(BudgetError, match=f"smallest possible is {format_bytes(low)}"):
        problem.solve(low - 1)
    seeds = hawq_seeds(problem, per_gap=3, uniform=(2, 4, 8), budgets=(high - 1,))
    assert [s.origin for s in seeds[:3]] == ["uniform-2", "uniform-4", "uniform-8"]
    assert len({tuple(s.bits.values()) for s in seeds}) == len(seeds)
    # Budgets: three strictly inside each gap between adjacent uniform plans, plus the user's.
    levels = [uniform_memory(problem, b) for b in choices]
    budgets = seed_budgets(problem, per_gap=3, budgets=(high - 1,))
    for low_u, high_u in zip(levels, levels[1:], strict=False):
        assert sum(low_u < b < high_u for b in budgets) >= 3
    assert high - 1 in budgets
    assert max(seed_budgets(problem, per_gap=3, memory_budget=levels[1])) == levels[1]


def test_seeds_lie_between_each_adjacent_pair_of_uniform_plans(search):
    """The real micro model: ILP seeds fill every gap between adjacent uniform plans."""
    problem = search.seed_problem()
    seeds = hawq_seeds(problem, per_gap=3)
    memory = {s.origin: Moves(problem).memory(Moves(problem).index(s.bits)) for s in seeds}
    levels = sorted(uniform_memory(problem, b) for b in problem.choices)
    for low_u, high_u in zip(levels, levels[1:], strict=False):
        inside = [o for o, m in memory.items() if low_u < m < high_u]
        assert len(inside) >= 2, (low_u, high_u, memory)


def no_level_fits(moves: Moves, plan: tuple[int, ...], cap: float) -> bool:
    """No group of `plan` can go up a level within `cap`."""
    return not any(moves.fits((*plan[:g], k + 1, *plan[g + 1:]), cap)
                   for g, k in enumerate(plan) if k + 1 < moves.levels)


def test_a_filled_move_keeps_the_budget_and_leaves_no_level_unused(search):
    problem = search.seed_problem()
    moves, rng = Moves(problem), np.random.RandomState(0)
    cap = (uniform_memory(problem, 2) + uniform_memory(problem, 3)) / 2
    start = moves.index(problem.solve(cap))
    swapped = [c for c in (moves.neighbour(start, rng, cap=cap) for _ in range(20)) if c]
    assert swapped and any(not no_level_fits(moves, c, cap) for c in swapped)
    for child in swapped:
        filled = moves.fill(child, rng, cap)
        assert moves.fits(filled, cap) and no_level_fits(moves, filled, cap)
        assert all(f >= c for f, c in zip(filled, child, strict=True))


def test_budget_parsing():
    assert parse_bytes("1.2GiB") == int(1.2 * 2**30) and parse_bytes("800MB") == 800_000_000
    assert parse_bytes("1500") == 1500
    assert parse_seconds("120ms") == pytest.approx(0.12) and parse_seconds("2s") == 2.0
    from bitfront.errors import BitfrontError

    with pytest.raises(BitfrontError, match="as a size"):
        parse_bytes("big")


def metrics_of(retention: float, memory: float) -> TrialMetrics:
    return TrialMetrics(retention=retention, logprob_retention=retention, top1=retention,
                        logprob=-1.0, memory_bytes=memory, avg_bits=4.0, nominal_bits=4.0)


def test_front_hypervolume_knee_and_budgets():
    objectives = ["accuracy", "memory"]
    raw = [(0.9, 100), (0.95, 200), (0.8, 100), (0.99, 400), (0.5, 50), (0.99, 500)]
    pts = [Point(number=i, bits={}, values=v, feasible=i != 4, origin="",
                 metrics=metrics_of(v[0], v[1]))
           for i, v in enumerate(raw)]
    front = pareto_front(pts, objectives)
    assert sorted(p.number for p in front) == [0, 1, 3]  # 2 and 5 dominated, 4 infeasible
    ref = {"accuracy": 0.0, "memory": 1000.0}
    # Normalised boxes: union of [-acc, 0] x [mem/1000, 1] for the front points.
    exact = 0.9 * 0.9 + (0.95 - 0.9) * 0.8 + (0.99 - 0.95) * 0.6
    assert hypervolume(pts, objectives, ref) == pytest.approx(exact)
    assert knee(front, objectives).number == 1
    assert best_under(pts, memory=250).number == 1
    with pytest.raises(NoPlanError, match="no plan within budget; the smallest is 100B"):
        best_under(pts, memory=60)


def test_a_mixed_plan_inside_the_uniform_plans_interval_is_not_the_answer():
    def point(number, bits, retention, high):
        metrics = replace(metrics_of(retention, 200), retention_low=retention - 0.01,
                          retention_high=high)
        return Point(number=number, bits=bits, values=(), feasible=True, origin="",
                     metrics=metrics)

    uniform = point(0, {"a": 3, "b": 3}, 0.996, 1.003)
    mixed = point(1, {"a": 2, "b": 4}, 1.001, 1.008)
    assert best_under([uniform, mixed], memory=250).number == 0  # 1.001 <= 1.003: a tie
    clear = point(2, {"a": 4, "b": 2}, 1.004, 1.011)
    assert best_under([uniform, mixed, clear], memory=250).number == 2
    # Likelihood retention has no interval: the most accurate plan, as before.
    assert best_under([uniform, mixed], memory=250,
                      accuracy="logprob_retention").number == 1
    # The answer says why the refinement's best plan is not it, and only then.
    record = {"trial": 1, "accuracy": 1.001}
    assert "trial 1, 1.00100) lies within its 95% interval (up to 1.00300)" in \
        kept_note(uniform, record, "retention")
    assert kept_note(mixed, record, "retention") == ""
    assert kept_note(uniform, {"trial": 2, "accuracy": 1.004}, "retention") == ""


@pytest.fixture(scope="module")
def search(micro_pair):
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    return build_search(lm, SearchConfig(population=8, ilp_budgets=1, sampler="nsga2"), SETUP,
                        show_progress=False)


def test_study_resumes_refuses_and_respects_budgets(search, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = search.run(storage, "s", 14, show_progress=False)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 14
    origins = [t.user_attrs["origin"] for t in trials]
    seeds = study.user_attrs["bitfront_seeded"]
    assert origins[: len(seeds)] == seeds and len(set(seeds)) == len(seeds)
    assert seeds[:4] == ["uniform-2", "uniform-3", "uniform-4", "uniform-8"]
    assert any(o.startswith("ilp-memory-") for o in seeds)
    gen = optuna.samplers.NSGAIISampler._get_generation_key()
    assert all(t.system_attrs[gen] == 0 for t in trials[: len(seeds)])
    for t in trials:
        assert {"retention", "memory_bytes", "latency_s", "avg_bits"} <= set(t.user_attrs)
    # Re-running resumes: no seed enqueued twice, the count grows to the new target.
    again = search.run(storage, "s", 18, show_progress=False)
    done = again.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 18
    assert sum(t.user_attrs["origin"] == "uniform-4" for t in done) == 1
    # Every uniform plan is dominated or matched by the front.
    config = study_config(again)
    pts = points(again)
    front = pareto_front(pts, config["objectives"])
    signs = np.array([-1, 1, 1])
    for p in pts:
        if p.origin.startswith("uniform-"):
            assert any(np.all(np.array(f.values) * signs <= np.array(p.values) * signs)
                       for f in front), p.origin
    # A worker with another configuration refuses to join.
    other = build_search(search.lm, SearchConfig(population=8, ilp_budgets=1,
                                                 grouping="block"), SETUP,
                         show_progress=False)
    with pytest.raises(StudyMismatchError, match="grouping"):
        other.run(storage, "s", 18, show_progress=False)
    # A memory budget: infeasible trials are recorded but never on the front.
    budget = int(np.median([p.metrics.memory_bytes for p in pts]))
    capped = build_search(search.lm, SearchConfig(population=8, ilp_budgets=1,
                                                  memory_budget=budget), SETUP,
                          show_progress=False)
    study = capped.run(storage, "capped", 12, show_progress=False)
    capped_pts = points(study)
    assert any(not p.feasible for p in capped_pts)
    assert all(p.metrics.memory_bytes <= budget
               for p in pareto_front(capped_pts, config["objectives"]))


def test_killed_worker_trial_is_marked_failed(search, tmp_path):
    storage = f"sqlite:///{tmp_path / 'k.db'}"
    study = search.run(storage, "k", 4, show_progress=False)
    # A worker process that takes a trial and dies with it running.
    code = (
        "import optuna, os, signal, socket\n"
        f"s = optuna.load_study(study_name='k', storage={storage!r})\n"
        "t = s.ask()\n"
        "t.set_user_attr('worker', {'host': socket.gethostname(), 'pid': os.getpid()})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1
    resumed = search.run(storage, "k", 6, show_progress=False)
    assert resumed.trials[running[0].number].state == TrialState.FAIL
    assert len(resumed.get_trials(states=(TrialState.COMPLETE,))) == 6


def test_exports_reproduce_the_plan(search, tmp_path):
    storage = f"sqlite:///{tmp_path / 'e.db'}"
    study = search.run(storage, "e", 10, show_progress=False)
    config = study_config(study)
    for point in points(study):
        plan = plan_of(point, config)
        if len({s.bits for s in plan.specs.values()} - {16}) == 0:
            continue
        gptq = gptqmodel_config(plan)
        for name, spec in plan.specs.items():
            resolved = resolve_dynamic(gptq, name)
            assert (resolved is None) == (spec.bits == 16), name
            if resolved is not None:
                assert resolved == (spec.bits, spec.group_size), name


def test_gptq_checkpoint_holds_the_candidates(search, tmp_path):
    from safetensors.torch import load_file

    from bitfront.exports.gptq import write_gptq_checkpoint
    from bitfront.kernels.quant import PackedWeight, dequantize
    from bitfront.space.plan import BitPlan

    lm, cands = search.lm, search.candidates
    bits = dict(zip(cands.space.names(), [2, 3, 4, 8, 16, 4, 2] * 2, strict=True))
    plan = BitPlan.from_bits(lm.fingerprint(), bits, 32)
    directory = write_gptq_checkpoint(lm, plan, cands, tmp_path / "ckpt")
    tensors = load_file(directory / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    assert config["quantization_config"]["checkpoint_format"] == "gptq_v2"
    for name, b in bits.items():
        if b == 16:
            assert f"{name}.weight" in tensors
            continue
        layer = cands.space[name]
        packed = PackedWeight(bits=b, group_size=32, shape=(layer.out_features,
                                                             layer.in_features),
                              **{f: tensors[f"{name}.{f}"] for f in
                                 ("qweight", "qzeros", "scales", "g_idx")})
        assert np.allclose(dequantize(packed).numpy(), cands.weight(name, b).numpy())
        assert resolve_dynamic(config["quantization_config"], name)[0] == b
    assert "model.embed_tokens.weight" in tensors


POSTGRES = os.environ.get("BITFRONT_TEST_POSTGRES")


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: set BITFRONT_TEST_POSTGRES "
                                         "to a postgresql:// URL (.ci/run starts one)")
def test_two_workers_share_a_postgresql_study(micro_pair, tmp_path):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "bitfront.cli", "search", "pocket-ar-micro",
               "--storage", POSTGRES, "--study-name", name, "--trials", "20",
               "--population", "8", "--ilp-budgets", "1", "--group-size", "32",
               "--calib-samples", "16", "--calib-seq-len", "64", "--proxy-tasks", "16",
               "--prompt-len", "16", "--answer-len", "8", "--json"]
    workers = [subprocess.Popen([*command, "--worker", str(w)], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for w in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-2000:]
    study = optuna.load_study(study_name=name, storage=POSTGRES)
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len(trials) == 20
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    seeds = study.user_attrs["bitfront_seeded"]
    origins = [t.user_attrs["origin"] for t in trials]
    assert all(origins.count(s) == 1 for s in seeds)
    workers_seen = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(workers_seen) == 2
    # The default sampler (budget-preserving moves) never proposes a plan twice.
    plans = [tuple(t.params[g] for g in sorted(t.params)) for t in trials]
    assert len(set(plans)) == len(plans)
    # The front over both workers' trials is exactly the non-dominated set (brute force).
    config = study_config(study)
    pts = points(study)
    signs = np.array([-1.0, 1.0, 1.0])
    losses = {p.number: np.array(p.values) * signs for p in pts}
    brute = {a for a in losses if not any(np.all(losses[b] <= losses[a])
                                          and np.any(losses[b] < losses[a]) for b in losses)}
    front = {p.number for p in pareto_front(pts, config["objectives"])}
    assert front <= brute and {tuple(losses[n]) for n in front} == {tuple(losses[n])
                                                                     for n in brute}
    for stdout, _ in outputs:
        assert json.loads(stdout.strip().splitlines()[-1])["study"] == name
    optuna.delete_study(study_name=name, storage=POSTGRES)


def test_move_sampler_two_workers_on_one_journal_storage(micro_pair, tmp_path):
    """Two `bitfront search` processes share a journal-file study with the default sampler:
    every trial completes, seeds run once, and no plan is proposed twice."""
    storage = str(tmp_path / "study.log")
    command = [sys.executable, "-m", "bitfront.cli", "search", "pocket-ar-micro",
               "--storage", storage, "--study-name", "j", "--trials", "16",
               "--ilp-budgets", "1", "--group-size", "32", "--calib-samples", "16",
               "--calib-seq-len", "64", "--proxy-tasks", "16", "--prompt-len", "16",
               "--answer-len", "8", "--json"]
    workers = [subprocess.Popen([*command, "--worker", str(w)], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for w in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=900)
        assert worker.returncode == 0, stderr[-2000:]
    study = optuna.load_study(study_name="j", storage=open_storage(storage))
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials) and len(trials) == 16
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2
    plans = [tuple(t.params[g] for g in sorted(t.params)) for t in trials]
    assert len(set(plans)) == len(plans)
    assert sum(t.user_attrs["origin"] == "moves" for t in trials) >= 6


SQLITE_WORKER = """
import json, sys, time
from pathlib import Path
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.dialects.sqlite.base import SQLiteDialect
from bitfront.models import load_local
from bitfront.planner.pipeline import Setup, build_search
from bitfront.planner.study import SearchConfig

def slower(method, seconds):
    def slow(*args, **kwargs):
        time.sleep(seconds(*args))
        return method(*args, **kwargs)
    return slow

# A slow disk widens the windows in which workers race: between looking for Optuna's tables
# and creating them, and between reading a waiting trial and taking it.
SQLiteDialect.has_table = slower(SQLiteDialect.has_table, lambda *_: 0.05)
RDBStorage.check_trial_is_updatable = slower(
    RDBStorage.check_trial_is_updatable, lambda _s, _t, state: 0.2 * (state == TrialState.WAITING))
model, setup, config, storage, trials, worker, ready = sys.argv[1:]
search = build_search(load_local(Path(model), device="cpu"),
                      SearchConfig.from_dict(json.loads(config)),
                      Setup.from_dict(json.loads(setup)), show_progress=False)
Path(ready, worker).touch()
deadline = time.time() + 120
while len(list(Path(ready).iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.01)  # both open the fresh file at the same moment
search.run(storage, "s", int(trials), worker=int(worker), show_progress=False)
"""


def test_two_workers_share_a_fresh_sqlite_study(search, micro_pair, tmp_path):
    """Two worker processes open one fresh SQLite file at the same moment and share its
    study: neither trips over the other creating the tables or takes a seed the other holds,
    and together they stop at exactly the target with no plan evaluated twice."""
    trials, ready = 11, tmp_path / "ready"
    ready.mkdir()
    storage = f"sqlite:///{tmp_path / 'fresh.db'}"
    config = SearchConfig(ilp_budgets=1, objectives=("accuracy", "memory"))  # no latency table
    args = [str(micro_pair["pocket-ar-micro"]), json.dumps(SETUP.to_dict()),
            json.dumps(config.to_dict()), storage, str(trials)]
    workers = [subprocess.Popen([sys.executable, "-c", SQLITE_WORKER, *args, str(w), ready],
                                stderr=subprocess.PIPE, text=True) for w in range(2)]
    try:
        errors = [w.communicate(timeout=300)[1] for w in workers]
    finally:
        for w in workers:
            w.kill()
    for worker, stderr in zip(workers, errors, strict=True):
        assert worker.returncode == 0, stderr[-2000:]
    study = optuna.load_study(study_name="s", storage=storage)
    done = study.get_trials()
    assert len(done) == trials and all(t.state == TrialState.COMPLETE for t in done)
    plans = [tuple(t.params[g] for g in sorted(t.params)) for t in done]
    assert len(set(plans)) == trials
    seeds = study.user_attrs["bitfront_seeded"]
    assert sorted(t.user_attrs["origin"] for t in done if t.user_attrs["origin"] in seeds) \
        == sorted(seeds) and len(seeds) < trials
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2


def test_refinement_keeps_within_the_budget_and_is_recorded(search, tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    study = search.run(storage, "r", 10, show_progress=False)
    problem = search.seed_problem()
    u2, u3, u4 = (uniform_memory(problem, b) for b in (2, 3, 4))
    config = RefineConfig(evaluations=10, screen=4, offspring=4, survivors=2)
    for budget in (int(u2 + (u3 - u2) / 2), int(u3 + (u4 - u3) / 4)):
        result = refine(search, study, memory=budget, config=config, show_progress=False)
        assert result.evaluations <= config.evaluations and result.steps >= 1
        mine = [t for t in study.get_trials()
                if t.user_attrs["origin"].endswith(budget_label(budget, None))]
        assert mine and all(t.user_attrs["memory_bytes"] <= budget for t in mine)
        moves = Moves(problem)
        assert all(no_level_fits(moves, moves.index(t.params), budget) for t in mine
                   if t.user_attrs["origin"].startswith("refine-"))
        best = best_recorded(SearchResult.of(study), budget, None)
        assert best.metrics.memory_bytes <= budget
        assert best.number == result.trial or (best.uniform and
                                               best.holds(result.accuracy, "retention"))
        # Never worse than the ILP at the budget or the uniform plan that fits.
        starts = [t for t in study.get_trials() if t.user_attrs["origin"] in
                  (f"ilp-at-{budget_label(budget, None)}", "uniform-2", "uniform-3")
                  and t.user_attrs["memory_bytes"] <= budget]
        assert starts and all(best.metrics.retention >= t.user_attrs["retention"]
                              for t in starts)
    # Asked again: answered from the study, without loading anything.
    again = answer(study, storage, memory=budget, config=config,
                   open_search=lambda: pytest.fail("a recorded answer needs no search"))
    assert again.how == "recorded" and again.point.number == result.trial
    # A new budget whose candidates are not cached is a lookup, and says so.
    monkeypatch.setenv("BITFRONT_CACHE", str(tmp_path / "empty-cache"))
    lookup = answer(study, storage, memory=u4, config=config,
                    open_search=lambda: pytest.fail("no candidates: no search"))
    assert lookup.how == "lookup" and "not in the cache" in lookup.note
    assert lookup.point.metrics.memory_bytes <= u4
