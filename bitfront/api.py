"""bitfront's Python API: the user questions as typed functions (re-exported by `bitfront`).

    import bitfront
    lm = bitfront.load_model("pocket-ar-micro")
    result = bitfront.search(lm, bitfront.SearchConfig(trials=12), storage="memory")
    answer = bitfront.best_under(result, memory="2MiB", lm=lm)  # searched at 2 MiB
    bitfront.export(result.plan(answer.point), "json", "plan.json")

Every function takes the same config dataclasses that study specs and the command line
build; nothing here has logic of its own.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import optuna
import torch

from bitfront.errors import BitfrontError
from bitfront.evaluators.harness import EvalConfig
from bitfront.evaluators.harness import evaluate as _evaluate
from bitfront.exports.files import CHECKPOINTS, write_export
from bitfront.models.base import CodeLM
from bitfront.models.load import load_model as _load_model
from bitfront.objectives.sensitivity import Sensitivity, cached_sensitivity
from bitfront.paths import check_writable, run_dir
from bitfront.planner.front import NoPlanError, Point, SearchResult, accuracy_metric
from bitfront.planner.front import best_under as _best_under
from bitfront.planner.pipeline import Setup, build_search, search_for_study, search_settings
from bitfront.planner.preflight import check_study, prepare
from bitfront.planner.refine import Answer, RefineConfig, answer, cannot_refine, refined
from bitfront.planner.refine import refine as _refine
from bitfront.planner.study import (
    SearchConfig,
    default_storage,
    open_storage,
    storage_lock,
    write_pointer,
)
from bitfront.quant.apply import candidates_for_plan, packed_module
from bitfront.quant.calibration import calibration_set
from bitfront.quant.candidates import Candidates
from bitfront.quant.candidates import build_candidates as _build_candidates
from bitfront.runtimes.llama_lm import EVAL_RUNTIMES, LlamaLM
from bitfront.space.layers import layer_space
from bitfront.space.plan import BitPlan
from bitfront.studies.spec import StudySpec, load_spec
from bitfront.units import parse_bytes, parse_seconds

__all__ = ["load_model", "build_candidates", "sensitivity", "search", "best_under", "quantize",
           "export", "evaluate", "run_study", "NoPlanError"]


def load_model(name: str, *, device: str | None = None, dtype: torch.dtype | str | None = None,
               attn: str | None = None, show_progress: bool = True) -> CodeLM:
    """A subject by name: known model, pocket model, local directory, .gguf file or hub id."""
    return _load_model(name, device=device, dtype=dtype, attn=attn, show_progress=show_progress)


def build_candidates(lm: CodeLM, setup: Setup = Setup(), *, mbpp: str | None = None,
                     show_progress: bool = True) -> Candidates:
    """GPTQ candidates of every quantizable layer at every bitwidth (cached on disk)."""
    return _candidates(lm, setup, mbpp, show_progress)[0]


def _candidates(lm: CodeLM, setup: Setup, mbpp: str | None, show_progress: bool,
                stages: tuple[str, ...] = ("calibration", "gptq")):
    """The candidates of `setup` and the calibration set they were computed from (the cost
    of `stages` estimated and checked first)."""
    space = layer_space(lm, **setup.space.to_dict())
    calibration = calibration_set(lm, setup.calibration, mbpp_source=mbpp)
    prepare(lm, space, calibration, setup, stages=stages, show=show_progress)
    return _build_candidates(lm, space, calibration, settings=setup.quantizer,
                             show_progress=show_progress), calibration


def sensitivity(lm: CodeLM, setup: Setup = Setup(), *, mbpp: str | None = None,
                show_progress: bool = True) -> Sensitivity:
    """HAWQ sensitivity Ω of every layer at every candidate bitwidth (cached on disk)."""
    candidates, calibration = _candidates(lm, setup, mbpp, show_progress,
                                          ("calibration", "gptq", "sensitivity"))
    return cached_sensitivity(lm, candidates, calibration, setup.sensitivity,
                              show_progress=show_progress)


def search(lm: CodeLM, config: SearchConfig = SearchConfig(), setup: Setup = Setup(), *,
           storage: str | optuna.storages.BaseStorage | None = None,
           study_name: str | None = None, worker: int = 0, mbpp: str | None = None,
           record: str | Path | None = None, refine: RefineConfig = RefineConfig(),
           show_progress: bool = True) -> SearchResult:
    """The Pareto front of bit plans. `storage`: an Optuna storage object, a URL
    (sqlite:///…, postgresql://…), a journal file, "memory", or None for
    runs/search/NAME/study.db. A study in a URL storage is recorded in the directory `record`
    (by default runs/search/NAME when `storage` is None) as the search starts, so that
    `bitfront best` finds it while it runs and after it was killed. Under a memory or
    latency budget the search ends with a refinement at the budget (`refine`), so the best
    plan under it is searched for, not only looked up."""
    name = study_name or run_dir("search", lm.name).name
    url = storage if storage is not None else default_storage(name)
    if record is None and storage is None:
        record = run_dir("search", name)
    # Fail now, before any expensive stage: an unwritable record directory, an unreachable
    # storage, a study of this name made with other settings.
    if record is not None:
        check_writable(Path(record))
    check_study(open_storage(url), name, search_settings(config, setup), lm.fingerprint())
    planner = build_search(lm, config, setup, mbpp_source=mbpp, show_progress=show_progress)
    if record is not None and isinstance(url, str):
        write_pointer(Path(record), url, name, lm.name)
    study = planner.run(url, name, config.trials, worker=worker, show_progress=show_progress)
    budgets = {"memory": config.memory_budget, "latency": config.latency_budget}
    if any(budgets.values()) and refined(study, **budgets) is None \
            and not cannot_refine(study, url, refine):
        _refine(planner, study, **budgets, config=refine, lock=partial(storage_lock, url),
                show_progress=show_progress)
    return SearchResult.of(study, storage=url)


def best_under(result: SearchResult, *, memory: int | str | None = None,
               latency: float | str | None = None, refine: RefineConfig = RefineConfig(),
               lm: CodeLM | None = None, device: str | None = None, mbpp: str | None = None,
               show_progress: bool = True) -> Answer:
    """The most accurate plan within the budgets, searched at them: the ILP at the budget
    refined by a local search that keeps within it (`refine` bounds the work; trials are
    recorded in the study, so asking again is instant). The study's model is `lm`, else
    loaded by name. A result without its storage, or `refine.evaluations == 0`, is a lookup
    (`answer.how` says which). `NoPlanError` if nothing fits."""
    memory = parse_bytes(memory) if isinstance(memory, str) else memory
    latency = parse_seconds(latency) if isinstance(latency, str) else latency
    if memory is None and latency is None:
        raise BitfrontError("give a memory and/or a latency budget")
    if result.storage is None:
        return Answer(_best_under(result.points, memory=memory, latency=latency,
                                  accuracy=accuracy_metric(result.config)), "lookup",
                      "a lookup among the result's trials: it carries no study storage")
    study = optuna.load_study(study_name=result.study, storage=open_storage(result.storage))
    return answer(study, result.storage, memory=memory, latency=latency, config=refine,
                  open_search=partial(search_for_study, study, lm=lm, device=device,
                                      mbpp_source=mbpp, show_progress=show_progress),
                  show_progress=show_progress)


def quantize(lm: CodeLM, plan: BitPlan, candidates: Candidates | None = None, *,
             mbpp: str | None = None) -> torch.nn.Module:
    """A copy of `lm`'s network carrying `plan`'s packed low-bit weights (the plan's own GPTQ
    candidates, computed if not cached), like torchao's `quantize_`."""
    candidates = candidates or candidates_for_plan(lm, plan, mbpp_source=mbpp)
    return packed_module(lm, plan, candidates)


def export(plan: BitPlan | tuple[SearchResult, Point], format: str, path: str | Path, *,
           lm: CodeLM | None = None, mbpp: str | None = None) -> Path:
    """Write `plan` (or a search result's point, with its metrics and provenance) in `format`
    (json, gptqmodel, llama-cpp, compressed-tensors, gguf) to `path`. A checkpoint format needs
    `lm`, whose candidates for the plan are loaded from the cache (or computed); gguf needs
    `lm` and the `bitfront[llama]` extra (llama.cpp quantizes it)."""
    metrics, provenance = {}, {}
    if isinstance(plan, tuple):
        result, point = plan
        metrics = point.metrics.to_dict()
        provenance = {"study": result.study, "trial": point.number, "origin": point.origin,
                      "candidates": result.config["candidates"]}
        plan = result.plan(point)
    candidates = None
    if format in CHECKPOINTS and lm is not None:
        candidates = candidates_for_plan(lm, plan, mbpp_source=mbpp)
    return write_export(plan, format, Path(path), lm=lm, candidates=candidates,
                        metrics=metrics, provenance=provenance, mbpp_source=mbpp)


def evaluate(lm: CodeLM | str | Path, config: EvalConfig = EvalConfig(), *,
             plan: BitPlan | None = None, out: str | Path | None = None,
             mbpp: str | None = None, runtime: str = "torch", show_progress: bool = True) -> dict:
    """Full pass@k of `lm` (a model, or a name to load; with `plan` applied, if given) through
    the sandbox; resumable through the journal beside `out`. With `runtime="llama.cpp"`, `lm`
    is a .gguf file and llama.cpp writes the answers (default `out`: BENCH-llama.cpp.json)."""
    from bitfront.objectives.fidelity import plan_model_key
    from bitfront.quant.apply import PlanApplier

    if runtime not in EVAL_RUNTIMES:
        raise BitfrontError(f"unknown runtime {runtime!r}; choose from {EVAL_RUNTIMES}")
    if runtime == "llama.cpp":
        if plan is not None:
            raise BitfrontError("llama.cpp runs a GGUF as it is: export the plan with "
                                "`--format gguf` and evaluate that file")
        if isinstance(lm, CodeLM):
            raise BitfrontError("llama.cpp loads the model itself: pass the .gguf file's path")
        out = Path(out) if out else run_dir("eval", str(lm)) / f"{config.bench}-llama.cpp.json"
        return _evaluate(LlamaLM(lm), config, out, mbpp_source=mbpp,
                         show_progress=show_progress)
    if not isinstance(lm, CodeLM):
        lm = load_model(str(lm), show_progress=show_progress)
    out = Path(out) if out else run_dir("eval", lm.name) / f"{config.bench}.json"
    if plan is None:
        return _evaluate(lm, config, out, mbpp_source=mbpp, show_progress=show_progress)
    candidates = candidates_for_plan(lm, plan, mbpp_source=mbpp, show_progress=show_progress)
    with PlanApplier(lm, candidates).applied(plan):
        return _evaluate(lm, config, out, model_key=plan_model_key(lm, plan, candidates),
                         mbpp_source=mbpp, show_progress=show_progress)


def run_study(spec: StudySpec | str | Path, root: str | Path = "runs", *,
              show_progress: bool = True) -> Path:
    """Run (or resume) a study; returns its run directory (report.md, report.json, plots)."""
    from bitfront.studies.runner import run_study as _run_study

    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    return _run_study(spec, Path(root), show_progress=show_progress)
