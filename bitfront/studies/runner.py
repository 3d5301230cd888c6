"""The study runner: for each model of a spec, candidates → sensitivities → uniform table →
seeded search; then, at the report's budgets (known once every model's uniform table is),
answers refined at each budget with the fitting uniform plan beside them (pass@1 on the first
benchmark) → verified front → exports → mixed plans for the fidelity table; then the report.

Every stage writes `runs/<study>/<label>/<stage>.json` with a key derived from the spec
sections it depends on; a stage whose file exists with the same key is not recomputed, and a
model is loaded only when some stage has work to do, so re-running a finished study only
rebuilds the report. Inside a stage the work resumes too: candidates are cached, each
evaluation keeps a journal, the search continues its Optuna study.
"""

from __future__ import annotations

import json
import time
from functools import cached_property, partial
from pathlib import Path

import torch
from rich.console import Console

from bitfront.errors import NoPlanError
from bitfront.evaluators.harness import evaluate
from bitfront.exports.files import write_export
from bitfront.models import load_model
from bitfront.models.load import resolve_model_path
from bitfront.objectives.fidelity import mixed_plans, plan_model_key
from bitfront.paths import check_writable, read_cached, write_atomic
from bitfront.planner.front import Point, SearchResult, plan_of
from bitfront.planner.metrics import TrialMetrics
from bitfront.planner.pipeline import build_search
from bitfront.planner.refine import best_recorded, refine, refined
from bitfront.planner.study import open_storage, storage_lock, write_pointer
from bitfront.runtimes.llama_cpp import llama_cpp_installed
from bitfront.space.plan import BitPlan
from bitfront.studies.spec import SETUP_KEYS, STAGE_FORMAT, StudySpec, stage_key


class ModelRun:
    """One model of a study, stage by stage."""

    def __init__(self, spec: StudySpec, label: str, model: str, directory: Path, *,
                 console: Console, show_progress: bool = True):
        self.spec, self.label, self.model = spec, label, model
        self.dir = directory
        self.console, self.show_progress = console, show_progress
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- lazily built: only when a stage has work to do ----------------------------------

    @cached_property
    def lm(self):
        self.console.print(f"[bold]{self.label}[/]: loading {self.model}")
        return load_model(self.model, device=self.spec.device or None,
                          show_progress=self.show_progress)

    @cached_property
    def search(self):
        self.console.print(f"[bold]{self.label}[/]: candidates, sensitivities, latency table, "
                           "proxy")
        return build_search(self.lm, self.spec.search, self.spec.setup,
                            mbpp_source=self.spec.mbpp or None,
                            show_progress=self.show_progress)

    # --- stages --------------------------------------------------------------------------

    def stage(self, name: str, compute) -> dict:
        key = stage_key(self.spec, self.model, name)
        path = self.dir / f"{name}.json"
        stored = read_cached(path, lambda data: {"result": data["result"]}
                             if data["key"] == key else None)  # damaged: recomputed
        if stored is not None:
            return stored["result"]
        self.console.print(f"[bold]{self.label}[/]: {name}")
        start = time.monotonic()
        result = compute()
        self.console.print(f"[bold]{self.label}[/]: {name} done in "
                           f"{time.monotonic() - start:.0f} s")
        write_atomic(path, json.dumps({"key": key, "result": result}, indent=1) + "\n")
        return result

    def run_search(self) -> dict:
        """The stages up to the search."""
        return {
            "label": self.label,
            "model": self.stage("model", self._model_info),
            "sensitivity": self.stage("sensitivity", self._sensitivity),
            "uniform": self.stage("uniform", self._uniform),
            "search": self.stage("search", self._search),
        }

    def run_answers(self, results: dict, budgets: list[int]) -> None:
        """The stages after the search, into `results`: answers at `budgets` (their trials
        join the study, whose front then replaces the search's), the verified front, exports
        and mixed plans."""
        answers = self.stage("answers", lambda: self._answers(results["uniform"], budgets))
        results["answers"], results["search"] = answers["answers"], answers["search"]
        chosen = self._chosen(results["search"])
        results["verified"] = self.stage("verified", lambda: self._verified(*chosen))
        results["exports"] = self.stage("exports", lambda: self._exports(*chosen))
        results["mixed"] = self.stage("mixed", self._mixed)

    def release(self) -> None:
        """Free the model (and what holds it) before another one loads."""
        self.__dict__.pop("search", None)
        self.__dict__.pop("lm", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _mixed(self) -> list[dict]:
        """Seeded random mixed plans spread over the memory range, with proxy and full
        pass@1 on the fidelity benchmark (the first): with the uniform and verified plans,
        the points of the fidelity table."""
        search, rows = self.search, []
        for plan in mixed_plans(search.candidates, self.lm.fingerprint(),
                                self.spec.verify.mixed, seed=self.spec.search.seed):
            rows.append({"plan": plan.meta["name"], **search.evaluate(plan).to_dict(),
                         **self._pass_at_1(plan, self.spec.verify.benches[:1])})
        return rows

    def _model_info(self) -> dict:
        lm = self.lm
        return {"name": self.model, "family": lm.family, "fingerprint": lm.fingerprint(),
                "parameters": sum(p.numel() for p in lm.module.parameters()),
                "quantizable_layers": len(lm.quantizable())}

    def _sensitivity(self) -> dict:
        sensitivity = self.search.sensitivity
        return sensitivity.to_dict() if sensitivity is not None else {}

    def _pass_at_1(self, plan: BitPlan, benches: tuple[str, ...] | None = None,
                   limits: dict[str, int | None] | None = None) -> dict[str, dict]:
        """Full pass@1 of `plan` on `benches` (default: every benchmark of the spec) with
        `limits` tasks (default: the spec's), each evaluation resumable.
        Files are named by what the answers depend on (plan, candidates, settings): a front
        plan that equals a uniform one reuses its evaluation, and an edited spec never meets
        a journal it cannot use. Returns {"pass@1": {bench: value}, "pass@1_interval":
        {bench: [low, high]}} (95% bootstrap intervals over the tasks)."""
        results: dict[str, dict] = {"pass@1": {}, "pass@1_interval": {}}
        model_key = plan_model_key(self.lm, plan, self.search.candidates)
        settings = self.spec.digest("evaluation", "device", "mbpp")
        with self.search.applier.applied(plan):
            for bench in benches or self.spec.verify.benches:
                limit = (limits or {}).get(bench, self.spec.verify.limits.get(
                    bench, self.spec.evaluation.limit))
                config = self.spec.evaluation.replace(bench=bench, limit=limit)
                name = f"{bench}-{config.key(model_key, {'settings': settings})[:12]}"
                report = evaluate(self.lm, config, self.dir / "evals" / f"{name}.json",
                                  model_key=model_key, mbpp_source=self.spec.mbpp or None,
                                  show_progress=self.show_progress)
                for key in results:
                    results[key][bench] = report[key]
        return results

    def _uniform(self) -> list[dict]:
        search = self.search
        settings = search.candidates.settings
        rows = []
        for bits in self.spec.verify.uniform_bits:
            plan = BitPlan.uniform(search.space, self.lm.fingerprint(), bits,
                                   settings.group_size, settings.sym)
            metrics = search.evaluate(plan)
            rows.append({"bits": bits, **metrics.to_dict(), **self._pass_at_1(plan)})
        return rows

    @property
    def storage(self) -> str:
        return self.spec.storage or f"sqlite:///{(self.dir / 'search.db').resolve()}"

    @property
    def study_name(self) -> str:
        """Named by everything its trials depend on but the trial count, so raising `trials`
        continues the study and any other edit starts a fresh one."""
        setting = self.spec.digest(*SETUP_KEYS, "search", leave_out=("search.trials",))
        return f"{self.spec.name}-{self.label}-v{STAGE_FORMAT}-{setting[:8]}"

    def _search(self) -> dict:
        study = self.search.run(self.storage, self.study_name, self.spec.search.trials,
                                show_progress=self.show_progress)
        # `bitfront best runs/STUDY/LABEL` finds the study by this pointer.
        write_pointer(self.dir, self.storage, self.study_name, self.model)
        return {"storage": self.storage, **SearchResult.of(study).to_dict()}

    def _answers(self, uniform: list[dict], budgets: list[int]) -> dict:
        """At each budget: the best plan refined there and the largest uniform plan that
        fits, each with pass@1 on the first benchmark (`verify.equal_memory_limit` tasks)."""
        search, spec = self.search, self.spec
        study = search.open(self.storage, self.study_name)
        bench = spec.verify.benches[0]
        limits = {bench: spec.verify.equal_memory_limit}
        rows = []
        for budget in budgets:
            try:
                refinement = refined(study, budget, None) or refine(
                    search, study, memory=budget, config=spec.refine,
                    lock=partial(storage_lock, self.storage),
                    show_progress=self.show_progress).to_dict()
                point = best_recorded(SearchResult.of(study), budget, None)
            except NoPlanError as exc:
                rows.append({"budget": budget, "mixed": None, "note": str(exc)})
                continue
            fits = [u for u in uniform if u["memory_bytes"] <= budget]
            row = {"budget": budget, "refinement": refinement,
                   "mixed": {"trial": point.number, "origin": point.origin, "bits": point.bits,
                             **point.metrics.to_dict(),
                             **self._pass_at_1(search.plan(point.bits), (bench,), limits)}}
            if fits:
                u = max(fits, key=lambda u: u["memory_bytes"])
                plan = BitPlan.uniform(search.space, self.lm.fingerprint(), u["bits"],
                                       search.candidates.settings.group_size,
                                       search.candidates.settings.sym)
                row["uniform"] = {**{k: v for k, v in u.items() if not k.startswith("pass@")},
                                  **self._pass_at_1(plan, (bench,), limits)}
            rows.append(row)
        return {"answers": rows, "search": {"storage": self.storage,
                                            **SearchResult.of(study).to_dict()}}

    def _chosen(self, result: dict) -> tuple[list[dict], dict]:
        """The front plans of the search `result` to verify: the knee, then the other front
        plans spread evenly by memory (the cheapest first, the dearest too when two or more
        are wanted)."""
        by_trial = {p["trial"]: p for p in result["points"]}
        front = sorted((by_trial[n] for n in result["front"]), key=lambda p: p["memory_bytes"])
        wanted = self.spec.verify.front
        chosen = [by_trial[result["knee"]]] if result["knee"] is not None and wanted else []
        others = [p for p in front if p not in chosen]
        n = min(wanted - len(chosen), len(others))
        if n > 0:
            step = (len(others) - 1) / max(n - 1, 1)
            chosen += [others[round(i * step)] for i in range(n)]
        return chosen, result["config"]

    def _plan(self, point: dict, config: dict) -> BitPlan:
        return plan_of(Point(number=point["trial"], bits=point["bits"], values=(),
                             metrics=TrialMetrics.from_dict(point), feasible=point["feasible"],
                             origin=point["origin"]), config)

    def _verified(self, chosen: list[dict], config: dict) -> list[dict]:
        rows = []
        for point in chosen:
            plan = self._plan(point, config)
            rows.append({"trial": point["trial"], "origin": point["origin"],
                         **{k: v for k, v in point.items() if k not in ("bits",)},
                         **self._pass_at_1(plan)})
        return rows

    def _exports(self, chosen: list[dict], config: dict) -> list[str]:
        folder = self.dir / "exports"
        folder.mkdir(exist_ok=True)
        paths = []
        for point in chosen:
            plan = self._plan(point, config)
            stem = folder / f"trial-{point['trial']}"
            provenance = {"study": self.spec.name, "model": self.model, "trial": point["trial"],
                          "origin": point["origin"], "candidates": config["candidates"]}
            metrics = {k: v for k, v in point.items() if k not in ("bits", "trial", "origin")}
            formats = {"json": ".plan.json", "llama-cpp": ".llama-cpp.txt"}
            if any(s.quantized for s in plan.specs.values()):
                formats["gptqmodel"] = ".gptqmodel.json"
            if llama_cpp_installed() and self.lm.family == "ar":
                formats["gguf"] = ".gguf"  # llama.cpp has no diffusion architecture
            for format, suffix in formats.items():
                path = write_export(plan, format, stem.with_suffix(suffix), metrics=metrics,
                                    provenance=provenance, mbpp_source=self.spec.mbpp or None,
                                    lm=self.lm if format == "gguf" else None)
                paths.append(str(path))
        return paths


def run_study(spec: StudySpec, root: Path = Path("runs"), *, show_progress: bool = True,
              console: Console | None = None) -> Path:
    """Run (or resume, or just re-report) a study; returns its run directory."""
    from bitfront.studies.report import write_report

    console = console or Console(stderr=True, quiet=not show_progress)
    run_dir = root / spec.name
    # Fail before any model's stages: an unwritable run directory, an unreachable storage,
    # an unknown model.
    check_writable(run_dir)
    if spec.storage:
        open_storage(spec.storage)
    write_atomic(run_dir / "spec.json", spec.to_json() + "\n")
    for model in spec.models.values():
        resolve_model_path(model, show_progress=show_progress)
    runs = [ModelRun(spec, label, model, run_dir / label, console=console,
                     show_progress=show_progress) for label, model in spec.models.items()]
    results = []
    for run in runs:
        results.append(run.run_search())
        run.release()
    budgets = report_budgets(spec, results)
    for run, result in zip(runs, results, strict=True):
        run.run_answers(result, budgets)
        run.release()
    write_report(spec, run_dir, results, budgets)
    return run_dir


def report_budgets(spec: StudySpec, results: list[dict]) -> list[int]:
    """The spec's budgets, else where quantization starts to bite: the uniform 3-bit size
    and halfway from there down to the uniform 2-bit size (the larger model's)."""
    if spec.report.budgets:
        return list(spec.report.budgets)

    def size(bits: int) -> int | None:
        sizes = [u["memory_bytes"] for res in results for u in res["uniform"] if u["bits"] == bits]
        return int(max(sizes)) if sizes else None

    three, two = size(3), size(2)
    if three is None:
        return [b for b in (size(4),) if b is not None]
    return [three] + ([(three + two) // 2] if two is not None else [])
