"""Benchmark: what a full run costs at the real 1.7B shapes, on this machine.

Builds Qwen3-1.7B and CoDA-1.7B from their real configs in shared/data/hf (hidden 2048,
16 heads / 8 KV heads, head_dim 128, intermediate 6144, vocabulary 151936, real tokenizer)
with 2 decoder blocks (and 1, to separate the fixed cost) and random weights, saves them in
their real on-disk formats (transformers safetensors for Qwen3, CoDA's own layout), loads
them through `bitfront.models.load_local` in fp32 (the CPU default), and times each stage
in a fresh process per model: candidates (calibration pass, Hessians, GPTQ at 2/3/4/8, group
128, written to the cache), HAWQ traces, applying a plan that changes every layer, one proxy
forward, one search trial (`PlanSearch.run`, accuracy + memory). Each stage's seconds and
peak RSS (VmHWM, reset per stage), and the cache bytes are printed as JSON, with
per block = (2 blocks - 1 block), fixed = 1 block - per block, full = fixed + 28 x per block,
and the predicted full run: candidates + sensitivities + `--trials` trials.

    python benchmarks/bench_scale.py --out benchmarks/results/scale-cpu.json

Cheaper than the defaults, then scaled (linear): HAWQ traces use `--probes` probes on one
batch (default 4 probes x 2 batches), the proxy and the trial score `--proxy-tasks` MBPP tasks
(default 64). Calibration uses `--calibration-samples` windows of `--seq-len` tokens and is
not rescaled (default 64 x 256; only the Hessian pass grows with it, not GPTQ).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_WIDTHS = ("hidden_size", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size")
FULL_BLOCKS = 28
SHRINK = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16}


def _rss_peak() -> int:
    """Peak resident bytes since the last reset (Linux)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def measure(family: str, blocks: int, probes: int, samples: int, seq_len: int,
            tasks: int, shrink: dict | None = None) -> dict:
    """Every stage on one model (run in its own process)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models as tm
    import torch

    from bitfront.models import load_local
    from bitfront.objectives.proxy import AccuracyProxy, ProxyConfig
    from bitfront.objectives.sensitivity import SensitivityConfig, hawq_sensitivity
    from bitfront.planner.pipeline import Setup, build_search
    from bitfront.planner.study import SearchConfig
    from bitfront.quant.apply import PlanApplier
    from bitfront.quant.calibration import CalibrationConfig, calibration_set
    from bitfront.quant.candidates import build_candidates
    from bitfront.space.layers import layer_space
    from bitfront.space.plan import BitPlan

    torch.manual_seed(0)
    stages: dict[str, dict] = {}

    def stage(name, fn):
        _reset_peak()
        start = time.perf_counter()
        value = fn()
        stages[name] = {"s": round(time.perf_counter() - start, 2), "peak_rss": _rss_peak()}
        return value

    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{family}-{blocks}-"))
    real = tm.real_config(tm.QWEN3_REAL if family == "qwen3" else tm.CODA_REAL)
    widths = {k: real[k] for k in REAL_WIDTHS} | (shrink or {}) | {"num_hidden_layers": blocks}
    build = tm.tiny_qwen3 if family == "qwen3" else tm.tiny_coda
    os.environ["BITFRONT_CACHE"] = str(tmp / "cache")
    lm = stage("load", lambda: load_local(build(tmp / "model", **widths), device="cpu",
                                          dtype=torch.float32))
    setup = Setup(sensitivity=SensitivityConfig(probes=probes, batches=1),
                  calibration=CalibrationConfig(samples=samples, seq_len=seq_len),
                  proxy=ProxyConfig(tasks=tasks))
    space = layer_space(lm)
    calibration = calibration_set(lm, setup.calibration)
    candidates = stage("candidates", lambda: build_candidates(
        lm, space, calibration, settings=setup.quantizer, show_progress=False))
    cache = sum(f.stat().st_size for f in candidates.directory.glob("*.safetensors"))
    stage("hawq_traces", lambda: hawq_sensitivity(lm, candidates, calibration,
                                                  setup.sensitivity, show_progress=False))
    rng = random.Random(0)
    plan = BitPlan.from_bits(lm.fingerprint(), {n: rng.choice([2, 3, 4, 8])
                                               for n in space.names()}, group_size=128)
    applier = PlanApplier(lm, candidates)
    stage("plan_apply", lambda: applier.apply(plan))
    proxy = AccuracyProxy(lm, setup.proxy)
    stage("proxy_forward", proxy)
    applier.restore()
    search = build_search(lm, SearchConfig(objectives=("accuracy", "memory"), trials=1,
                                           ilp_budgets=0), setup, show_progress=False)
    stage("search_trial", lambda: search.run("memory", "scale", 1, show_progress=False))
    shutil.rmtree(tmp, ignore_errors=True)
    return {"family": family, "blocks": blocks, "stages": stages, "cache_bytes": cache,
            "quantizable_weight_bytes": 4 * sum(layer.numel for layer in space.layers),
            "proxy_tokens": proxy.tokens(), "calibration": {"samples": samples, "seq_len": seq_len},
            "proxy_tasks": tasks,
            "config": widths}


def extrapolate(runs: dict[int, dict], probes: int, trials: int) -> dict:
    """Per block = (2 blocks - 1 block); fixed = 1 block - per block; full = fixed + 28 per
    block. HAWQ traces are scaled to the default probes x batches, the proxy forward and the
    trial to the default 64 proxy tasks. Candidates are not rescaled: their calibration pass
    grows with the calibration windows, GPTQ does not (see `calibration` in the runs)."""
    two = runs[max(runs)]
    one = runs.get(1)
    tasks = two["proxy_tasks"]
    scale = {"hawq_traces": (4 * 2) / probes, "proxy_forward": 64 / tasks,
             "search_trial": 64 / tasks}
    full, per_block, fixed = {}, {}, {}
    for name in two["stages"]:
        b = two["stages"][name]["s"]
        if one is not None:
            a = one["stages"][name]["s"]
            per_block[name] = round(max(b - a, 0.0), 2)
            fixed[name] = round(max(a - per_block[name], 0.0), 2)
        else:  # no 1-block run: everything counted as per block (an upper bound)
            per_block[name], fixed[name] = round(b / max(runs), 2), 0.0
        full[name] = round((fixed[name] + FULL_BLOCKS * per_block[name]) * scale.get(name, 1),
                           1)
    if one is not None:
        cache_per_block = two["cache_bytes"] - one["cache_bytes"]
        cache_full = one["cache_bytes"] + (FULL_BLOCKS - 1) * cache_per_block
        weights_per_block = two["quantizable_weight_bytes"] - one["quantizable_weight_bytes"]
    else:
        cache_per_block = two["cache_bytes"] // max(runs)
        cache_full = FULL_BLOCKS * cache_per_block
        weights_per_block = two["quantizable_weight_bytes"] // max(runs)
    peaks = {name: st["peak_rss"] for name, st in two["stages"].items()}
    seconds = full["candidates"] + full["hawq_traces"] + trials * full["search_trial"]
    return {"per_block_s": per_block, "fixed_s": fixed, "scale_to_defaults": scale,
            "full_model_s": full, "peak_rss_bytes": peaks,
            "cache_bytes_per_block": cache_per_block, "cache_bytes_full": cache_full,
            "cache_ratio": round(cache_per_block / max(weights_per_block, 1), 3),
            "predicted_full_run": {"candidates_s": full["candidates"],
                                   "sensitivities_s": full["hawq_traces"],
                                   "trials": trials,
                                   "trials_s": round(trials * full["search_trial"], 1),
                                   "total_s": round(seconds, 1),
                                   "total_hours": round(seconds / 3600, 2)}}


def run_one(family: str, blocks: int, args) -> dict:
    cmd = [sys.executable, __file__, "--one", family, str(blocks), "--probes", str(args.probes),
           "--calibration-samples", str(args.calibration_samples), "--seq-len",
           str(args.seq_len), "--proxy-tasks", str(args.proxy_tasks),
           *(["--shrink"] if args.shrink else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{family} with {blocks} blocks failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="qwen3,coda")
    parser.add_argument("--blocks", type=int, default=2,
                        help="decoder blocks of the measured model (also run with 1 block to "
                             "separate the fixed cost, unless --no-one-block)")
    parser.add_argument("--no-one-block", action="store_true")
    parser.add_argument("--probes", type=int, default=1,
                        help="Hutchinson probes timed (on 1 batch; scaled to 4 x 2)")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "BLOCKS"), help=argparse.SUPPRESS)
    parser.add_argument("--calibration-samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--proxy-tasks", type=int, default=8,
                        help="MBPP tasks the proxy scores (scaled to the default 64)")
    parser.add_argument("--shrink", action="store_true",
                        help="tiny widths (a smoke test, not a measurement)")
    parser.add_argument("--runs", nargs="+", type=Path,
                        help="assemble from saved --one outputs instead of running")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.probes,
                                 args.calibration_samples, args.seq_len, args.proxy_tasks,
                                 SHRINK if args.shrink else None)))
        return
    measured: dict[str, dict[int, dict]] = {}
    if args.runs:
        for path in args.runs:
            run = json.loads(path.read_text().strip().splitlines()[-1])
            measured.setdefault(run["family"], {})[run["blocks"]] = run
    else:
        counts = [args.blocks] if args.no_one_block or args.blocks == 1 else [1, args.blocks]
        for family in args.models.split(","):
            measured[family] = {b: run_one(family, b, args) for b in counts}
    results = {family: {"runs": list(runs.values()),
                        **extrapolate(runs, args.probes, args.trials)}
               for family, runs in measured.items()}
    import torch

    report = {"benchmark": "scale at the real 1.7B shapes", "device": "cpu",
              "threads": torch.get_num_threads(), "cpu": platform.processor(),
              "machine": f"{os.cpu_count()} cores", "torch": torch.__version__,
              "dtype": "float32", "full_blocks": FULL_BLOCKS, "results": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
