"""The study runner: for each model of a spec, candidates → sensitivities → uniform table →
seeded search → verified front → exports, then the report.

Every stage writes `runs/<study>/<label>/<stage>.json` with a key derived from the spec
sections it depends on; a stage whose file exists with the same key is not recomputed, and a
model is loaded only when some stage has work to do, so re-running a finished study only
rebuilds the report. Inside a stage the work resumes too: candidates are cached, each
evaluation keeps a journal, the search continues its Optuna study.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path

import torch
from rich.console import Console

from bitfront.evaluators.harness import EvalConfig, evaluate
from bitfront.export.formats import export_json, gptqmodel_config, llama_cpp_args
from bitfront.models import load_model
from bitfront.models.diffusion_sampling import DiffusionOptions
from bitfront.objectives.fidelity import plan_model_key
from bitfront.objectives.latency import Workload
from bitfront.objectives.proxy import ProxyConfig
from bitfront.paths import write_atomic
from bitfront.quant.calibration import CalibrationConfig
from bitfront.quant.candidates import QuantizerSettings
from bitfront.search.front import (
    hypervolume,
    knee,
    pareto_front,
    plan_of,
    points,
    reference_point,
    study_config,
    trial_metrics,
)
from bitfront.search.pipeline import Setup, build_search
from bitfront.search.study import SearchConfig
from bitfront.space.plan import BitPlan
from bitfront.studies.spec import SETUP_KEYS, STAGE_FORMAT, StudySpec, stage_key
from bitfront.units import parse_bytes, parse_seconds


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
        lm = load_model(self.model, device=self.spec.device or None,
                        show_progress=self.show_progress)
        if lm.family == "diffusion":
            ev = self.spec.evaluation
            lm.diffusion = DiffusionOptions(steps=ev.diffusion_steps or None,
                                            alg=ev.diffusion_alg)
        return lm

    @cached_property
    def search(self):
        self.console.print(f"[bold]{self.label}[/]: candidates, sensitivities, latency table, "
                           "proxy")
        return build_search(self.lm, self.search_config(), self.setup(),
                            mbpp_source=self.spec.evaluation.mbpp or None,
                            show_progress=self.show_progress)

    def setup(self) -> Setup:
        s = self.spec
        return Setup(
            quantizer=QuantizerSettings(bits=tuple(s.quantizer.bits),
                                        group_size=s.quantizer.group_size, sym=s.quantizer.sym,
                                        act_order=s.quantizer.act_order,
                                        static_groups=s.quantizer.static_groups,
                                        percdamp=s.quantizer.percdamp),
            calibration=CalibrationConfig(n_samples=s.calibration.samples,
                                          seq_len=s.calibration.seq_len,
                                          seed=s.calibration.seed,
                                          mask_aware=s.calibration.mask_aware,
                                          mbpp=s.evaluation.mbpp),
            proxy=ProxyConfig(n_tasks=s.proxy.tasks, seed=s.proxy.seed),
            workload=Workload(prompt_len=s.latency.prompt_len, answer_len=s.latency.answer_len,
                              steps=s.latency.steps or None),
            latency_dtype=s.latency.dtype, probes=s.sensitivity.probes,
            trace_batches=s.sensitivity.batches, hvp_method=s.sensitivity.method,
            include_head=s.space.include_head, include_embeddings=s.space.include_embeddings)

    def search_config(self) -> SearchConfig:
        s = self.spec.search
        return SearchConfig(
            objectives=tuple(s.objectives), accuracy=s.accuracy, choices=tuple(s.choices),
            grouping=self.spec.space.grouping, sampler=s.sampler, population=s.population,
            seed=s.seed, ilp_budgets=s.ilp_budgets,
            memory_budget=parse_bytes(s.memory_budget) if s.memory_budget else None,
            latency_budget=parse_seconds(s.latency_budget) if s.latency_budget else None)

    # --- stages --------------------------------------------------------------------------

    def stage(self, name: str, compute) -> dict:
        key = stage_key(self.spec, self.model, name)
        path = self.dir / f"{name}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["result"]
        self.console.print(f"[bold]{self.label}[/]: {name}")
        start = time.monotonic()
        result = compute()
        self.console.print(f"[bold]{self.label}[/]: {name} done in "
                           f"{time.monotonic() - start:.0f} s")
        write_atomic(path, json.dumps({"key": key, "result": result}, indent=1) + "\n")
        return result

    def run(self) -> dict:
        results = {
            "label": self.label,
            "model": self.stage("model", self._model_info),
            "sensitivity": self.stage("sensitivity", self._sensitivity),
            "uniform": self.stage("uniform", self._uniform),
            "search": self.stage("search", self._search),
        }
        chosen = self._chosen(results["search"])
        results["verified"] = self.stage("verified", lambda: self._verified(*chosen))
        results["exports"] = self.stage("exports", lambda: self._exports(*chosen))
        return results

    def _model_info(self) -> dict:
        lm = self.lm
        return {"name": self.model, "family": lm.family, "fingerprint": lm.fingerprint(),
                "parameters": sum(p.numel() for p in lm.module.parameters()),
                "quantizable_layers": len(lm.quantizable())}

    def _sensitivity(self) -> dict:
        sensitivity = self.search.sensitivity
        return sensitivity.to_dict() if sensitivity is not None else {}

    def _eval_config(self, bench: str) -> EvalConfig:
        ev = self.spec.evaluation
        return EvalConfig(bench=bench, limit=ev.limit or None, max_new_tokens=ev.max_new_tokens,
                          temperature=ev.temperature, top_p=ev.top_p,
                          batch_size=ev.batch_size, timeout=ev.timeout)

    def _pass_at_1(self, plan: BitPlan) -> dict[str, float]:
        """Full pass@1 of `plan` on every benchmark of the spec (each evaluation resumable).
        Files are named by what the answers depend on (plan, candidates, settings): a front
        plan that equals a uniform one reuses its evaluation, and an edited spec never meets
        a journal it cannot use."""
        results = {}
        model_key = plan_model_key(self.lm, plan, self.search.candidates)
        settings = self.spec.digest("evaluation", "device")
        with self.search.applier.applied(plan):
            for bench in self.spec.evaluation.benches:
                config = self._eval_config(bench)
                name = f"{bench}-{config.key(model_key, {'settings': settings})[:12]}"
                report = evaluate(self.lm, config, self.dir / "evals" / f"{name}.json",
                                  model_key=model_key,
                                  mbpp_source=self.spec.evaluation.mbpp or None,
                                  show_progress=self.show_progress)
                results[bench] = report["pass@1"]
        return results

    def _uniform(self) -> list[dict]:
        search = self.search
        settings = search.candidates.settings
        rows = []
        for bits in self.spec.evaluation.uniform_bits:
            plan = BitPlan.uniform(search.space, self.lm.fingerprint(), bits,
                                   settings.group_size, settings.sym)
            metrics = search.evaluate(plan)
            rows.append({"bits": bits, **trial_metrics(metrics),
                         "pass@1": self._pass_at_1(plan)})
        return rows

    def _search(self) -> dict:
        s = self.spec.search
        storage = s.storage or f"sqlite:///{(self.dir / 'search.db').resolve()}"
        # The study is named by everything its trials depend on but the trial count, so
        # raising `trials` continues it and any other edit starts a fresh one.
        setting = self.spec.digest(*SETUP_KEYS, "search", leave_out=("search.trials",))
        name = f"{self.spec.name}-{self.label}-v{STAGE_FORMAT}-{setting[:8]}"
        study = self.search.run(storage, name,
                                s.trials, show_progress=self.show_progress)
        config = study_config(study)
        objectives, reference = config["objectives"], reference_point(config)
        pts = points(study)
        front = pareto_front(pts, objectives)
        best = knee(front, objectives)
        return {
            "storage": storage, "study": study.study_name, "config": config,
            "objectives": objectives, "reference": reference,
            "hypervolume": hypervolume(pts, objectives, reference),
            "knee": best.number if best else None,
            "front": [p.number for p in front],
            "points": [{"trial": p.number, "origin": p.origin, "feasible": p.feasible,
                        "bits": p.bits, **trial_metrics(p.metrics)} for p in pts],
        }

    def _chosen(self, result: dict) -> tuple[list[dict], dict]:
        """The front plans of the search `result` to verify: the knee, then the other front
        plans spread evenly by memory (the cheapest first, the dearest too when two or more
        are wanted)."""
        by_trial = {p["trial"]: p for p in result["points"]}
        front = sorted((by_trial[n] for n in result["front"]), key=lambda p: p["memory_bytes"])
        wanted = self.spec.evaluation.verify_front
        chosen = [by_trial[result["knee"]]] if result["knee"] is not None and wanted else []
        others = [p for p in front if p not in chosen]
        n = min(wanted - len(chosen), len(others))
        if n > 0:
            step = (len(others) - 1) / max(n - 1, 1)
            chosen += [others[round(i * step)] for i in range(n)]
        return chosen, result["config"]

    def _plan(self, point: dict, config: dict) -> BitPlan:
        from bitfront.search.front import Point

        return plan_of(Point(number=point["trial"], bits=point["bits"], values=(),
                             metrics=point, feasible=point["feasible"],
                             origin=point["origin"]), config)

    def _verified(self, chosen: list[dict], config: dict) -> list[dict]:
        rows = []
        for point in chosen:
            plan = self._plan(point, config)
            rows.append({"trial": point["trial"], "origin": point["origin"],
                         **{k: v for k, v in point.items() if k not in ("bits",)},
                         "pass@1": self._pass_at_1(plan)})
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
            files = {
                stem.with_suffix(".plan.json"): json.dumps(
                    export_json(plan, metrics, provenance), indent=2),
                stem.with_suffix(".llama-cpp.txt"): " ".join(llama_cpp_args(plan)),
            }
            if any(s.quantized for s in plan.specs.values()):
                files[stem.with_suffix(".gptqmodel.json")] = json.dumps(
                    gptqmodel_config(plan, act_order=config["quantizer"]["act_order"],
                                     damp=config["quantizer"]["percdamp"]), indent=2)
            for path, text in files.items():
                path.write_text(text + "\n")
                paths.append(str(path))
        return paths


def run_study(spec: StudySpec, root: Path = Path("runs"), *, show_progress: bool = True,
              console: Console | None = None) -> Path:
    """Run (or resume, or just re-report) a study; returns its run directory."""
    from bitfront.studies.report import write_report

    console = console or Console(stderr=True, quiet=not show_progress)
    run_dir = root / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    results = []
    for label, model in spec.models.items():
        run = ModelRun(spec, label, model, run_dir / label, console=console,
                       show_progress=show_progress)
        results.append(run.run())
        run.__dict__.pop("search", None)  # free the model before loading the next one
        run.__dict__.pop("lm", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    write_report(spec, run_dir, results)
    return run_dir
