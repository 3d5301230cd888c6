"""Answers at a budget: the best plan under a memory (and latency) budget, searched there.

A lookup among the trials a search happened to evaluate leaves a budget's neighbourhood
unexplored (between two uniform plans the front is often empty), and summed per-layer
sensitivities do not always predict the model's loss, so an ILP solve alone is a start, not an
answer. Refinement at budget B:

1. starts from the best of: the ILP solution at B, the best uniform plan within B and the best
   plan the study already holds within B (each evaluated on the full proxy if it is new);
2. runs an elitist local search with budget-preserving moves (moves.py: one group up a level,
   others down until the plan fits B again, then groups up a level wherever B still allows,
   so that no neighbour leaves unused the memory one more level would take): each step draws
   `offspring` new neighbours of the current best, screens them on a few proxy tasks,
   confirms the best `survivors` on every proxy task, and keeps a confirmed plan that beats
   the current best;
3. stops when `evaluations` full-proxy equivalents are spent (a screen costs its share of the
   tasks) or no new neighbour is left.

Every plan evaluated on the full proxy is recorded in the study (origins `ilp-at-B`,
`refine-B`), so the front improves, and the refinement itself is recorded under the study
attribute `bitfront_refined`: the same question again is answered from the study at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from bitfront.config import Config, setting
from bitfront.errors import NoPlanError
from bitfront.paths import cache_dir
from bitfront.planner.front import (
    Point,
    SearchResult,
    accuracy_metric,
    best_under,
    study_config,
)
from bitfront.planner.seeds import BudgetError
from bitfront.planner.study import PlanSearch, Storage, storage_lock
from bitfront.progress import progress_bar
from bitfront.units import format_bytes

REFINED_ATTR = "bitfront_refined"


@dataclass(frozen=True)
class RefineConfig(Config):
    """How much work a budget answer may do."""

    evaluations: int = setting(60, "proxy evaluations (full-task equivalents) one budget "
                                   "answer may spend; 0: look the answer up only")
    screen: int = setting(16, "proxy tasks each move is screened on")
    offspring: int = setting(12, "moves screened per step")
    survivors: int = setting(2, "best screened moves per step scored on every proxy task")
    seed: int = setting(0, "seed of the moves")

    def __post_init__(self):
        self.require(self.evaluations >= 0, "evaluations", "a number ≥ 0")
        for key in ("screen", "offspring", "survivors"):
            self.require(getattr(self, key) > 0, key, "a positive number")
        self.require(self.survivors <= self.offspring, "survivors", "at most offspring")


def budget_key(memory: int | None, latency: float | None) -> str:
    """How a refinement is recorded in the study: its budgets."""
    return f"memory={int(memory) if memory is not None else '-'};latency={latency or '-'}"


def budget_label(memory: int | None, latency: float | None) -> str:
    return "-".join([*([format_bytes(memory)] if memory is not None else []),
                     *([f"{latency:.4g}s"] if latency is not None else [])])


@dataclass(frozen=True)
class Refinement:
    """What one refinement did: its start, the plan it ended with, and its cost."""

    budget: dict
    start: str
    trial: int
    accuracy: float
    start_accuracy: float
    evaluations: float
    steps: int
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def refined(study: optuna.Study, memory: int | None, latency: float | None) -> dict | None:
    """The recorded refinement at these budgets, if one ran."""
    return study.user_attrs.get(REFINED_ATTR, {}).get(budget_key(memory, latency))


def refine(search: PlanSearch, study: optuna.Study, *, memory: int | None = None,
           latency: float | None = None, config: RefineConfig = RefineConfig(),
           lock=contextlib.nullcontext, show_progress: bool = True) -> Refinement:
    """Refine at the budgets (see the module doc); `study` must be opened by `search`.
    `lock()` guards the update of the study's refinement record."""
    start_time = time.monotonic()
    label = budget_label(memory, latency)
    problem = search.seed_problem()
    problem.check(memory, latency)
    moves = search.moves(memory_cap=memory, latency_cap=latency)
    within, score = moves.fits, search.accuracy
    held = {tuple(p.bits[g] for g in search.groups): p for p in SearchResult.of(study).points}
    spent = 0.0

    def full(plan: tuple[int, ...], origin: str) -> Point:
        nonlocal spent
        bits = moves.bits(plan)
        key = tuple(bits.values())
        if key not in held:
            metrics = search.evaluate(search.plan(bits))
            trial = search.record(study, bits, metrics, origin)
            held[key] = Point(number=trial.number, bits=bits, values=tuple(trial.values),
                              metrics=metrics, feasible=True, origin=origin, refinement=True)
            spent += 1
        return held[key]

    starts = []
    with contextlib.suppress(BudgetError):
        cap = moves.memory_cap if moves.memory_cap is not None else problem.memory_range()[1]
        starts.append((problem.solve(cap, moves.latency_cap), f"ilp-at-{label}"))
    for bits in sorted(problem.choices, reverse=True):
        if within((problem.choices.index(bits),) * len(problem.groups)):
            starts.append((dict.fromkeys(problem.groups, bits), f"uniform-{bits}"))
            break
    existing = [p for p in held.values()
                if within(moves.index(p.bits)) and p.feasible]
    if existing:
        best_held = max(existing, key=lambda p: (score(p.metrics), -p.metrics.memory_bytes))
        starts.append((best_held.bits, best_held.origin))
    points = [full(moves.index(bits), origin) for bits, origin in starts]
    current = max(points, key=lambda p: (score(p.metrics), -p.metrics.memory_bytes))
    start, start_accuracy = current.origin, score(current.metrics)

    rng = np.random.RandomState(config.seed)
    tasks = len(search.proxy.tasks)
    screen_tasks = min(config.screen, tasks)
    screen = search.screen_proxy(screen_tasks)
    step_cost = config.offspring * screen_tasks / tasks + config.survivors
    steps = 0
    with progress_bar(show=show_progress) as bar:
        task = bar.add_task(f"refine at {label}", total=config.evaluations,
                            completed=min(spent, config.evaluations), info="")
        while spent + step_cost <= config.evaluations:
            children = _neighbours(moves, moves.index(current.bits), rng, config.offspring,
                                   held)
            if not children:
                break
            screened = []
            for child in children:
                with search.applier.applied(search.plan(moves.bits(child))):
                    screened.append(search.accuracy(screen()))
            spent += len(children) * screen_tasks / tasks
            order = np.argsort(screened)[::-1][: config.survivors]
            for k in order:
                point = full(children[k], f"refine-{label}")
                if (score(point.metrics), -point.metrics.memory_bytes) > \
                        (score(current.metrics), -current.metrics.memory_bytes):
                    current = point
            steps += 1
            bar.update(task, completed=min(spent, config.evaluations),
                       info=f"best {score(current.metrics):.4f} (trial {current.number})")
    result = Refinement(budget={"memory": memory, "latency": latency}, start=start,
                        trial=current.number, accuracy=score(current.metrics),
                        start_accuracy=start_accuracy, evaluations=round(spent, 2),
                        steps=steps, seconds=round(time.monotonic() - start_time, 1))
    with lock():
        records = dict(study.user_attrs.get(REFINED_ATTR, {}))
        records[budget_key(memory, latency)] = result.to_dict()
        study.set_user_attr(REFINED_ATTR, records)
    return result


def _neighbours(moves, plan: tuple[int, ...], rng: np.random.RandomState, n: int,
                held: dict) -> list[tuple[int, ...]]:
    """Up to `n` distinct budget-preserving neighbours of `plan`, filled up to the cap,
    that the study does not hold."""
    cap = moves.memory_cap if moves.memory_cap is not None else moves.memory(plan)
    out: list[tuple[int, ...]] = []
    for _ in range(20 * n):
        child = moves.neighbour(plan, rng, cap=cap)
        if child is None:
            continue
        child = moves.fill(child, rng, cap)
        if child not in out and tuple(moves.bits(child).values()) not in held:
            out.append(child)
            if len(out) == n:
                break
    return out


def best_recorded(result: SearchResult, memory: int | None, latency: float | None) -> Point:
    """The best plan of the study within the budgets (a lookup)."""
    return best_under(result.points, memory=memory, latency=latency,
                      accuracy=accuracy_metric(result.config))


@dataclass(frozen=True)
class Answer:
    """The best plan at a budget and how it was found: `refined` (searched at the budget
    now), `recorded` (a refinement at this budget ran before) or `lookup` (the study's
    trials only; `note` says why)."""

    point: Point
    how: str
    note: str = ""
    refinement: dict | None = None

    def to_dict(self) -> dict:
        return {"how": self.how, "note": self.note, "refinement": self.refinement}


def answer(study: optuna.Study, storage_url: Storage, *, memory: int | None = None,
           latency: float | None = None, config: RefineConfig = RefineConfig(),
           open_search: Callable[[], PlanSearch], show_progress: bool = True) -> Answer:
    """The best plan within the budgets, refined there unless a refinement at these budgets
    is recorded or cannot run (`open_search` builds the study's `PlanSearch`: it loads the
    model, so it is called only when refining)."""
    result = SearchResult.of(study)
    lowest = f"uniform-{min(result.config['choices'])}"
    smallest = [p.metrics.memory_bytes for p in result.points if p.origin == lowest]
    if memory is not None and smallest and memory < min(smallest):
        # Every layer at the lowest bitwidth is the smallest plan there is: nothing to search.
        raise NoPlanError(f"no plan within budget; the smallest is "
                          f"{format_bytes(min(smallest))} ({lowest})")
    if (record := refined(study, memory, latency)) is not None:
        point = best_recorded(result, memory, latency)
        return Answer(point, "recorded", f"refined at this budget before "
                      f"({record['evaluations']} evaluations)"
                      f"{kept_note(point, record, accuracy_metric(result.config))}", record)
    if reason := cannot_refine(study, storage_url, config):
        return Answer(best_recorded(result, memory, latency), "lookup",
                      f"a lookup among the study's trials: {reason}")
    search = open_search()
    study = search.open(storage_url, study.study_name)
    refinement = refine(search, study, memory=memory, latency=latency, config=config,
                        lock=functools.partial(storage_lock, storage_url),
                        show_progress=show_progress)
    point = best_recorded(SearchResult.of(study), memory, latency)
    record = refinement.to_dict()
    return Answer(point, "refined", f"searched at the budget ({refinement.evaluations} "
                  f"evaluations, {refinement.seconds} s)"
                  f"{kept_note(point, record, accuracy_metric(result.config))}", record)


def kept_note(point: Point, record: dict, accuracy: str) -> str:
    """Says so when the answer is not the refinement's best plan (a uniform plan whose
    accuracy interval holds it: see `best_under`)."""
    if point.number == record["trial"] or not point.uniform or \
            not point.holds(record["accuracy"], accuracy):
        return ""
    return (f"; {point.origin or f'trial {point.number}'} kept: the best mixed plan (trial "
            f"{record['trial']}, {record['accuracy']:.5f}) lies within its 95% interval "
            f"(up to {getattr(point.metrics, f'{accuracy}_high'):.5f})")


def cannot_refine(study: optuna.Study, storage_url: Storage, config: RefineConfig
                  ) -> str | None:
    """Why refinement cannot run on `study` (None when it can)."""
    if config.evaluations == 0:
        return "refinement is off (evaluations 0)"
    path = _storage_file(storage_url)
    if path is not None and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return f"the study's storage {path} is read-only"
    key = study_config(study)["candidates"]
    if not (cache_dir() / "candidates" / key / "manifest.json").exists():
        return (f"the study's GPTQ candidates ({key}) are not in the cache "
                f"{cache_dir() / 'candidates'}")
    return None


def _storage_file(url: Storage) -> Path | None:
    """The file of a SQLite or journal storage."""
    if not isinstance(url, str) or url == "memory":
        return None
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None if "://" in url else Path(url)
