"""From a loaded model to a ready `PlanSearch`: candidates, HAWQ sensitivities, the latency
table and the proxy, each computed once and cached (candidate cache, sensitivity file beside
it, latency table per device)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bitfront.models.base import CodeLM
from bitfront.objectives.latency import Workload, measure_latency_table
from bitfront.objectives.proxy import AccuracyProxy, ProxyConfig
from bitfront.objectives.sensitivity import cached_sensitivity, gptq_loss_sensitivity
from bitfront.quant.calibration import CalibrationConfig, calibration_set
from bitfront.quant.candidates import QuantizerSettings, build_candidates
from bitfront.search.study import PlanSearch, SearchConfig
from bitfront.space.layers import layer_space


@dataclass(frozen=True)
class Setup:
    """Everything a search depends on besides the search itself."""

    quantizer: QuantizerSettings = field(default_factory=QuantizerSettings)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    workload: Workload = field(default_factory=Workload)
    latency_dtype: str = "bfloat16"
    probes: int = 4
    trace_batches: int = 2
    hvp_method: str = "fd"
    include_head: bool = False
    include_embeddings: bool = False


def build_search(lm: CodeLM, config: SearchConfig, setup: Setup, *, mbpp_source=None,
                 show_progress: bool = True) -> PlanSearch:
    space = layer_space(lm, include_head=setup.include_head,
                        include_embeddings=setup.include_embeddings)
    calibration = calibration_set(lm, setup.calibration)
    candidates = build_candidates(lm, space, calibration, settings=setup.quantizer,
                                  show_progress=show_progress)
    sensitivity = None
    if config.ilp_budgets > 0 and config.cheap_sensitivity:
        sensitivity = gptq_loss_sensitivity(lm.name, candidates)
    elif config.ilp_budgets > 0:
        sensitivity = cached_sensitivity(lm, candidates, calibration, probes=setup.probes,
                                         method=setup.hvp_method,
                                         batches=setup.trace_batches,
                                         show_progress=show_progress)
    table = None
    if "latency" in config.objectives or config.latency_budget is not None:
        table = measure_latency_table(
            lm, space, setup.workload, bits=config.choices,
            group_size=setup.quantizer.group_size, dtype=getattr(torch, setup.latency_dtype),
            show_progress=show_progress)
    proxy = AccuracyProxy(lm, setup.proxy, mbpp_source=mbpp_source)
    return PlanSearch(lm, candidates, proxy, table, sensitivity, config)
