"""Benchmark: HAWQ-seeded against unseeded search on a pocket model. Prints JSON with the
hypervolume of each run after every trial, normalised by the hypervolume of the union of both
runs' trials (the reference front), and the trial counts at which each run first reaches 95%
of it. Target: the seeded search needs at most a third of the unseeded one's trials.

    python benchmarks/bench_search.py [--model pocket-ar] [--trials 150]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

from bitfront.models import load_model
from bitfront.planner.front import hypervolume, points, reference_point, study_config
from bitfront.planner.pipeline import Setup, build_search
from bitfront.planner.study import SearchConfig


def curve(pts, objectives, reference) -> list[float]:
    ordered = sorted(pts, key=lambda p: p.number)
    return [hypervolume(ordered[: k + 1], objectives, reference) for k in range(len(ordered))]


def first_reaching(values: list[float], target: float) -> int | None:
    return next((k + 1 for k, v in enumerate(values) if v >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="pocket-ar")
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lm = load_model(args.model, show_progress=False)
    base = SearchConfig(population=args.population, seed=args.seed)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in (("seeded", base), ("unseeded", replace(base, ilp_budgets=0))):
            search = build_search(lm, config, Setup(), show_progress=False)
            start = time.perf_counter()
            study = search.run(f"sqlite:///{tmp}/{name}.db", name, args.trials,
                               show_progress=False)
            runs[name] = (study, time.perf_counter() - start)
    config = study_config(runs["seeded"][0])
    objectives, reference = config["objectives"], reference_point(config)
    union = [p for study, _ in runs.values() for p in points(study)]
    # Trial numbers overlap between the runs; the hypervolume ignores them.
    reference_hv = hypervolume(union, objectives, reference)
    result = {"benchmark": "seeded vs unseeded search", "model": args.model,
              "trials": args.trials, "objectives": objectives, "reference_point": reference,
              "reference_hypervolume": reference_hv}
    for name, (study, seconds) in runs.items():
        values = [v / reference_hv for v in curve(points(study), objectives, reference)]
        result[name] = {"seconds": round(seconds, 1),
                        "seeds": len(study.user_attrs.get("bitfront_seeded", [])),
                        "trials_to_95pct": first_reaching(values, 0.95),
                        "final_fraction": values[-1],
                        "curve": [round(v, 4) for v in values]}
    seeded, unseeded = (result[n]["trials_to_95pct"] for n in ("seeded", "unseeded"))
    result["ratio"] = (seeded / unseeded) if seeded and unseeded else None
    result["ratio_bound"] = (f"<= {seeded / args.trials:.3f} (unseeded did not reach 95% in "
                             f"{args.trials} trials)" if seeded and not unseeded else None)
    result["target"] = {"ratio": 1 / 3}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
