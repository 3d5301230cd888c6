"""Comparing the frontiers of two runs (two models of a study, or any two searches).

Measures, all on the accuracy-retention-vs-memory projection unless said otherwise:
- hypervolume of each run against one common reference point (the larger of the two
  all-16-bit memories, the larger of the two slowest latencies), in normalised units;
- the mean retention gap between the two fronts (the area between their staircases over the
  memory range both cover, divided by its width), signed and absolute;
- the best retention each reaches under given memory budgets;
- the knee of each front.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitfront.errors import BitfrontError
from bitfront.planner.front import (
    Point,
    accuracy_metric,
    hypervolume,
    knee,
    pareto_front,
    reference_point,
)
from bitfront.planner.metrics import TrialMetrics, objective_metric


@dataclass
class RunFront:
    label: str
    family: str | None
    objectives: list[str]
    accuracy_key: str  # "retention" (top-1) or "logprob_retention"
    reference: dict
    points: list[dict]  # trial, origin, feasible, retention, memory_bytes, latency_s, ...

    def as_points(self) -> list[Point]:
        value = {o: objective_metric(o) for o in self.objectives} | {
            "accuracy": self.accuracy_key}
        return [Point(number=p["trial"], bits=p.get("bits", {}),
                      values=tuple(p[value[o]] for o in self.objectives),
                      metrics=TrialMetrics.from_dict(p), feasible=p["feasible"],
                      origin=p["origin"]) for p in self.points]

    def front(self) -> list[Point]:
        return pareto_front(self.as_points(), self.objectives)


def load_front(path: Path) -> RunFront:
    """A run: a study model directory (runs/STUDY/LABEL, with search.json) or a search run
    directory (runs/search/NAME, with study.json)."""
    path = Path(path)
    if (path / "search.json").exists():
        result = json.loads((path / "search.json").read_text())["result"]
        family = None
        if (path / "model.json").exists():
            family = json.loads((path / "model.json").read_text())["result"]["family"]
        return _run(path.name, family, result["config"], result["points"])
    if (path / "study.json").exists():
        from bitfront.planner.front import SearchResult
        from bitfront.planner.study import locate_study

        result = SearchResult.of(*locate_study(str(path)))
        return _run(path.name, result.config.get("family"), result.config,
                    [p.to_dict() for p in result.points])
    raise BitfrontError(f"{path} is not a run: expected search.json (a study's model run) or "
                        "study.json (a search run)")


def _run(label: str, family, config: dict, pts: list[dict]) -> RunFront:
    return RunFront(label=label, family=family, objectives=config["objectives"],
                    accuracy_key=accuracy_metric(config),
                    reference=reference_point(config), points=pts)


def staircase(run: RunFront, x: str = "memory_bytes") -> tuple[np.ndarray, np.ndarray]:
    """The best accuracy reachable at each cost level: the points where it improves, by
    cost (the front projected on accuracy and that cost)."""
    feasible = sorted((p[x], p[run.accuracy_key]) for p in run.points if p["feasible"])
    xs, ys, best = [], [], -np.inf
    for cost, acc in feasible:
        if acc > best:
            xs.append(cost)
            ys.append(acc)
            best = acc
    return np.array(xs), np.array(ys)


def dearest(run: RunFront, x: str = "memory_bytes") -> float:
    return max(p[x] for p in run.points if p["feasible"])


def best_at(run: RunFront, budget: float, x: str = "memory_bytes") -> float | None:
    xs, ys = staircase(run, x)
    inside = ys[xs <= budget]
    return float(inside[-1]) if len(inside) else None


def retention_gap(a: RunFront, b: RunFront, x: str = "memory_bytes") -> dict:
    """Mean (signed, absolute) difference a − b of the staircases over the cost range both
    runs explored (from the larger of their cheapest plans to the smaller of their dearest)."""
    xa, ya = staircase(a, x)
    xb, yb = staircase(b, x)
    if not len(xa) or not len(xb):
        return {"range": None, "mean_gap": None, "mean_abs_gap": None}
    lo, hi = max(xa[0], xb[0]), min(dearest(a, x), dearest(b, x))
    if hi <= lo:
        return {"range": None, "mean_gap": None, "mean_abs_gap": None}
    grid = np.linspace(lo, hi, 512)
    fa = ya[np.searchsorted(xa, grid, side="right") - 1]
    fb = yb[np.searchsorted(xb, grid, side="right") - 1]
    return {"range": [float(lo), float(hi)], "mean_gap": float(np.mean(fa - fb)),
            "mean_abs_gap": float(np.mean(np.abs(fa - fb)))}


def common_reference(runs: list[RunFront]) -> dict:
    return {"accuracy": 0.0,
            "memory": max(r.reference["memory"] for r in runs),
            "latency": max((r.reference.get("latency") or 0.0) for r in runs)}


def compare_runs(a: RunFront, b: RunFront, budgets: list[float]) -> dict:
    if a.objectives != b.objectives:
        raise BitfrontError(f"the runs optimise different objectives: {a.objectives} vs "
                            f"{b.objectives}")
    reference = common_reference([a, b])
    out = {"runs": [a.label, b.label], "reference": reference, "objectives": a.objectives}
    for run in (a, b):
        front = run.front()
        k = knee(front, run.objectives)
        out[run.label] = {
            "family": run.family,
            "trials": len(run.points),
            "front_size": len(front),
            "hypervolume": hypervolume(run.as_points(), run.objectives, reference),
            "knee": None if k is None else {"trial": k.number, **{
                key: v for key, v in k.metrics.to_dict().items()
                if key in (run.accuracy_key, "memory_bytes", "avg_bits", "latency_s")}},
            "best_at": {str(int(bud)): best_at(run, bud) for bud in budgets},
        }
    out["retention_gap_memory"] = retention_gap(a, b)
    if "latency" in a.objectives:
        out["retention_gap_latency"] = retention_gap(a, b, "latency_s")
    return out
