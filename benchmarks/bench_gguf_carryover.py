"""Benchmark: how much of a plan's pass@1 carries over when llama.cpp quantizes it.

A plan's allocation carries over to a GGUF (`export --format gguf`: one llama.cpp type per
layer, with its fallbacks), but not its weights: llama.cpp re-quantizes them with its own
formats (k-quants, q4_0/q5_0 for rows that are not a multiple of 256) and an importance matrix
from bitfront's calibration activations, where bitfront's torch runtime carries the plan's own
GPTQ weights. For an AR study (default `runs/pocket/ar`, which `make demo` writes): its uniform
plans at `--uniform` bits and its answers at `--budgets` (`bitfront.best_under`: searched at
each budget, recorded in the study), each evaluated on the whole split (a) as bitfront
quantizes it and (b) as the GGUF llama.cpp writes for it, with 95% intervals, and the paired
difference (b - a) over the same tasks with its interval. Prints JSON.

    python benchmarks/bench_gguf_carryover.py [--study runs/pocket/ar] [--bench pocket] \
        [--uniform 4,3] [--budgets 2.27MiB,2.36MiB] [--out gguf-carryover-pocket-ar-cpu.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from results_io import emit

import bitfront
from bitfront.evaluators.harness import EvalConfig
from bitfront.exports.gguf import export_gguf
from bitfront.planner.front import SearchResult
from bitfront.planner.study import locate_study
from bitfront.stats import bootstrap
from bitfront.units import format_bytes


def passed(report: dict) -> dict[str, float]:
    """task id -> pass@1 of that task (the share of its samples that passed)."""
    return {r["task_id"]: r["passed"] / len(r["samples"]) for r in report["results"]}


def side(report: dict) -> dict:
    return {"pass@1": report["pass@1"], "pass@1_interval": report["pass@1_interval"],
            "outcomes": report["outcomes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="runs/pocket/ar", help="an AR study (run directory)")
    ap.add_argument("--bench", default="pocket")
    ap.add_argument("--split", default="test")
    ap.add_argument("--uniform", default="4,3", help="bitwidths of the uniform plans")
    ap.add_argument("--budgets", default="2.27MiB,2.36MiB",
                    help="memory budgets whose answers are the mixed plans")
    ap.add_argument("--out", help="also write the JSON to this file under benchmarks/results")
    args = ap.parse_args()
    result = SearchResult.of(*locate_study(args.study))
    lm = bitfront.load_model(result.config["model_name"], device="cpu", show_progress=False)
    by_origin = {p.origin: p for p in result.points}
    plans = []
    for bits in args.uniform.split(","):
        point = by_origin.get(f"uniform-{bits}")
        if point is None:
            raise SystemExit(f"the study holds no uniform-{bits} plan")
        plans.append((f"uniform-{bits}", point))
    for budget in args.budgets.split(","):
        answer = bitfront.best_under(result, memory=budget, lm=lm, show_progress=False)
        plans.append((f"best under {budget}", answer.point))
    config = EvalConfig(bench=args.bench, split=args.split)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, point in plans:
            plan = result.plan(point)
            torch_report = bitfront.evaluate(lm, config, plan=plan,
                                             out=Path(tmp) / f"{point.number}-torch.json",
                                             show_progress=False)
            gguf = Path(tmp) / f"{point.number}.gguf"
            export = export_gguf(lm, plan, gguf)
            llama_report = bitfront.evaluate(gguf, config, runtime="llama.cpp",
                                             out=Path(tmp) / f"{point.number}-llama.json",
                                             show_progress=False)
            ours, theirs = passed(torch_report), passed(llama_report)
            tasks = sorted(ours)
            diff = bootstrap(lambda a, b, axis=-1: np.mean(b - a, axis=axis),
                             [ours[t] for t in tasks], [theirs[t] for t in tasks],
                             vectorized=True)
            rows.append({
                "plan": label, "trial": point.number, "origin": point.origin,
                "avg_bits": point.metrics.avg_bits,
                "memory": format_bytes(point.metrics.memory_bytes),
                "proxy_retention": point.metrics.retention,
                "gguf_bytes": export.bytes, "gguf_predicted_bytes": export.predicted_bytes,
                "gguf_types": dict(sorted(Counter(export.types.values()).items())),
                "bitfront_gptq": side(torch_report), "llama_cpp_gguf": side(llama_report),
                "difference": diff.to_dict(),
                "same_verdict": sum(ours[t] == theirs[t] for t in tasks)})
    out = {"benchmark": "pass@1 carried over from bitfront's GPTQ plan to llama.cpp's GGUF",
           "study": args.study, "model": lm.name, "bench": args.bench, "split": args.split,
           "tasks": len(tasks), "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "plans": rows}
    emit(out, args.out)


if __name__ == "__main__":
    main()
