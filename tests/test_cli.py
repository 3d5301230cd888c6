"""The `bitfront` command as a user runs it: real subprocesses."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import bitfront


def bitfront_cmd(*args: str, env: dict | None = None, timeout: int = 600, cwd=None):
    return subprocess.run([sys.executable, "-m", "bitfront.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          cwd=cwd)


def test_help_and_version():
    res = bitfront_cmd("--help")
    assert res.returncode == 0 and "pocket" in res.stdout and "generate" in res.stdout
    res = bitfront_cmd("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"bitfront {bitfront.__version__}"


def test_bad_model_names_give_one_line_errors(tmp_path):
    for name, expect in [("no-such-model", "unknown model"), (str(tmp_path), "no config.json")]:
        res = bitfront_cmd("generate", name, "def f():")
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0]


def test_unreadable_sizes_and_durations_give_one_line_usage_errors():
    for flag, value, expect in [("--memory-budget", "12XB", "as a size"),
                                ("--latency-budget", "5parsecs", "as a duration")]:
        res = bitfront_cmd("search", "pocket-ar-micro", flag, value)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert f"argument {flag}: cannot read {value!r} {expect}" in lines[0]


def test_pocket_train_micro_then_generate_from_both(micro_training, micro_pair):
    """The session's micro pair is trained by `bitfront pocket train --size micro`
    (conftest.py): what it printed, then generation from both, then a second train is a no-op."""
    cache = Path(os.environ["BITFRONT_CACHE"])
    if "already trained" not in micro_training.stdout:  # else a developer's test cache
        assert "MBPP top-1" in micro_training.stdout
        assert (f"pocket-diffusion-micro: {cache / 'pocket' / 'pocket-diffusion-micro'}"
                in micro_training.stdout)
    for name in ("pocket-ar-micro", "pocket-diffusion-micro"):
        assert micro_pair[name] == cache / "pocket" / name
        assert (micro_pair[name] / "model.safetensors").exists()
        res = bitfront_cmd("generate", name, "def add(a, b):", "--max-new-tokens", "24")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip(), f"{name} printed nothing"
    res = bitfront_cmd("pocket", "train", "--size", "micro")
    assert res.returncode == 0 and "already trained" in res.stdout


def test_quantize_and_sense_on_a_micro_model(tmp_path, micro_pair):
    res = bitfront_cmd("quantize", "pocket-ar-micro", "--bits", "4", "--out",
                       str(tmp_path / "plan.json"), "--calib-samples", "8",
                       "--calib-seq-len", "64")
    assert res.returncode == 0, res.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["schema"] == 1 and {s["bits"] for s in plan["layers"].values()} == {4}
    assert plan["meta"]["quantizer"]["bits"] == [2, 3, 4, 8]
    res = bitfront_cmd("sense", "pocket-ar-micro", "--out", str(tmp_path / "sense"),
                       "--calib-samples", "8", "--calib-seq-len", "64", "--probes", "2",
                       "--trace-batches", "1")
    assert res.returncode == 0, res.stderr
    assert "HAWQ sensitivity" in res.stdout and "down_proj" in res.stdout
    assert "estimate: disk" in res.stderr and "sensitivity" in res.stderr
    rows = (tmp_path / "sense" / "sensitivity.csv").read_text().splitlines()
    assert rows[0].startswith("layer,kind,block,bits,trace") and len(rows) == 1 + 14 * 4
    res = bitfront_cmd("quantize", "pocket-ar-micro", "--bits", "5")
    assert res.returncode == 1 and "not among the candidate bits" in res.stderr
    res = bitfront_cmd("sense", "pocket-ar-micro", "--out", str(tmp_path / "plan.json" / "x"))
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: cannot write to {tmp_path / 'plan.json' / 'x'}: Not a directory"]


def test_eval_humaneval_end_to_end(tmp_path, micro_pair):
    out = tmp_path / "he.json"
    res = bitfront_cmd("eval", "pocket-ar-micro", "--bench", "humaneval", "--limit", "5",
                       "--max-new-tokens", "32", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "pass@1" in res.stdout
    report = json.loads(out.read_text())
    assert report["tasks"] == 5 and len(report["results"]) == 5


SMALL_SEARCH = ["--population", "8", "--ilp-budgets", "1", "--group-size", "32",
                "--calib-samples", "16", "--calib-seq-len", "64", "--proxy-tasks", "16",
                "--prompt-len", "16", "--answer-len", "8"]


def test_search_best_and_export_for_batch_jobs(tmp_path, micro_pair):
    res = bitfront_cmd("search", "pocket-ar-micro", "--trials", "10", *SMALL_SEARCH, "--json",
                       cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["trials"] == 10 and summary["front"] and 0 < summary["hypervolume"] <= 1
    run = tmp_path / "runs" / "search" / "pocket-ar-micro"
    assert json.loads((run / "study.json").read_text())["study_name"] == "pocket-ar-micro"
    smallest = min(row["memory_bytes"] for row in summary["front"])
    res = bitfront_cmd("best", str(run), "--memory", str(smallest + 1), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    best = json.loads(res.stdout)
    assert best["found"] and best["metrics"]["memory_bytes"] <= smallest + 1
    res = bitfront_cmd("best", "pocket-ar-micro", "--memory", "1KB", cwd=tmp_path)
    assert res.returncode == 3
    assert res.stdout.strip().startswith("no plan within budget; the smallest is")
    gguf = ["gguf"] if importlib.util.find_spec("llama_cpp") else []  # the llama extra
    for fmt in ("json", "gptqmodel", "llama-cpp", *gguf):
        out = tmp_path / f"export.{fmt}"
        res = bitfront_cmd("export", str(run), "--trial", str(best["trial"]), "--format", fmt,
                           "--out", str(out), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        if fmt == "gguf":  # micro rows (64, 192) take no k-quant: the fallbacks are printed
            record = json.loads(out.with_name(out.name + ".json").read_text())
            assert record["bytes"] == out.stat().st_size and record["fallbacks"]
            assert "plan tensors by type written: " in res.stdout
            assert "fallback q" in res.stdout and f"{record['bytes']} bytes" in res.stdout
            continue
        text = out.read_text()
        if fmt == "json":
            assert json.loads(text)["provenance"]["trial"] == best["trial"]
        elif fmt == "gptqmodel":
            assert "dynamic" in json.loads(text)
        else:
            assert text.startswith("^blk\\.0\\.attn_q\\.weight$=")  # a --tensor-type-file
    res = bitfront_cmd("export", str(run), "--trial", "999", cwd=tmp_path)
    assert res.returncode == 1 and "not a completed trial" in res.stderr
    # An --out outside an existing directory is refused before the answer is searched for.
    (tmp_path / "a-file").write_text("")
    for out in (tmp_path / "a-file" / "plan.json", tmp_path / "missing" / "plan.json"):
        res = bitfront_cmd("export", str(run), "--best-under", "1GB", "--format", "json",
                           "--out", str(out), cwd=tmp_path)
        assert res.returncode == 1 and "is not an existing directory" in res.stderr
        assert "refine" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
