"""Benchmark: `bitfront eval` with answers written by llama.cpp against the same model in torch.

`--model` is a GGUF file (torch runs it dequantized to float32, llama.cpp in the file's own
types) or a bitfront model name (exported first to a 16-bit GGUF by `--format gguf`'s writer:
a plan of 16 bits everywhere, so every matrix f16). Both runtimes go through the harness's
`evaluate` with the same tasks and settings (greedy); each model's `generate` is timed. Reports
per runtime pass@1 with its 95% interval, generation seconds and answer tokens per second (the
answers as cut at their stops, counted by that runtime's own tokenizer; torch generates
`--batch-size` prompts together, llama.cpp one at a time; both on `--threads`), and between them:
equal answers, tasks whose verdict differs; and the 1-minute load average before and after
(times on a shared machine depend on it). Prints JSON.

    python benchmarks/bench_llama_eval.py --model pocket-ar --bench pocket --limit 40
    python benchmarks/bench_llama_eval.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
        --bench humaneval --limit 16 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from results_io import emit

from bitfront.evaluators.harness import EvalConfig, evaluate
from bitfront.exports.gguf import export_gguf
from bitfront.models import load_model
from bitfront.runtimes.llama_lm import LlamaLM
from bitfront.space.layers import layer_space
from bitfront.space.plan import BitPlan


class Timed:
    """A model whose `generate` calls are timed and whose answers are kept."""

    def __init__(self, lm):
        self.lm, self.name, self.family, self.use_chat = lm, lm.name, lm.family, lm.use_chat
        self.seconds, self.answers = 0.0, []

    def fingerprint(self) -> str:
        return self.lm.fingerprint()

    def generate(self, prompts, options=None, **overrides):
        start = time.perf_counter()
        answers = self.lm.generate(prompts, options, **overrides)
        self.seconds += time.perf_counter() - start
        self.answers += answers
        return answers


def run(timed: Timed, config: EvalConfig, out: Path) -> dict:
    report = evaluate(timed, config, out, show_progress=False)
    tokens = sum(len(timed.lm.encode(a)) for a in timed.answers)
    return {"model": report["model"], "pass@1": report["pass@1"],
            "pass@1_interval": report["pass@1_interval"], "outcomes": report["outcomes"],
            "generate_s": round(timed.seconds, 2), "answer_tokens": tokens,
            "tokens_per_s": round(tokens / timed.seconds, 1),
            "results": {r["task_id"]: r for r in report["results"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pocket-ar")
    ap.add_argument("--bench", default="pocket")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="CPU threads of both runtimes (default: torch's)")
    ap.add_argument("--out", help="file name under benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = EvalConfig(bench=args.bench, limit=args.limit, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size)
    load = [round(os.getloadavg()[0], 2)]
    lm = load_model(args.model, device="cpu", dtype="float32", show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(args.model)
        if gguf.suffix != ".gguf":
            plan = BitPlan.uniform(layer_space(lm), lm.fingerprint(), 16)
            gguf = export_gguf(lm, plan, Path(tmp) / f"{args.model}-f16.gguf",
                               importance=False).path
        sides = {"torch": run(Timed(lm), config, Path(tmp) / "torch.json"),
                 "llama.cpp": run(Timed(LlamaLM(gguf, threads=args.threads)), config,
                                  Path(tmp) / "llama.json")}
    a, b = (sides[k].pop("results") for k in ("torch", "llama.cpp"))
    same = sum(a[t]["samples"][0]["completion"] == b[t]["samples"][0]["completion"] for t in a)
    differ = sorted(t for t in a if (a[t]["passed"] > 0) != (b[t]["passed"] > 0))
    result = {"model": args.model, "gguf": gguf.name, "bench": args.bench, "tasks": len(a),
              "max_new_tokens": args.max_new_tokens, **sides, "same_answers": same,
              "verdicts_differ": differ, "threads": args.threads,
              "load_1min": [*load, round(os.getloadavg()[0], 2)],
              "python": platform.python_version()}
    emit(result, args.out)


if __name__ == "__main__":
    main()
