"""From a loaded model to a ready `PlanSearch`: candidates, HAWQ sensitivities, the latency
table and the proxy, each computed once and cached (candidate cache, sensitivity file beside
it, latency table per device)."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from bitfront.config import SCHEMA, Config, setting
from bitfront.errors import BitfrontError
from bitfront.models.base import CodeLM
from bitfront.objectives.latency import Workload, latency_backend, measure_latency_table
from bitfront.objectives.proxy import AccuracyProxy, ProxyConfig
from bitfront.objectives.sensitivity import (
    SensitivityConfig,
    cached_sensitivity,
    gptq_loss_sensitivity,
)
from bitfront.planner.preflight import prepare
from bitfront.planner.seeds import SeedProblem
from bitfront.planner.study import CONFIG_ATTR, SETTINGS_ATTR, PlanSearch, SearchConfig
from bitfront.quant.calibration import CalibrationConfig, calibration_set
from bitfront.quant.candidates import QuantizerSettings, build_candidates
from bitfront.space.layers import SpaceConfig, group_layers, layer_space


@dataclass(frozen=True)
class Setup(Config):
    """Everything a search depends on besides the search itself."""

    quantizer: QuantizerSettings = setting(factory=QuantizerSettings)
    space: SpaceConfig = setting(factory=SpaceConfig)
    calibration: CalibrationConfig = setting(factory=CalibrationConfig)
    sensitivity: SensitivityConfig = setting(factory=SensitivityConfig)
    proxy: ProxyConfig = setting(factory=ProxyConfig)
    latency: Workload = setting(factory=Workload)


def search_settings(config: SearchConfig, setup: Setup) -> dict:
    """The versioned settings a study records (and a joining worker must match)."""
    return {"schema": SCHEMA, "setup": setup.to_dict(), "search": config.to_dict()}


def build_search(lm: CodeLM, config: SearchConfig, setup: Setup, *, mbpp_source=None,
                 show_progress: bool = True) -> PlanSearch:
    space = layer_space(lm, **setup.space.to_dict())
    # An infeasible memory budget, or a latency backend that cannot time the model, fails
    # here, before any expensive stage.
    SeedProblem.build(space, group_layers(space, config.grouping), list(config.choices),
                      group_size=setup.quantizer.group_size,
                      sym=setup.quantizer.sym).check(config.memory_budget)
    timed = "latency" in config.objectives or config.latency_budget is not None
    if timed:
        latency_backend(lm, setup.latency)
    calibration = calibration_set(lm, setup.calibration, mbpp_source=mbpp_source)
    ranked = config.ilp_budgets > 0 and not config.cheap_sensitivity
    prepare(lm, space, calibration, setup, trials=config.trials, show=show_progress,
            stages=("calibration", "gptq", *(("sensitivity",) if ranked else ()), "trials"))
    candidates = build_candidates(lm, space, calibration, settings=setup.quantizer,
                                  show_progress=show_progress)
    sensitivity = None
    if config.ilp_budgets > 0 and config.cheap_sensitivity:
        sensitivity = gptq_loss_sensitivity(lm.name, candidates)
    elif ranked:
        sensitivity = cached_sensitivity(lm, candidates, calibration, setup.sensitivity,
                                         show_progress=show_progress)
    table = None
    if timed:
        table = measure_latency_table(lm, space, setup.latency, bits=config.choices,
                                      group_size=setup.quantizer.group_size,
                                      show_progress=show_progress)
    proxy = AccuracyProxy(lm, setup.proxy, mbpp_source=mbpp_source)
    return PlanSearch(lm, candidates, proxy, table, sensitivity, config,
                      settings=search_settings(config, setup), mbpp_source=mbpp_source)


def search_for_study(study: optuna.Study, *, lm: CodeLM | None = None, device: str | None = None,
                     mbpp_source=None, show_progress: bool = True) -> PlanSearch:
    """The `PlanSearch` a stored study was made with: its settings, on its model (loaded by
    name unless `lm` is given); candidates and sensitivities come from the cache."""
    from bitfront.models.load import load_model

    settings = study.user_attrs.get(SETTINGS_ATTR)
    if settings is None:
        raise BitfrontError(f"study {study.study_name!r} holds no bitfront settings")
    config = SearchConfig.from_dict(settings["search"])
    setup = Setup.from_dict(settings["setup"])
    lm = lm or load_model(study.user_attrs[CONFIG_ATTR]["model_name"], device=device,
                          show_progress=show_progress)
    return build_search(lm, config, setup, mbpp_source=mbpp_source,
                        show_progress=show_progress)
