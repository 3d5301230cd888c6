"""Proxy fidelity: does the fast proxy rank bit plans the way full pass@1 does?

For a set of plans (uniform 2/3/4/8/16 bits and seeded random mixed plans spread over the
memory range) each plan is applied, scored by the proxy and evaluated with full pass@1;
Kendall's τ and Spearman's ρ between each of the proxy's accuracies (top-1, likelihood and
KL retention: `PROXIES`) and pass@1 are reported with 95% bootstrap intervals over the plans
(undefined when either side is constant, e.g. a model too weak to pass any task).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from bitfront.evaluators.harness import EvalConfig, evaluate
from bitfront.models.base import CodeLM
from bitfront.objectives.proxy import AccuracyProxy
from bitfront.quant.apply import PlanApplier
from bitfront.quant.candidates import Candidates
from bitfront.space.memory import plan_memory
from bitfront.space.plan import BitPlan
from bitfront.stats import Interval, bootstrap


def sample_plans(candidates: Candidates, model: str, *, mixed: int = 3, seed: int = 0
                 ) -> list[BitPlan]:
    """Uniform plans at every candidate bitwidth and 16, then `mixed` seeded random mixed
    plans (for fidelity and for checking the cost models)."""
    settings, space = candidates.settings, candidates.space
    plans = [BitPlan.uniform(space, model, b, settings.group_size, settings.sym,
                             name=f"uniform-{b}")
             for b in sorted({*settings.bits, 16})]
    plans += mixed_plans(candidates, model, mixed, seed=seed)
    return plans


def mixed_plans(candidates: Candidates, model: str, n: int, *, seed: int = 0
                ) -> list[BitPlan]:
    """`n` seeded random mixed plans spread over the memory range: plan k draws each layer's
    bitwidth around a level that rises from the lowest bitwidth (k = 0) to 16 (k = n - 1)."""
    settings, space = candidates.settings, candidates.space
    choices = sorted({*settings.bits, 16})
    rng = random.Random(seed)
    plans = []
    for k in range(n):
        level = k / max(n - 1, 1) * (len(choices) - 1)
        bits = {name: choices[min(len(choices) - 1, max(0, round(rng.gauss(level, 1.0))))]
                for name in space.names()}
        plans.append(BitPlan.from_bits(model, bits, settings.group_size, settings.sym,
                                       name=f"mixed-{k}"))
    return plans


# accuracy option (as in the study's `accuracy` setting) -> the retention it reads, in a
# fidelity row and in a stored `TrialMetrics` record.
PROXIES = {"top1": ("proxy_retention", "retention"),
           "likelihood": ("logprob_retention", "logprob_retention"),
           "kl": ("kl_retention", "kl_retention")}


def plan_model_key(lm: CodeLM, plan: BitPlan, candidates: Candidates) -> str:
    """What an evaluation of `lm` under `plan` is keyed by: the model, the plan's layers and
    the candidates they come from (re-quantizing with other settings changes the answers)."""
    blob = json.dumps({"layers": plan.to_dict()["layers"], "candidates": candidates.key},
                      sort_keys=True)
    return f"{lm.fingerprint()}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class Correlation:
    """How one proxy ranks the plans against pass@1."""

    kendall_tau: Interval | None
    spearman_rho: Interval | None
    note: str

    def to_dict(self) -> dict:
        return {"kendall_tau": self.kendall_tau and self.kendall_tau.to_dict(),
                "spearman_rho": self.spearman_rho and self.spearman_rho.to_dict(),
                "note": self.note}


@dataclass
class Fidelity:
    rows: list[dict]
    proxies: dict[str, Correlation]  # accuracy option (`PROXIES`) -> its rank correlation

    @property
    def kendall_tau(self) -> Interval | None:
        """τ of top-1 retention (the first proxy)."""
        return self.proxies["top1"].kendall_tau

    @property
    def spearman_rho(self) -> Interval | None:
        return self.proxies["top1"].spearman_rho

    @property
    def note(self) -> str:
        return self.proxies["top1"].note

    def best(self) -> str | None:
        """The proxy with the highest Kendall τ (None when no τ is defined)."""
        defined = {k: c.kendall_tau.estimate for k, c in self.proxies.items()
                   if c.kendall_tau is not None}
        return max(defined, key=defined.get) if defined else None

    def to_dict(self) -> dict:
        return {"rows": self.rows, "note": self.note,
                "kendall_tau": self.kendall_tau and self.kendall_tau.to_dict(),
                "spearman_rho": self.spearman_rho and self.spearman_rho.to_dict(),
                "proxies": {k: c.to_dict() for k, c in self.proxies.items()},
                "best": self.best()}


def _rank_statistic(fn):
    """A rank correlation that reads 0 (no association) on a resample where one side is
    constant, instead of NaN."""
    def statistic(a, b):
        value = fn(a, b).statistic
        return 0.0 if math.isnan(value) else float(value)
    return statistic


def correlations(proxy: list[float], truth: list[float], *, seed: int = 0
                 ) -> tuple[Interval | None, Interval | None, str]:
    """Kendall τ and Spearman ρ with 95% bootstrap intervals over the plans (resampled in
    pairs), or None with the reason when a side is constant."""
    if len(set(truth)) < 2 or len(set(proxy)) < 2:
        side = "pass@1" if len(set(truth)) < 2 else "the proxy"
        return None, None, f"undefined: {side} is the same for every plan"
    tau = bootstrap(_rank_statistic(stats.kendalltau), proxy, truth, seed=seed)
    rho = bootstrap(_rank_statistic(stats.spearmanr), proxy, truth, seed=seed)
    return tau, rho, ""


def measure_fidelity(lm: CodeLM, candidates: Candidates, plans: list[BitPlan],
                     proxy: AccuracyProxy, eval_config: EvalConfig, out_dir: Path, *,
                     mbpp_source=None, show_progress: bool = True) -> Fidelity:
    """Proxy retention and full pass@1 for every plan (each evaluation resumable)."""
    applier = PlanApplier(lm, candidates)
    rows = []
    for plan in plans:
        with applier.applied(plan):
            score = proxy()
            report = evaluate(lm, eval_config, out_dir / f"{plan.meta['name']}.json",
                              model_key=plan_model_key(lm, plan, candidates),
                              mbpp_source=mbpp_source, show_progress=show_progress)
        memory = plan_memory(candidates.space, plan)
        rows.append({"plan": plan.meta["name"], "avg_bits": memory.avg_bits,
                     "proxy_retention": score.retention,
                     "proxy_retention_interval": [score.retention_low, score.retention_high],
                     "logprob_retention": score.logprob_retention,
                     "kl_retention": score.kl_retention,
                     "kl_retention_interval": [score.kl_retention_low,
                                               score.kl_retention_high],
                     "kl": score.kl,
                     "pass@1": report["pass@1"],
                     "pass@1_interval": report["pass@1_interval"]})
    truth = [r["pass@1"] for r in rows]
    proxies = {name: Correlation(*correlations([r[key] for r in rows], truth))
               for name, (key, _) in PROXIES.items()}
    return Fidelity(rows=rows, proxies=proxies)
