"""Proxy fidelity: does the fast proxy rank bit plans the way full pass@1 does?

For a set of plans (uniform 2/3/4/8/16 bits and seeded random mixed plans) each plan is
applied, scored by the proxy and evaluated with full pass@1; Kendall's τ and Spearman's ρ
between the two are reported (undefined when either side is constant, e.g. a model too weak
to pass any task).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy import stats

from bitfront.evaluators.harness import EvalConfig, evaluate
from bitfront.models.base import CodeLM
from bitfront.objectives.proxy import AccuracyProxy
from bitfront.quant.apply import PlanApplier
from bitfront.quant.candidates import Candidates
from bitfront.space.memory import plan_memory
from bitfront.space.plan import BitPlan


def sample_plans(candidates: Candidates, model: str, *, mixed: int = 3, seed: int = 0
                 ) -> list[BitPlan]:
    """Uniform plans at every candidate bitwidth and 16, then `mixed` seeded random mixed
    plans (for fidelity and for checking the cost models)."""
    settings, space = candidates.settings, candidates.space
    plans = [BitPlan.uniform(space, model, b, settings.group_size, settings.sym,
                             name=f"uniform-{b}")
             for b in sorted({*settings.bits, 16})]
    rng = random.Random(seed)
    choices = sorted({*settings.bits, 16})
    for k in range(mixed):
        bits = {name: rng.choice(choices) for name in space.names()}
        plans.append(BitPlan.from_bits(model, bits, settings.group_size, settings.sym,
                                       name=f"mixed-{k}"))
    return plans


def plan_model_key(lm: CodeLM, plan: BitPlan, candidates: Candidates) -> str:
    """What an evaluation of `lm` under `plan` is keyed by: the model, the plan's layers and
    the candidates they come from (re-quantizing with other settings changes the answers)."""
    blob = json.dumps({"layers": plan.to_dict()["layers"], "candidates": candidates.key},
                      sort_keys=True)
    return f"{lm.fingerprint()}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class Fidelity:
    rows: list[dict]
    kendall_tau: float | None
    spearman_rho: float | None
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def correlations(proxy: list[float], truth: list[float]) -> tuple[float | None, float | None,
                                                                  str]:
    if len(set(truth)) < 2 or len(set(proxy)) < 2:
        side = "pass@1" if len(set(truth)) < 2 else "the proxy"
        return None, None, f"undefined: {side} is the same for every plan"
    tau = float(stats.kendalltau(proxy, truth).statistic)
    rho = float(stats.spearmanr(proxy, truth).statistic)
    return (None if math.isnan(tau) else tau), (None if math.isnan(rho) else rho), ""


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
                     "logprob_retention": score.logprob_retention,
                     "pass@1": report["pass@1"]})
    tau, rho, note = correlations([r["proxy_retention"] for r in rows],
                                  [r["pass@1"] for r in rows])
    return Fidelity(rows=rows, kendall_tau=tau, spearman_rho=rho, note=note)
