"""Benchmark: sandbox throughput on the 500 MBPP test references (2 workers; each program is a
bubblewrap jail plus a judge process), and the proxy's scoring speed against a plain forward
pass over the same token batches. Prints JSON.

    python benchmarks/bench_evaluators.py [--models pocket-ar,pocket-diffusion]
    python benchmarks/bench_evaluators.py --models ""    # the sandbox only
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bitfront.evaluators.harness import bench_tasks, task_program
from bitfront.evaluators.sandbox import run_programs
from bitfront.models import load_model
from bitfront.models.base import batches, pad_batch
from bitfront.models.diffusion import SCORE_MASK_RATIOS
from bitfront.objectives.proxy import AccuracyProxy, ProxyConfig


def sandbox_throughput(workers: int) -> dict:
    tasks = bench_tasks("mbpp", style="plain")
    programs = [task_program(t, t.reference) for t in tasks]
    start = time.perf_counter()
    outcomes = run_programs(programs, workers=workers)
    seconds = time.perf_counter() - start
    return {"programs": len(programs), "workers": workers, "seconds": round(seconds, 2),
            "programs_per_s": round(len(programs) / seconds, 1),
            "passed": sum(o.passed for o in outcomes),
            "isolation": outcomes[0].isolation}


@torch.no_grad()
def plain_forward_seconds(lm, proxy: AccuracyProxy) -> float:
    """lm.logits over exactly the padded batches the proxy's scoring runs."""
    rows = [c + t for c, t in zip(proxy.contexts, proxy.targets, strict=True)]
    if lm.family == "diffusion":
        rows = [r for r in rows for _ in SCORE_MASK_RATIOS]
    start = time.perf_counter()
    for idx in batches(len(rows), proxy.config.batch_size, [len(r) for r in rows]):
        ids, mask = pad_batch([rows[i] for i in idx], lm.pad_token_id, side="right")
        lm.logits(ids, mask)
    return time.perf_counter() - start


def proxy_speed(name: str, repeats: int) -> dict:
    lm = load_model(name, device="cpu", show_progress=False)
    proxy = AccuracyProxy(lm, ProxyConfig())
    scored = min(_timed(proxy) for _ in range(repeats))
    plain = min(plain_forward_seconds(lm, proxy) for _ in range(repeats))
    tokens = proxy.tokens() * (len(SCORE_MASK_RATIOS) if lm.family == "diffusion" else 1)
    return {"model": name, "family": lm.family, "tasks": len(proxy.tasks),
            "tokens_forwarded": tokens, "proxy_s": round(scored, 4),
            "plain_forward_s": round(plain, 4),
            "proxy_tokens_per_s": round(tokens / scored),
            "plain_tokens_per_s": round(tokens / plain),
            "overhead": round(scored / plain, 3)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="pocket-ar,pocket-diffusion")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps({
        "benchmark": "sandbox throughput and proxy scoring speed",
        "threads": torch.get_num_threads(),
        "targets": {"proxy_overhead": 1.5},
        "sandbox": sandbox_throughput(args.workers),
        "proxy": [proxy_speed(m, args.repeats) for m in args.models.split(",") if m],
    }, indent=2))


if __name__ == "__main__":
    main()
