"""Batch jobs can trust bitfront (issue 16): infeasible budgets, one-line errors for every bad
input, damaged caches recomputed, resumable and reproducible searches. Real subprocesses,
real SQLite, real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import optuna
import pytest

SMALL_SEARCH = ["--population", "8", "--ilp-budgets", "1", "--group-size", "32",
                "--calib-samples", "16", "--calib-seq-len", "64", "--proxy-tasks", "16",
                "--prompt-len", "16", "--answer-len", "8"]


def bitfront_cmd(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitfront.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=dict(os.environ))


def one_line_error(res: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The command failed with `code` and one line on stderr holding every needle."""
    assert res.returncode == code, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_infeasible_memory_budget_exits_3_before_any_work(tmp_path, micro_pair):
    res = bitfront_cmd("search", "pocket-ar-micro", "--trials", "4", *SMALL_SEARCH,
                       "--memory-budget", "1KiB", "--json", cwd=tmp_path)
    line = one_line_error(res, 3, "no plan fits in 1KiB", "the smallest possible is")
    assert "every layer at 2 bits" in line and res.stdout == ""
    db = tmp_path / "runs" / "search" / "pocket-ar-micro" / "study.db"
    assert optuna.get_all_study_names(f"sqlite:///{db}") == []  # refused before the study


def test_unreachable_storage_is_one_line_before_any_work(tmp_path, micro_pair):
    res = bitfront_cmd("search", "pocket-ar-micro", "--trials", "4", *SMALL_SEARCH,
                       "--storage", "postgresql://user:secret@127.0.0.1:9/db", cwd=tmp_path)
    line = one_line_error(res, 1, "cannot open the study storage", "127.0.0.1:9",
                          "Connection refused")
    assert "secret" not in line
    for storage in ("sqlite:////proc/no-such-dir/s.db", "/proc/no-such-dir/s.journal"):
        res = bitfront_cmd("search", "pocket-ar-micro", "--trials", "4", *SMALL_SEARCH,
                           "--storage", storage, cwd=tmp_path)
        one_line_error(res, 1, "cannot open the study storage", "/proc/no-such-dir")


def completed_trials(storage: str, name: str) -> int:
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return len(study.get_trials(states=(TrialState.COMPLETE,)))


def test_best_reads_a_killed_search_and_json_is_the_first_line(tmp_path, micro_pair):
    import time

    command = [sys.executable, "-m", "bitfront.cli", "search", "pocket-ar-micro",
               "--trials", "200", *SMALL_SEARCH, "--json"]
    worker = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    run = tmp_path / "runs" / "search" / "pocket-ar-micro"
    storage = f"sqlite:///{run / 'study.db'}"
    deadline = time.monotonic() + 300
    while worker.poll() is None and time.monotonic() < deadline:
        if (run / "study.json").exists() and completed_trials(storage, "pocket-ar-micro") >= 2:
            break
        time.sleep(1)
    worker.kill()
    worker.wait()
    assert (run / "study.json").exists()  # recorded when the search started
    res = bitfront_cmd("best", str(run), "--memory", "1GiB", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["found"]
    res = bitfront_cmd("export", str(run), "--trial", "0", "--format", "json", "--out",
                       str(tmp_path / "missing" / "plan.json"), cwd=tmp_path)
    one_line_error(res, 1, "missing is not an existing directory")
    # Resumed to a small target: stdout's first line is the JSON summary, nothing before.
    done = completed_trials(storage, "pocket-ar-micro")
    shell = " ".join([*command[:5], "--trials", str(done + 1), *SMALL_SEARCH, "--json",
                      "2>/dev/null", "|", "head -1", "|", sys.executable, "-m", "json.tool"])
    res = subprocess.run(shell, shell=True, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["trials"] == done + 1


def test_damaged_checkpoints_are_one_line_errors(tmp_path, micro_pair):
    import shutil

    for name, source in micro_pair.items():
        truncated, malformed = tmp_path / f"{name}-cut", tmp_path / f"{name}-json"
        shutil.copytree(source, truncated)
        shutil.copytree(source, malformed)
        weights = truncated / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        config = malformed / "config.json"
        config.write_text(config.read_text()[:-20])
        res = bitfront_cmd("generate", str(truncated), "def f():")
        one_line_error(res, 1, str(truncated), "incomplete metadata")
        res = bitfront_cmd("generate", str(malformed), "def f():")
        one_line_error(res, 1, str(config), "not valid JSON")


def test_eval_journal_with_a_cut_header_is_started_afresh(tmp_path, micro_pair):
    out = tmp_path / "he.json"
    journal = tmp_path / "he.json.partial.jsonl"
    journal.write_text('{"key": "3f2a9c')  # killed while writing its header
    res = bitfront_cmd("eval", "pocket-ar-micro", "--bench", "humaneval", "--limit", "2",
                       "--max-new-tokens", "16", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["tasks"] == 2


def test_bad_inputs_are_one_line_errors_and_bugs_exit_4(tmp_path, micro_pair):
    res = bitfront_cmd("quantize", "pocket-ar-micro", "--bits", "4", "--candidate-bits", "7")
    one_line_error(res, 1, "--candidate-bits")
    plan_path = tmp_path / "plan.json"
    res = bitfront_cmd("quantize", "pocket-ar-micro", "--bits", "4", "--group-size", "32",
                       "--calib-samples", "16", "--calib-seq-len", "64", "--out",
                       str(plan_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    plan = json.loads(plan_path.read_text())
    for key, value, needle in [("quantizer", {"group_size": "x"}, "meta.quantizer.group_size"),
                               ("quantizer", "4bit", "meta.quantizer must be a table"),
                               ("calibration", {"samples": -3}, "meta.calibration.samples")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**plan, "meta": {**plan["meta"], key: value}}))
        res = bitfront_cmd("eval", "pocket-ar-micro", "--bench", "humaneval", "--limit", "1",
                           "--plan", str(bad), cwd=tmp_path)
        one_line_error(res, 1, needle)
    # A bug (here: a verb that crashes) shows its traceback and exits 4, not 1.
    code = ("import sys, bitfront.cli as cli\n"
            "def crash(args):\n    raise RuntimeError('boom')\n"
            "cli.cmd_generate = crash\n"
            "sys.exit(cli.main(['generate', 'pocket-ar-micro', 'def f():']))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 4 and "Traceback" in res.stderr and "a bug in bitfront" in res.stderr


DAMAGE = ["", '{"key": "cut sho', "[1, 2]", '{"schema": 1}']


def test_damaged_caches_are_recomputed(tmp_path, micro_pair):
    import bitfront
    from bitfront.objectives.latency import Workload, measure_latency_table
    from bitfront.objectives.proxy import ProxyConfig
    from bitfront.objectives.sensitivity import SensitivityConfig
    from bitfront.quant.calibration import CalibrationConfig
    from bitfront.quant.candidates import QuantizerSettings
    from bitfront.space.layers import layer_space

    lm = bitfront.load_model("pocket-ar-micro", device="cpu", show_progress=False)
    setup = bitfront.Setup(quantizer=QuantizerSettings(group_size=32),
                           calibration=CalibrationConfig(samples=16, seq_len=64),
                           proxy=ProxyConfig(tasks=16),
                           sensitivity=SensitivityConfig(probes=1, batches=1))
    sens = bitfront.sensitivity(lm, setup, show_progress=False)
    cache = bitfront.build_candidates(lm, setup, show_progress=False).directory
    (path,) = cache.glob("sensitivity-*-p1-e*-s0-b1.json")
    space, workload = layer_space(lm), Workload(prompt_len=8, answer_len=4, backend="torch")
    table = measure_latency_table(lm, space, workload, bits=(2, 4), group_size=32, repeats=1,
                                  root=tmp_path, show_progress=False)
    (table_path,) = tmp_path.glob("*.json")
    for damage in DAMAGE:
        path.write_text(damage)
        assert bitfront.sensitivity(lm, setup, show_progress=False).rows == sens.rows
        table_path.write_text(damage)
        again = measure_latency_table(lm, space, workload, bits=(2, 4), group_size=32,
                                      repeats=1, root=tmp_path, show_progress=False)
        assert set(again.layers) == set(table.layers) and table_path.stat().st_size > 100


def test_damaged_study_stages_are_recomputed(tmp_path):
    from rich.console import Console

    from bitfront.studies.runner import ModelRun
    from bitfront.studies.spec import finished, load_spec

    spec = load_spec("tests/fixtures/micro-study.toml")
    run = ModelRun(spec, "ar", "pocket-ar-micro", tmp_path / spec.name / "ar",
                   console=Console(quiet=True), show_progress=False)
    assert run.stage("model", lambda: {"n": 1}) == {"n": 1}
    stored = run.dir / "model.json"
    (tmp_path / spec.name / "report.json").write_text("{}")
    for damage in DAMAGE:
        stored.write_text(damage)
        assert not finished(spec, tmp_path)
        assert run.stage("model", lambda: {"n": 2}) == {"n": 2}
        assert json.loads(stored.read_text())["result"] == {"n": 2}


def test_latency_table_is_shared_by_copies_of_a_model(tmp_path, micro_pair):
    import shutil

    from bitfront.models import load_local
    from bitfront.objectives.latency import Workload, measure_latency_table
    from bitfront.space.layers import layer_space

    copy = shutil.copytree(micro_pair["pocket-ar-micro"], tmp_path / "elsewhere" / "ar")
    workload = Workload(prompt_len=8, answer_len=4)
    for path in (micro_pair["pocket-ar-micro"], copy):
        lm = load_local(path, device="cpu")
        measure_latency_table(lm, layer_space(lm), workload, bits=(2, 4), group_size=32,
                              repeats=1, root=tmp_path / "tables", show_progress=False)
    assert len(list((tmp_path / "tables").glob("*.json"))) == 1


MICRO_SPEC = os.path.join(os.path.dirname(__file__), "fixtures", "micro-study.toml")


def test_unknown_second_model_of_a_study_fails_before_any_stage(tmp_path, micro_pair):
    with open(MICRO_SPEC) as fh:
        text = fh.read()
    spec = tmp_path / "two.toml"
    spec.write_text(text.replace('ar = "pocket-ar-micro"', 'ar = "no-such-model"'))
    res = bitfront_cmd("study", "run", str(spec), "--runs", str(tmp_path / "runs"))
    one_line_error(res, 1, "unknown model 'no-such-model'")
    assert not list((tmp_path / "runs").rglob("model.json"))  # the first model did not run


@pytest.fixture(scope="module")
def planner(micro_pair):
    from bitfront.models import load_local
    from bitfront.objectives.latency import Workload
    from bitfront.objectives.proxy import ProxyConfig
    from bitfront.objectives.sensitivity import SensitivityConfig
    from bitfront.planner.pipeline import Setup, build_search
    from bitfront.planner.study import SearchConfig
    from bitfront.quant.calibration import CalibrationConfig
    from bitfront.quant.candidates import QuantizerSettings

    setup = Setup(quantizer=QuantizerSettings(group_size=32),
                  calibration=CalibrationConfig(samples=16, seq_len=64),
                  proxy=ProxyConfig(tasks=16), latency=Workload(prompt_len=16, answer_len=8),
                  sensitivity=SensitivityConfig(probes=1, batches=1))
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    return build_search(lm, SearchConfig(population=8, ilp_budgets=1), setup,
                        show_progress=False)


def test_worker_with_another_population_refuses_to_join(planner, tmp_path):
    from bitfront.planner.study import PlanSearch, StudyMismatchError

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    planner.open(storage, "s")
    other = PlanSearch(planner.lm, planner.candidates, planner.proxy, planner.table,
                       planner.sensitivity, planner.config.replace(population=12))
    with pytest.raises(StudyMismatchError, match="differs in: search"):
        other.open(storage, "s")


def test_survivors_run_a_dead_workers_seed(planner, tmp_path, monkeypatch):
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # Another worker takes the next waiting seed while this one searches, and dies with it.
    killer = ("import optuna, os, signal, socket\n"
              f"s = optuna.load_study(study_name='s', storage={storage!r})\n"
              "t = s.ask()\n"
              "t.set_user_attr('worker', {'host': socket.gethostname(), 'pid': os.getpid()})\n"
              "print(t.number, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    taken = []
    evaluate = planner.evaluate

    def evaluate_after_the_death(plan):
        """The first trial of this worker waits until the other worker has died."""
        if not taken:
            res = subprocess.run([sys.executable, "-c", killer], capture_output=True,
                                 text=True)
            taken.append(int(res.stdout))
        return evaluate(plan)

    monkeypatch.setattr(planner, "evaluate", evaluate_after_the_death)
    study = planner.run(storage, "s", 12, show_progress=False)
    dead = study.trials[taken[0]]
    seeds = study.user_attrs["bitfront_seeded"]
    assert dead.state == TrialState.FAIL and dead.user_attrs["origin"] in seeds
    completed = [t.user_attrs["origin"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert all(completed.count(seed) == 1 for seed in seeds)
    # The search records that a seed ran out of order, and its summary says so.
    from bitfront.planner.front import SearchResult

    summary = SearchResult.of(study).summary()
    (requeued,) = summary["requeued_seeds"]
    assert requeued["origin"] == dead.user_attrs["origin"]
    assert summary["unfinished_trials"] == [dead.number]


@pytest.mark.slow  # two searches of 14 trials: about 2 minutes on 2 CPU cores
def test_killed_and_resumed_search_equals_an_uninterrupted_one(tmp_path, micro_pair):
    import signal
    import time

    from optuna.trial import TrialState

    def command(n: int) -> list[str]:
        return [sys.executable, "-m", "bitfront.cli", "search", "pocket-ar-micro", "--trials",
                str(n), *SMALL_SEARCH, "--json"]

    def trials(directory) -> list:
        storage = f"sqlite:///{directory / 'runs/search/pocket-ar-micro/study.db'}"
        study = optuna.load_study(study_name="pocket-ar-micro", storage=storage)
        return study.get_trials(states=(TrialState.COMPLETE,))

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    assert subprocess.run(command(14), cwd=whole, capture_output=True).returncode == 0
    worker = subprocess.Popen(command(14), cwd=killed, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    run = killed / "runs" / "search" / "pocket-ar-micro"
    while worker.poll() is None and not ((run / "study.json").exists() and completed_trials(
            f"sqlite:///{run / 'study.db'}", "pocket-ar-micro") >= 10):  # past generation 0
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert subprocess.run(command(14), cwd=killed, capture_output=True).returncode == 0
    a, b = trials(whole), trials(killed)
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.values for t in a] == [t.values for t in b]


@pytest.mark.slow  # two micro studies, one killed at every stage: about 4 minutes on 2 cores
def test_study_killed_at_every_stage_reports_as_an_uninterrupted_one(tmp_path, micro_pair):
    """kill -9 `bitfront study run` at the start of each stage of each model, and once in
    the middle of the search (past the seeds): the resumed study's front, knee, verified
    plans and exports equal those of a study that was never interrupted."""
    import signal
    import time
    from pathlib import Path

    from bitfront.studies.spec import STAGES, load_spec

    micro = Path(__file__).parent / "fixtures" / "micro-study.toml"
    spec = load_spec(micro)

    def command(root: Path) -> list[str]:
        return [sys.executable, "-m", "bitfront.cli", "study", "run", str(micro), "--runs",
                str(root)]

    def models(root: Path) -> dict:
        """Each model's front, knee, verified rows and exports, with every trial number
        replaced by its plan (a killed trial keeps its number, so later ones shift)."""
        report = json.loads((root / spec.name / "report.json").read_text())
        out = {}
        for label, m in report["models"].items():
            search = json.loads((root / spec.name / label / "search.json").read_text())
            bits = {p["trial"]: p["bits"] for p in search["result"]["points"]}

            def plan(number: int, bits=bits) -> str:
                return json.dumps(bits[number], sort_keys=True)

            exports = []
            for path in map(Path, m["exports"]):
                number = int(re.match(r"trial-(\d+)\.", path.name)[1])
                text = re.sub(rf'trial-{number}\b|"trial": {number}\b', "trial",
                              path.read_text())
                exports.append((plan(number), path.name.split(".", 1)[1], text))
            out[label] = {"front": [plan(n) for n in m["front"]], "knee": plan(m["knee"]),
                          "verified": [{**{k: v for k, v in row.items() if k != "trial"},
                                        "plan": plan(row["trial"])} for row in m["verified"]],
                          "fidelity": m["fidelity"], "hypervolume": m["hypervolume"],
                          "exports": exports}
        return out

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert subprocess.run(command(whole), capture_output=True).returncode == 0
    stages = [(label, stage) for label in spec.models for stage in STAGES]
    run = killed / spec.name

    def searched(label: str) -> int:
        if not (run / label / "search.json").exists() and (run / label / "search.db").exists():
            try:  # the worker may be creating the schema right now
                storage = f"sqlite:///{run / label / 'search.db'}"
                names = optuna.get_all_study_names(storage)
                return completed_trials(storage, names[0]) if names else 0
            except Exception:
                return 0
        return 0

    # Each kill point: the moment it is reached (the stage before has written its file).
    points = [(f"{label} {stage}", lambda p=prev: (run / p[0] / f"{p[1]}.json").exists())
              for prev, (label, stage) in zip(stages, stages[1:], strict=False)]
    first = next(iter(spec.models))
    points.insert(3, (f"{first} search, trial 10", lambda: searched(first) >= 10))
    killed_at = []
    for name, reached in points:
        worker = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        while worker.poll() is None and not reached():
            time.sleep(0.02)
        assert worker.poll() is None, f"the study finished before {name}"
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        killed_at.append(name)
    assert subprocess.run(command(killed), capture_output=True).returncode == 0
    assert len(killed_at) == len(stages)
    assert models(killed) == models(whole)
    # The killed search trial is left unfinished, and the report says so.
    report = (run / "report.md").read_text()
    assert f"The {first} search was resumed: trial(s) " in report
