"""The study runner at micro size: every stage, the report and its plots, resuming, compare,
and spec validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image
import pytest

from bitfront.runtimes.llama_cpp import llama_cpp_installed
from bitfront.studies.compare import compare_runs, load_front
from bitfront.studies.runner import run_study
from bitfront.studies.spec import STAGES, SpecError, finished, load_spec, parse_spec

MICRO = Path(__file__).parent / "fixtures" / "micro-study.toml"


@pytest.fixture(scope="module")
def micro_run(micro_pair, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    return root, run_study(load_spec(MICRO), root, show_progress=False)


def test_study_report_holds_every_part(micro_run):
    root, run_dir = micro_run
    spec = load_spec(MICRO)
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["models"]) == {"diffusion", "ar"}
    for label, model in report["models"].items():
        assert model["model"]["family"] == label
        assert [u["bits"] for u in model["uniform"]] == [16, 4, 2]
        for row in model["uniform"] + model["verified"]:
            assert set(row["pass@1"]) == {"pocket", "mbpp", "humaneval"}
            for bench, (low, high) in row["pass@1_interval"].items():
                assert low <= row["pass@1"][bench] <= high
            assert row["retention"] >= 0 and row["memory_bytes"] > 0
        assert model["uniform"][0]["retention"] == 1.0  # 16 bits: nothing lost
        assert 0 < model["hypervolume"] <= 1 and model["front"] and model["knee"] is not None
        assert 1 <= len(model["verified"]) <= spec.verify.front
        assert all(Path(p).exists() for p in model["exports"])
        gguf = [p for p in model["exports"] if p.endswith(".gguf")]
        assert len(gguf) == (len(model["verified"]) if label == "ar" and llama_cpp_installed()
                             else 0)  # llama.cpp has no diffusion architecture
        assert "kendall_tau" in model["fidelity"] and model["fidelity"]["bench"] == "pocket"
        assert model["fidelity"]["plans"] == 3 + len(model["verified"]) + 2  # uniform, front, mixed
        mixed = json.loads((run_dir / label / "mixed.json").read_text())["result"]
        assert [set(row["pass@1"]) for row in mixed] == [{"pocket"}] * 2  # the fidelity bench
        for row in model["uniform"]:
            assert row["retention_low"] <= row["retention"] <= row["retention_high"]
        # Mixed vs uniform at equal memory: the answer refined at each budget, never above it
        # and never worse (proxy) than the uniform plan that fits, with pass@1 on the table's
        # tasks of the first benchmark.
        assert [a["budget"] for a in model["answers"]] == report["budgets"]
        for answer in model["answers"]:
            rows = [answer["mixed"], *([answer["uniform"]] if "uniform" in answer else [])]
            assert all(r["memory_bytes"] <= answer["budget"] for r in rows)
            assert answer["mixed"]["retention"] >= rows[-1]["retention"]
            assert answer["refinement"]["evaluations"] <= spec.refine.evaluations
            for row in rows:
                assert set(row["pass@1"]) == {"pocket"}
                low, high = row["pass@1_interval"]["pocket"]
                assert low <= row["pass@1"]["pocket"] <= high
    assert report["findings"] and report["findings"][0].startswith("At ≤ ")
    assert "diffusion model" in report["findings"][0] and "autoregressive" in report["findings"][0]
    comparison = report["comparison"]
    assert comparison["retention_gap_memory"]["mean_gap"] is not None
    expected = {"fronts_memory", "fronts_latency", "fronts_bits", "uniform", "sensitivity",
                "allocation"}
    assert set(report["plots"]) == expected
    for name in report["plots"].values():
        image = matplotlib.image.imread(run_dir / name)
        assert image.shape[0] > 200 and image.std() > 0.01, name  # a real, non-blank figure
    text = (run_dir / "report.md").read_text()
    for section in ("## Finding", "## Uniform bitwidths", "## Fronts", "## Verified front",
                    "## Mixed vs uniform at equal memory",
                    "## Proxy fidelity", "## Frontier comparison", "HAWQ sensitivity",
                    "Bit allocation", "## Exports"):
        assert section in text
    # The AR model is timed by llama.cpp where it is installed; diffusion keeps torch.
    ar = "llama.cpp" if llama_cpp_installed() else "torch"
    assert [report["models"][m]["latency_backend"] for m in ("ar", "diffusion")] == [ar, "torch"]
    assert "latency backend" in text and "diffusion: bitfront's torch kernels" in text


def test_finished_study_is_not_recomputed(micro_run):
    root, run_dir = micro_run
    spec = load_spec(MICRO)
    assert finished(spec, root)
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/*.json")}
    assert len(stamps) == len(spec.models) * (len(STAGES) + 1)  # and study.json
    run_study(spec, root, show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/*.json")} == stamps


def test_edited_spec_recomputes_only_what_depends_on_the_edit(micro_run, tmp_path):
    from dataclasses import replace

    import optuna

    from bitfront.planner.study import searched

    _, run_dir = micro_run
    root = tmp_path / "runs"
    shutil.copytree(run_dir, root / run_dir.name)
    spec = load_spec(MICRO)
    edited = replace(spec, search=replace(spec.search, trials=spec.search.trials + 2),
                     evaluation=replace(spec.evaluation, max_new_tokens=12))
    copy = root / run_dir.name
    stamps = {p.relative_to(copy): p.stat().st_mtime_ns for p in copy.glob("*/*.json")}
    run_study(edited, root, show_progress=False)
    assert finished(edited, root)
    for label in spec.models:
        for stage in STAGES:
            path = Path(label) / f"{stage}.json"
            changed = (copy / path).stat().st_mtime_ns != stamps[path]
            assert changed == (stage not in ("model", "sensitivity")), path
        search = json.loads((copy / label / "search.json").read_text())["result"]
        study = optuna.load_study(study_name=search["study"], storage=search["storage"])
        assert searched(study) == edited.search.trials  # the same study, continued
        assert any("refinement" in t.user_attrs for t in study.trials)  # answers joined it


def test_compare_two_runs(micro_run):
    _, run_dir = micro_run
    a, b = load_front(run_dir / "diffusion"), load_front(run_dir / "ar")
    result = compare_runs(a, b, [200_000])
    assert result["runs"] == ["diffusion", "ar"]
    for label in ("diffusion", "ar"):
        assert 0 < result[label]["hypervolume"] <= 1
        assert result[label]["knee"]["memory_bytes"] > 0
        assert set(result[label]["best_at"]) == {"200000"}
    gap = result["retention_gap_memory"]
    assert gap["range"][0] < gap["range"][1] and gap["mean_gap"] is not None


def test_retention_gap_of_known_staircases():
    from bitfront.studies.compare import RunFront, retention_gap

    def run(label, pts):
        return RunFront(label=label, family=None, objectives=["accuracy", "memory"],
                        accuracy_key="retention", reference={"memory": 400},
                        points=[{"trial": i, "origin": "", "feasible": True,
                                 "memory_bytes": m, "retention": r, "logprob_retention": r,
                                 "top1": r, "logprob": -1.0, "avg_bits": 4.0,
                                 "nominal_bits": 4.0} for i, (m, r) in enumerate(pts)])

    a = run("a", [(100, 0.9), (200, 1.0), (300, 0.95)])
    b = run("b", [(150, 0.8), (300, 0.9)])
    gap = retention_gap(a, b)
    # Common range [150, 300]: a is 0.9 then 1.0 (from 200), b is 0.8 then 0.9 (at 300).
    assert gap["range"] == [150.0, 300.0]
    expected = (50 * 0.1 + 100 * 0.2) / 150
    assert gap["mean_gap"] == pytest.approx(expected, abs=0.01)


def test_bad_specs_name_the_key(tmp_path):
    good = {"name": "x", "models": {"ar": "pocket-ar-micro"}}
    assert parse_spec(good).search.trials == 60
    cases = [({"search": {"trails": 3}}, "unknown key search.trails"),
             ({"search": {"trials": "many"}}, "search.trials should be int"),
             ({"search": {"sampler": "random"}}, "search.sampler must be"),
             ({"quantizer": {"bits": [5]}}, "quantizer.bits must be"),
             ({"quantizer": {"group_size": 0}}, "quantizer.group_size must be"),
             ({"verify": {"benches": ["apps"]}}, "verify.benches must be"),
             ({"evaluation": {"limit": -5}}, "evaluation.limit must be a positive number"),
             ({"evaluation": {"diffusion": {"alg": "x"}}}, "evaluation.diffusion.alg must be"),
             ({"report": {"budgets": ["3 MB-ish"]}}, "report.budgets: cannot read"),
             ({"search": {"memory_budget": "lots"}}, "search.memory_budget: cannot read"),
             ({"models": {"ar": 3}}, "models.ar should be str"),
             ({"colour": "blue"}, "unknown key colour")]
    for extra, message in cases:
        with pytest.raises(SpecError, match=message):
            parse_spec({**good, **extra}, "spec.toml")
    with pytest.raises(SpecError, match="models must be"):
        parse_spec({"name": "x", "models": {}})
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[models]\nar = "pocket-ar"\n[search]\ntrails = 3\n')
    from test_cli import bitfront_cmd

    res = bitfront_cmd("study", "run", str(bad), cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip() == (f"error: {bad}: unknown key search.trails (known: "
                                  "accuracy, cheap_sensitivity, choices, grouping, ilp_budgets, "
                                  "latency_budget, memory_budget, objectives, population, "
                                  "sampler, seed, seed_budgets, trials)")
    for name in ("pocket", "coda-vs-qwen3"):
        assert load_spec(name).name == name  # the bundled specs are valid


def test_a_retention_inside_the_noise_is_no_measurable_loss():
    from bitfront.studies.report import retention_text

    assert retention_text({"retention": 1.02, "retention_low": 0.99, "retention_high": 1.05}) \
        == "no measurable loss (102.0%, 95% CI 99.0%–105.0%)"
    assert retention_text({"retention": 0.95, "retention_low": 0.93, "retention_high": 0.97}) \
        == "95.0% (95% CI 93.0%–97.0%)"
    assert retention_text({"retention": 0.9}) == "90.0%"  # no interval recorded


def test_best_on_a_study_run_is_its_recorded_answer(micro_run, capsys):
    """`bitfront best runs/STUDY/LABEL --memory B` at a report budget: the answer the runner
    refined there, found without work; an unknown study name lists what the storage holds."""
    from bitfront.cli import main

    _, run_dir = micro_run
    report = json.loads((run_dir / "report.json").read_text())
    budget = report["budgets"][0]
    assert main(["best", str(run_dir / "ar"), "--memory", str(budget), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    answer = report["models"]["ar"]["answers"][0]
    assert out["found"] and out["answer"]["how"] == "recorded"
    assert out["trial"] == answer["mixed"]["trial"]
    storage = f"sqlite:///{(run_dir / 'ar' / 'search.db').resolve()}"
    assert main(["best", "no-such-study", "--storage", storage, "--memory", "1MiB"]) == 1
    assert "it holds micro-ar-" in capsys.readouterr().err
