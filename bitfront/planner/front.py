"""Fronts of a study: the Pareto-optimal plans (feasible trials only), their hypervolume, the
knee, and the best plan under a user's budget. Works from the stored study alone (no model).

Hypervolume is computed in normalised objective space against a stated reference point:
accuracy retention 0, the memory of the all-16-bit plan, and the latency of the slowest
possible plan (every layer at its slowest bitwidth); each objective is divided by its
reference (retention is negated), so a plan keeping everything at no cost would score 1.
The knee is the front point nearest the ideal point once each objective is scaled to [0, 1]
over the front.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import TrialState

from bitfront.errors import BitfrontError, NoPlanError
from bitfront.planner.metrics import TrialMetrics, objective_metric
from bitfront.planner.optuna_private import compute_hypervolume, storage_of
from bitfront.planner.pareto import nondominated
from bitfront.planner.study import (
    CONFIG_ATTR,
    OBJECTIVES,
    REFINEMENT_ATTR,
    REQUEUED_ATTR,
    TABLE_ATTR,
    Storage,
)
from bitfront.space.plan import BitPlan
from bitfront.units import format_bytes


@dataclass(frozen=True)
class Point:
    """One completed trial: its bits per group, objective values and recorded metrics."""

    number: int
    bits: dict[str, int]
    values: tuple[float, ...]
    metrics: TrialMetrics
    feasible: bool
    origin: str
    refinement: bool = False  # recorded by a refinement at a budget, not by the search

    @property
    def uniform(self) -> bool:
        """Every group at the same bitwidth."""
        return len(set(self.bits.values())) == 1

    def holds(self, value: float, accuracy: str) -> bool:
        """`value` lies within this plan's 95% interval of `accuracy` (False for a metric
        without one): the two are not told apart."""
        high = getattr(self.metrics, f"{accuracy}_high", None)
        return high is not None and value <= high

    def to_dict(self) -> dict:
        return {"trial": self.number, "origin": self.origin, "feasible": self.feasible,
                "bits": self.bits, **self.metrics.to_dict()}


@dataclass(frozen=True)
class SearchResult:
    """A study's outcome: every completed point, the Pareto front, its knee and hypervolume
    (normalised; see the module doc), with the study's stored configuration."""

    study: str
    config: dict
    points: list[Point]
    front: list[Point]
    knee: Point | None
    hypervolume: float
    requeued: list[dict] = field(default_factory=list)  # seeds run again (see study.py)
    unfinished: list[int] = field(default_factory=list)  # trials a dead worker left or that failed
    latency_backend: str | None = None  # what timed the study's latency table (None: no table)
    # Where the study lives (a URL or storage object), for answers refined at a budget.
    storage: Storage | None = field(default=None, repr=False, compare=False)

    @property
    def objectives(self) -> list[str]:
        return self.config["objectives"]

    @property
    def reference(self) -> dict[str, float]:
        return reference_point(self.config)

    def plan(self, point: Point) -> BitPlan:
        return plan_of(point, self.config)

    @classmethod
    def of(cls, study: optuna.Study, storage: Storage | None = None) -> SearchResult:
        """The result of `study`; `storage` is its URL (default: its storage object; a
        "memory" URL cannot be opened again)."""
        if storage is None or storage == "memory":
            storage = storage_of(study)
        config = study_config(study)
        pts = points(study)
        front = pareto_front(pts, config["objectives"])
        table = study.user_attrs.get(TABLE_ATTR)
        return cls(study=study.study_name, config=config, points=pts, front=front,
                   knee=knee(front, config["objectives"]),
                   hypervolume=hypervolume(pts, config["objectives"], reference_point(config)),
                   requeued=study.user_attrs.get(REQUEUED_ATTR, []),
                   unfinished=[t.number for t in study.get_trials(
                       deepcopy=False, states=(TrialState.FAIL, TrialState.RUNNING))],
                   latency_backend=None if table is None else table.get("backend", "torch"),
                   storage=storage)

    def summary(self) -> dict:
        """The front in brief, JSON-ready: each front plan's trial, origin and metrics."""
        return {"study": self.study,
                "trials": sum(not p.refinement for p in self.points),
                "refinement_trials": sum(p.refinement for p in self.points),
                "feasible": sum(p.feasible for p in self.points),
                "objectives": self.objectives, "reference": self.reference,
                "hypervolume": self.hypervolume,
                "knee": self.knee.number if self.knee else None,
                "requeued_seeds": self.requeued, "unfinished_trials": self.unfinished,
                "latency_backend": self.latency_backend,
                "front": [{"trial": p.number, "origin": p.origin, **p.metrics.to_dict()}
                          for p in self.front]}

    def to_dict(self) -> dict:
        """JSON-ready record (points in full, the front and knee by trial number)."""
        return {**self.summary(), "front": [p.number for p in self.front],
                "points": [p.to_dict() for p in self.points], "config": self.config}


def study_config(study: optuna.Study) -> dict:
    config = study.user_attrs.get(CONFIG_ATTR)
    if config is None:
        raise BitfrontError(f"study {study.study_name!r} was not made by bitfront search")
    return config


def points(study: optuna.Study) -> list[Point]:
    out = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        out.append(Point(number=trial.number, bits=dict(trial.params),
                         values=tuple(trial.values),
                         metrics=TrialMetrics.from_dict(trial.user_attrs),
                         feasible=all(c <= 0 for c in trial.constraints.values()),
                         origin=trial.user_attrs.get("origin", ""),
                         refinement=REFINEMENT_ATTR in trial.user_attrs))
    return out


def _losses(values, objectives) -> np.ndarray:
    """Objective values as minimisation losses."""
    signs = np.array([-1.0 if OBJECTIVES[o] == "maximize" else 1.0 for o in objectives])
    return np.asarray(values, dtype=float) * signs


def pareto_front(pts: list[Point], objectives: list[str]) -> list[Point]:
    """Non-dominated feasible points, by ascending first loss."""
    feasible = [p for p in pts if p.feasible]
    if not feasible:
        return []
    losses = _losses([p.values for p in feasible], objectives)
    keep = nondominated(losses)
    # Identical points: keep the earliest trial only.
    front, seen = [], set()
    for i in sorted(keep, key=lambda k: (tuple(losses[k]), feasible[k].number)):
        key = tuple(losses[i])
        if key not in seen:
            seen.add(key)
            front.append(feasible[i])
    return front


def reference_point(config: dict) -> dict[str, float]:
    return {"accuracy": 0.0, "memory": float(config["reference"]["memory"]),
            "latency": float(config["reference"].get("latency") or 0.0)}


def normalised_losses(values, objectives: list[str], reference: dict[str, float]
                      ) -> np.ndarray:
    """Losses scaled so the reference point is 0 for accuracy and 1 for costs."""
    losses = _losses(values, objectives)
    scale = np.array([1.0 if o == "accuracy" else reference[o] for o in objectives])
    return losses / scale


def hypervolume(pts: list[Point], objectives: list[str], reference: dict[str, float]) -> float:
    front = pareto_front(pts, objectives)
    if not front:
        return 0.0
    losses = normalised_losses([p.values for p in front], objectives, reference)
    ref = np.array([0.0 if o == "accuracy" else 1.0 for o in objectives])
    inside = losses[np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, ref, assume_pareto=False))


def knee(front: list[Point], objectives: list[str]) -> Point | None:
    if not front:
        return None
    losses = _losses([p.values for p in front], objectives)
    low, high = losses.min(axis=0), losses.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    distance = np.linalg.norm((losses - low) / span, axis=1)
    return front[int(np.argmin(distance))]


def accuracy_metric(config: dict) -> str:
    """The metric a study optimised as its accuracy: top-1 or likelihood retention."""
    return objective_metric("accuracy", config.get("accuracy", "top1"))


def best_under(pts: list[Point], *, memory: int | None = None, latency: float | None = None,
               accuracy: str = "retention") -> Point:
    """The most accurate feasible plan within the budgets (ties: less memory), or the most
    accurate uniform plan within them when the other lies inside its accuracy interval."""
    if memory is None and latency is None:
        raise BitfrontError("give a memory and/or a latency budget")
    feasible = [p for p in pts if p.feasible]
    if not feasible:
        raise NoPlanError("no plan within budget; the study has no feasible trials yet")

    def within_memory(p: Point) -> bool:
        return memory is None or p.metrics.memory_bytes <= memory

    def within_latency(p: Point) -> bool:
        return latency is None or _latency(p) <= latency

    fits = [p for p in feasible if within_memory(p) and within_latency(p)]
    if not fits:
        small = [p for p in feasible if within_memory(p)]
        if not small:
            smallest = min(p.metrics.memory_bytes for p in feasible)
            raise NoPlanError(f"no plan within budget; the smallest is "
                              f"{format_bytes(smallest)}")
        fastest = min(_latency(p) for p in small)
        raise NoPlanError(f"no plan within budget; the fastest"
                          f"{' that fits the memory budget' if memory is not None else ''} "
                          f"takes {fastest:.4g} s")
    def order(p: Point) -> tuple[float, float]:
        return getattr(p.metrics, accuracy), -p.metrics.memory_bytes

    best = max(fits, key=order)
    uniform = [p for p in fits if p.uniform]
    if uniform and not best.uniform:
        # A mixed plan wins only beyond the noise: within the best fitting uniform plan's 95%
        # interval the two are not told apart, and the uniform plan is the simpler answer.
        # (At pocket-ar's uniform-3 memory a mixed plan led 100.1% to 99.6% in top-1
        # retention and lost 67.1% to 77.1% in pocket pass@1.)
        rival = max(uniform, key=order)
        if rival.holds(getattr(best.metrics, accuracy), accuracy):
            return rival
    return best


def _latency(point: Point) -> float:
    return point.metrics.latency_s if point.metrics.latency_s is not None else float("inf")


def plan_of(point: Point, config: dict) -> BitPlan:
    """The full per-layer plan of a trial."""
    bits = {name: point.bits[group] for group, members in config["groups"].items()
            for name in members}
    return BitPlan.from_bits(config["model"], bits, config["group_size"], config["sym"],
                             name=f"trial-{point.number}", model_name=config["model_name"],
                             candidates=config["candidates"], quantizer=config["quantizer"],
                             calibration=config["calibration"], trial=point.number,
                             origin=point.origin)
