"""Benchmark: which proxy ranks plans *at one budget* like pass@1 does.

`bitfront fidelity` ranks plans spread from 2 to 16 bits, where any proxy tells 2 bits from 16;
a budget answer chooses among plans of nearly the same memory. For one model this runs the
default search, refines it at the budget, takes up to `--plans` of the plans the study holds
within `--band` below the budget (spread over the study's accuracy), and reports each proxy's
Kendall τ and Spearman ρ against test pass@1 on them (95% bootstrap intervals over the plans).
With `--compare`, it also refines a fresh search that optimises each listed proxy and reports
the pass@1 of each answer. Prints JSON; `--out` also writes it.

    python benchmarks/bench_proxy_at_budget.py --model pocket-ar --budget 2.27MiB \
        --compare top1,kl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bitfront.evaluators.harness import evaluate
from bitfront.models import load_model
from bitfront.objectives.fidelity import measure_fidelity, plan_model_key
from bitfront.planner.front import SearchResult
from bitfront.planner.pipeline import build_search
from bitfront.planner.refine import best_recorded, refine
from bitfront.studies.spec import load_spec
from bitfront.units import parse_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pocket-ar")
    parser.add_argument("--spec", default="pocket", help="study spec whose settings are used")
    parser.add_argument("--budget", default="2.27MiB", help="memory budget")
    parser.add_argument("--band", type=float, default=0.015,
                        help="plans within this fraction below the budget are ranked")
    parser.add_argument("--plans", type=int, default=14)
    parser.add_argument("--compare", default="", help="proxies whose refined answers are "
                                                      "evaluated, e.g. top1,kl")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    budget = parse_bytes(args.budget)
    lm = load_model(args.model, show_progress=False)
    bench = spec.verify.benches[0]
    eval_config = spec.evaluation.replace(bench=bench, limit=spec.verify.equal_memory_limit)
    result = {"benchmark": "proxy ranking at a budget", "model": args.model,
              "spec": args.spec, "budget_bytes": budget, "band": args.band,
              "bench": bench, "tasks": eval_config.limit or "all",
              "threads": torch.get_num_threads(), "answers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for accuracy in dict.fromkeys([spec.search.accuracy, *filter(None,
                                                                      args.compare.split(","))]):
            search = build_search(lm, spec.search.replace(accuracy=accuracy), spec.setup,
                                  show_progress=False)
            study = search.run(f"sqlite:///{tmp}/{accuracy}.db", accuracy, spec.search.trials,
                               show_progress=False)
            start = time.perf_counter()
            refine(search, study, memory=budget, config=spec.refine, show_progress=False)
            seconds = round(time.perf_counter() - start, 1)
            points = SearchResult.of(study).points
            answer = best_recorded(SearchResult.of(study), budget, None)
            plan = search.plan(answer.bits)
            with search.applier.applied(plan):
                report = evaluate(lm, eval_config, Path(tmp) / f"answer-{accuracy}.json",
                                  model_key=plan_model_key(lm, plan, search.candidates),
                                  show_progress=False)
            result["answers"][accuracy] = {
                "trial": answer.number, "origin": answer.origin,
                "memory_bytes": answer.metrics.memory_bytes,
                "retention": answer.metrics.retention,
                "kl_retention": answer.metrics.kl_retention, "refine_seconds": seconds,
                "pass@1": report["pass@1"], "pass@1_interval": report["pass@1_interval"]}
            print(json.dumps({accuracy: result["answers"][accuracy]}), flush=True)
            if accuracy != spec.search.accuracy:
                continue
            near = sorted((p for p in points
                           if budget * (1 - args.band) <= p.metrics.memory_bytes <= budget),
                          key=lambda p: -search.accuracy(p.metrics))
            if len(near) > args.plans:  # spread over the accuracies, best and worst kept
                step = (len(near) - 1) / (args.plans - 1)
                near = [near[round(k * step)] for k in range(args.plans)]
            plans = [search.plan(p.bits, name=f"trial-{p.number}") for p in near]
            fidelity = measure_fidelity(lm, search.candidates, plans, search.proxy,
                                        eval_config, Path(tmp) / "fidelity",
                                        show_progress=False)
            result["ranking"] = {"plans": len(plans), **fidelity.to_dict()}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
