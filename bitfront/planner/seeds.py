"""HAWQ seeds for the search: integer linear programs over per-group bitwidths.

For a memory budget B (and optionally a latency cap L) the ILP picks one bitwidth per layer
group minimising the summed HAWQ sensitivity Σ_g Ω_g(b_g) subject to Σ_g bytes_g(b_g) ≤ B
(and Σ_g latency_g(b_g) ≤ L), solved exactly with `scipy.optimize.milp` (HiGHS). Seeds are
the uniform plans and the ILP solutions where fronts bend: at K budgets spread evenly strictly
between every adjacent pair of uniform plans (mixed precision pays most between them, and a
search started from the uniform plans alone leaves those gaps empty), plus any budgets a user
gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from bitfront.errors import BitfrontError, NoPlanError
from bitfront.space.layers import LayerSpace
from bitfront.space.memory import layer_nbytes
from bitfront.space.plan import QuantSpec
from bitfront.units import format_bytes


class BudgetError(NoPlanError):
    """A budget no plan can meet."""


@dataclass(frozen=True)
class Seed:
    bits: dict[str, int]  # group -> bitwidth
    origin: str  # e.g. "uniform-4", "ilp-memory-1.23MiB"


@dataclass
class SeedProblem:
    """Per group and bitwidth: sensitivity, bytes and (optional) latency."""

    groups: dict[str, list[str]]
    choices: list[int]
    omega: np.ndarray  # [groups, choices]
    nbytes: np.ndarray  # [groups, choices]
    latency: np.ndarray | None = None  # [groups, choices], seconds per sample
    fixed_bytes: int = 0  # everything outside the layer space
    fixed_latency: float = 0.0  # the rest of the model

    @classmethod
    def build(cls, space: LayerSpace, groups: dict[str, list[str]], choices: list[int],
              omega=None, *, group_size: int, sym: bool, layer_latency=None,
              fixed_latency: float = 0.0) -> SeedProblem:
        """`omega(layer, bits)` and `layer_latency(layer, bits)` give per-layer values; without
        `omega` (sensitivities not computed yet) only the budgets can be checked."""
        def table(fn) -> np.ndarray:
            return np.array([[sum(fn(space[n], b) for n in members) for b in choices]
                             for members in groups.values()], dtype=float)
        return cls(
            groups=groups, choices=choices,
            omega=table(lambda layer, b: 0.0 if omega is None else omega(layer.name, b)),
            nbytes=table(lambda layer, b: layer_nbytes(layer, QuantSpec(b, group_size, sym))),
            latency=None if layer_latency is None else table(layer_latency),
            fixed_bytes=space.other_params * 2, fixed_latency=fixed_latency,
        )

    def memory_range(self) -> tuple[int, int]:
        """Total bytes of the smallest and the largest plan."""
        return (int(self.nbytes.min(axis=1).sum()) + self.fixed_bytes,
                int(self.nbytes.max(axis=1).sum()) + self.fixed_bytes)

    def check(self, memory_budget: float | None, latency_cap: float | None = None) -> None:
        """Raise `BudgetError` when no plan fits the memory budget or the latency cap."""
        smallest, _ = self.memory_range()
        if memory_budget is not None and memory_budget < smallest:
            raise BudgetError(f"no plan fits in {format_bytes(memory_budget)}: the smallest "
                              f"possible is {format_bytes(smallest)} (every layer at "
                              f"{min(self.choices)} bits); raise the memory budget")
        if latency_cap is None:
            return
        if self.latency is None:
            raise BitfrontError("a latency cap needs the latency table")
        fastest = self.latency.min(axis=1).sum() + self.fixed_latency
        if latency_cap < fastest:
            raise BudgetError(f"no plan runs within {latency_cap:.4g} s: the fastest "
                              f"takes {fastest:.4g} s; raise the latency budget")

    def solve(self, memory_budget: float, latency_cap: float | None = None) -> dict[str, int]:
        """The ILP: least total sensitivity within the budget (bytes of the whole model)."""
        self.check(memory_budget, latency_cap)
        n_groups, n_choices = self.omega.shape
        one_each = np.kron(np.eye(n_groups), np.ones(n_choices))
        constraints = [LinearConstraint(one_each, 1, 1),
                       LinearConstraint(self.nbytes.reshape(1, -1), -np.inf,
                                        memory_budget - self.fixed_bytes)]
        if latency_cap is not None:
            constraints.append(LinearConstraint(self.latency.reshape(1, -1), -np.inf,
                                                latency_cap - self.fixed_latency))
        result = milp(c=self.omega.reshape(-1), constraints=constraints,
                      integrality=np.ones(n_groups * n_choices), bounds=Bounds(0, 1))
        if result.x is None:
            raise BudgetError(f"no plan meets both the memory budget "
                              f"{format_bytes(memory_budget)} and the latency cap")
        picks = np.round(result.x).reshape(n_groups, n_choices).argmax(axis=1)
        return {group: self.choices[k] for group, k in zip(self.groups, picks, strict=True)}


def uniform_memory(problem: SeedProblem, bits: int) -> int:
    """Total bytes of the plan with every group at `bits` (one of the choices)."""
    return int(problem.nbytes[:, problem.choices.index(bits)].sum()) + problem.fixed_bytes


def seed_budgets(problem: SeedProblem, *, per_gap: int, budgets=(),
                 memory_budget: float | None = None) -> list[float]:
    """`per_gap` budgets spread evenly strictly between each adjacent pair of uniform plans
    of the choices, then `budgets` and `memory_budget` themselves; none above
    `memory_budget`; ascending."""
    levels = sorted(uniform_memory(problem, b) for b in problem.choices)
    out = {float(low + (high - low) * k / (per_gap + 1))
           for low, high in zip(levels, levels[1:], strict=False) for k in range(1, per_gap + 1)}
    out |= {float(b) for b in budgets}
    if memory_budget is not None:
        out = {b for b in out if b <= memory_budget} | {float(memory_budget)}
    smallest, _ = problem.memory_range()
    return sorted(b for b in out if b >= smallest)


def hawq_seeds(problem: SeedProblem, *, per_gap: int = 3, uniform=(2, 3, 4, 8),
               latency_cap: float | None = None, memory_budget: float | None = None,
               budgets=()) -> list[Seed]:
    """Uniform plans, then ILP solutions at the budgets of `seed_budgets`; duplicates
    dropped."""
    seeds: list[Seed] = []
    for bits in uniform:
        if bits in problem.choices:
            seeds.append(Seed(dict.fromkeys(problem.groups, bits), f"uniform-{bits}"))
    problem.check(memory_budget, latency_cap)
    for budget in seed_budgets(problem, per_gap=per_gap, budgets=budgets,
                               memory_budget=memory_budget):
        try:
            bits = problem.solve(budget, latency_cap)
        except BudgetError:
            continue  # feasible budgets, but not this one together with the latency cap
        seeds.append(Seed(bits, f"ilp-memory-{format_bytes(budget)}"))
    unique, seen = [], set()
    for seed in seeds:
        key = tuple(seed.bits[g] for g in problem.groups)
        if key not in seen:
            seen.add(key)
            unique.append(seed)
    return unique
