"""Budget-preserving moves over per-group bitwidths, and the Optuna sampler built on them.

A move raises one group a level of the choices and lowers other groups a level each until the
plan's memory is back within a cap (the parent's memory, or a budget): it trades bits between
groups at (nearly) constant memory, the mutation of evolutionary bit-allocation searches
(EvoPress's level switches). Random mixed plans are unusable at 2-3 bits per weight and
NSGA-II's crossover and mutation do not keep memory, so a search that should fill the front
between two uniform plans explores from the front's own plans with these moves.

`MoveSampler` is an ordinary `BaseSampler`, so RDB storages and many workers work as with
NSGA-II and TPE: each trial takes a parent from the current Pareto front of the feasible
trials (uniformly at random), applies one to three moves (sometimes a single level up or down
instead, so the front also spreads in memory) and skips plans the study already holds. Before
the study has two completed trials it samples at random.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from bitfront.planner.pareto import nondominated
from bitfront.planner.seeds import SeedProblem


class Moves:
    """Moves of one `SeedProblem`: plans are tuples of choice indices, one per group."""

    def __init__(self, problem: SeedProblem, *, memory_cap: float | None = None,
                 latency_cap: float | None = None):
        self.problem = problem
        self.memory_cap, self.latency_cap = memory_cap, latency_cap
        self.levels = len(problem.choices)
        self.rows = np.arange(len(problem.groups))

    def index(self, bits: dict[str, int]) -> tuple[int, ...]:
        return tuple(self.problem.choices.index(bits[g]) for g in self.problem.groups)

    def bits(self, plan: tuple[int, ...]) -> dict[str, int]:
        return {g: self.problem.choices[k] for g, k in zip(self.problem.groups, plan,
                                                           strict=True)}

    def memory(self, plan) -> float:
        return float(self.problem.nbytes[self.rows, list(plan)].sum()) + self.problem.fixed_bytes

    def latency(self, plan) -> float:
        return (float(self.problem.latency[self.rows, list(plan)].sum())
                + self.problem.fixed_latency)

    def fits(self, plan, memory_cap: float | None = None) -> bool:
        """Within the memory cap (the tighter of `memory_cap` and the budget) and the
        latency cap."""
        caps = [c for c in (memory_cap, self.memory_cap) if c is not None]
        if caps and self.memory(plan) > min(caps):
            return False
        return self.latency_cap is None or self.latency(plan) <= self.latency_cap

    def swap(self, plan: tuple[int, ...], rng: np.random.RandomState,
             cap: float) -> tuple[int, ...] | None:
        """One group up a level, then random other groups down a level until the plan
        fits `cap` again (None when it cannot)."""
        plan = list(plan)
        up = [g for g, k in enumerate(plan) if k + 1 < self.levels]
        if not up:
            return None
        raised = int(rng.choice(up))
        plan[raised] += 1
        down = [g for g, k in enumerate(plan) if k > 0 and g != raised]
        rng.shuffle(down)
        for g in down:
            if self.fits(plan, cap):
                break
            plan[g] -= 1
        return tuple(plan) if self.fits(plan, cap) else None

    def fill(self, plan: tuple[int, ...], rng: np.random.RandomState,
             cap: float) -> tuple[int, ...]:
        """Groups in random order each a level up where the plan still fits `cap`: the
        memory a swap's lowering left unused goes back into the plan (at a budget, a plan
        below it gives accuracy away)."""
        plan = list(plan)
        for g in rng.permutation(len(plan)):
            if plan[g] + 1 < self.levels:
                plan[g] += 1
                if not self.fits(plan, cap):
                    plan[g] -= 1
        return tuple(plan)

    def step(self, plan: tuple[int, ...], rng: np.random.RandomState) -> tuple[int, ...] | None:
        """One group a level up or down (memory changes), within the budgets."""
        g = int(rng.randint(len(plan)))
        k = plan[g] + (1 if rng.rand() < 0.5 else -1)
        if not 0 <= k < self.levels:
            return None
        moved = (*plan[:g], k, *plan[g + 1:])
        return moved if self.fits(moved) else None

    def neighbour(self, plan: tuple[int, ...], rng: np.random.RandomState, *,
                  cap: float | None = None, step_rate: float = 0.0) -> tuple[int, ...] | None:
        """One to three swaps within `cap` (default: the plan's own memory), or, with
        probability `step_rate`, a single step."""
        if rng.rand() < step_rate:
            return self.step(plan, rng)
        cap = self.memory(plan) if cap is None else cap
        for _ in range(1 + int(rng.rand() < 0.3) + int(rng.rand() < 0.1)):
            moved = self.swap(plan, rng, cap)
            if moved is None:
                return None
            plan = moved
        return plan


class MoveSampler(optuna.samplers.BaseSampler):
    """Budget-preserving moves from the current Pareto front (see the module doc)."""

    ATTEMPTS = 64  # tries to find a plan the study does not hold yet

    def __init__(self, moves: Moves, *, seed: int = 0, step_rate: float = 0.25):
        self.moves, self.step_rate = moves, step_rate
        self.groups = list(moves.problem.groups)
        self.distribution = CategoricalDistribution(list(moves.problem.choices))
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random state (see `PlanSearch.draw`)."""
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial) -> dict:
        return dict.fromkeys(self.groups, self.distribution)

    def sample_relative(self, study, trial, search_space) -> dict:
        if not search_space:
            return {}
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE
                and set(self.groups) <= set(t.params)
                and all(c <= 0 for c in t.constraints.values())]
        if len(done) < 2:
            return {}  # independent random sampling
        signs = np.array([-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0
                          for d in study.directions])
        front = [done[i] for i in nondominated(np.array([t.values for t in done]) * signs)]
        # A failed trial's plan (its worker died) may be proposed again, as an uninterrupted
        # search would have finished it.
        held = {tuple(t.params[g] for g in self.groups) for t in trials
                if t.state != TrialState.FAIL and set(self.groups) <= set(t.params)}
        for _ in range(self.ATTEMPTS):
            parent = front[int(self._rng.randint(len(front)))]
            plan = self.moves.neighbour(self.moves.index(parent.params), self._rng,
                                        step_rate=self.step_rate)
            if plan is not None and tuple(self.moves.bits(plan).values()) not in held:
                return self.moves.bits(plan)
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._random.sample_independent(study, trial, param_name, param_distribution)

