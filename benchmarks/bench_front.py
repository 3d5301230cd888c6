"""Benchmark: the quality of bitfront's answers at a budget, where mixed precision pays.

For one model, at 25/50/75% of the way between adjacent uniform plans (uniform-2 to -3 and
uniform-3 to -4 memory by default), prints as proxy retention and as the fraction of the gap
between the two uniform plans' retentions that it closes:

- the lower uniform plan, and the straight line between the two uniform plans;
- the ILP solution at the budget;
- the best plan within the budget after the default search (a lookup among its trials);
- that search refined at the budget (`planner/refine.py`, default `RefineConfig`), with its
  time, and bitfront's answer: the refined plan, or the best uniform plan that fits where its
  95% interval holds the refined plan's retention (`best_under`);
- a long reference run: `--reference-factor` times the evaluations more, from the refinement on.

Also the hypervolume of a search with each sampler at the same number of trials (the default
sampler is chosen by it). Prints JSON; `--out` also writes it.

    python benchmarks/bench_front.py --model pocket-ar [--trials 60] [--gaps 2-3,3-4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bitfront.models import load_model
from bitfront.planner.front import SearchResult
from bitfront.planner.pipeline import build_search
from bitfront.planner.refine import best_recorded, refine
from bitfront.planner.seeds import uniform_memory
from bitfront.planner.study import SAMPLERS
from bitfront.studies.spec import load_spec


def closed(value: float, low: float, high: float) -> float:
    """The fraction of the gap between the lower and the higher uniform plan closed."""
    return (value - low) / (high - low) if high != low else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pocket-ar")
    parser.add_argument("--spec", default="pocket", help="study spec whose settings are used")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--gaps", default="2-3,3-4", help="pairs of uniform bitwidths")
    parser.add_argument("--fractions", default="0.25,0.5,0.75")
    parser.add_argument("--reference-factor", type=int, default=10)
    parser.add_argument("--reference-at", default="0.25,0.5,0.75",
                        help="fractions of each gap that get the long reference run")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    lm = load_model(args.model, show_progress=False)
    default_sampler = spec.search.sampler
    result = {"benchmark": "answers at a budget", "model": args.model, "spec": args.spec,
              "trials": args.trials, "threads": torch.get_num_threads(),
              "refine": spec.refine.to_dict(), "reference_factor": args.reference_factor,
              "default_sampler": default_sampler, "samplers": {}, "budgets": []}
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/front.db"
        searches = {}
        for sampler in args.samplers.split(","):
            search = build_search(lm, spec.search.replace(sampler=sampler), spec.setup,
                                  show_progress=False)
            start = time.perf_counter()
            study = search.run(storage, sampler, args.trials, show_progress=False)
            result["samplers"][sampler] = {
                "seconds": round(time.perf_counter() - start, 1),
                "hypervolume": SearchResult.of(study).hypervolume}
            print(json.dumps({"sampler": sampler, **result["samplers"][sampler]}), flush=True)
            searches[sampler] = (search, study)
        search, study = searches[default_sampler]
        problem = search.seed_problem()
        references = {float(f) for f in args.reference_at.split(",") if f}
        uniform = {p.origin: p for p in SearchResult.of(study).points
                   if p.origin.startswith("uniform-")}
        for gap in args.gaps.split(","):
            low_bits, high_bits = (int(b) for b in gap.split("-"))
            low, high = uniform[f"uniform-{low_bits}"], uniform[f"uniform-{high_bits}"]
            lo_m, hi_m = (uniform_memory(problem, b) for b in (low_bits, high_bits))
            lo_r, hi_r = low.metrics.retention, high.metrics.retention
            for fraction in (float(f) for f in args.fractions.split(",")):
                budget = int(lo_m + fraction * (hi_m - lo_m))
                row = {"gap": gap, "fraction": fraction, "budget_bytes": budget,
                       "lower_uniform": lo_r, "higher_uniform": hi_r,
                       "straight_line": lo_r + fraction * (hi_r - lo_r)}
                ilp = search.plan(problem.solve(budget))
                row["ilp"] = search.evaluate(ilp).retention
                row["default_search"] = best_recorded(SearchResult.of(study), budget,
                                                      None).metrics.retention
                start = time.perf_counter()
                refinement = refine(search, study, memory=budget, config=spec.refine,
                                    show_progress=False)
                row["refined"] = refinement.accuracy
                row["refine_seconds"] = round(time.perf_counter() - start, 1)
                row["refine_evaluations"] = refinement.evaluations
                row["answer"] = best_recorded(SearchResult.of(study), budget,
                                              None).metrics.retention
                if fraction in references:
                    # The long reference: `reference_factor` times the evaluations more,
                    # from the refinement on (another seed of the moves).
                    reference = spec.refine.replace(
                        evaluations=spec.refine.evaluations * args.reference_factor,
                        seed=spec.refine.seed + 1)
                    start = time.perf_counter()
                    row["reference"] = refine(search, study, memory=budget, config=reference,
                                              show_progress=False).accuracy
                    row["reference_seconds"] = round(time.perf_counter() - start, 1)
                for key in ("straight_line", "ilp", "default_search", "refined", "answer",
                            "reference"):
                    if key in row:
                        row[f"{key}_closes"] = round(closed(row[key], lo_r, hi_r), 4)
                result["budgets"].append(row)
                print(json.dumps(row), flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
