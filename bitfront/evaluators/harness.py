"""Full pass@k on MBPP, HumanEval or the pocket benchmark: generate, cut, sanitise, execute
in the sandbox, count.

A run writes a journal (`<out>.partial.jsonl`: its settings, then one line per finished
task) so that a killed run resumes where it stopped, and at the end a JSON report with the
outcome of every sample of every task and pass@k for k ≤ n (unbiased estimator).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from bitfront.config import Config, setting
from bitfront.data.humaneval import load_humaneval
from bitfront.data.mbpp import MBPPTask, load_mbpp, mbpp_split
from bitfront.data.pocket_bench import pocket_split
from bitfront.errors import BitfrontError
from bitfront.evaluators.prompts import (
    FEWSHOT_TASK_IDS,
    STYLES,
    CodePrompt,
    _parse,
    default_style,
    humaneval_prompt,
    mbpp_prompt,
    names_used,
    sanitize,
)
from bitfront.evaluators.sandbox import Limits, Program, require_sandbox, run_programs
from bitfront.models.base import GenerationOptions, PromptLike, cut_at_stops
from bitfront.models.diffusion_sampling import DiffusionOptions
from bitfront.paths import write_atomic
from bitfront.progress import progress_bar
from bitfront.stats import mean_interval

BENCHES = ("mbpp", "humaneval", "pocket")
SCHEMA = 1


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n - c, k) / C(n, k), computed stably."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


class Generator(Protocol):
    """What the harness asks of a model: a `CodeLM`, or a GGUF run by llama.cpp
    (runtimes/llama_lm.py)."""

    name: str
    family: str
    use_chat: bool

    def fingerprint(self) -> str: ...

    def generate(self, prompts: Sequence[PromptLike], options: GenerationOptions | None = None,
                 **overrides) -> list[str]: ...


@dataclass(frozen=True)
class BenchTask:
    task_id: str
    prompt: CodePrompt
    tests: tuple[str, ...]
    entry_point: str | None
    reference: str  # the reference solution, as a complete program body (the task's own
    # code: the judge takes the tests' helpers and imports from it, never from an answer)


def bench_tasks(bench: str, *, style: str, split: str = "test", limit: int | None = None,
                mbpp_source=None) -> list[BenchTask]:
    """The tasks of a benchmark with their prompts in `style`."""
    if bench == "mbpp":
        tasks = load_mbpp(mbpp_source)
        shots = [t for t in tasks if t.task_id in FEWSHOT_TASK_IDS]
        return _mbpp_format("mbpp", mbpp_split(tasks, split)[:limit], style, shots)
    if bench == "pocket":  # few-shot examples: the first train tasks
        shots = pocket_split("train")[:len(FEWSHOT_TASK_IDS)] if style == "fewshot" else None
        return _mbpp_format("pocket", pocket_split(split)[:limit], style, shots)
    if bench == "humaneval":
        return [BenchTask(task_id=t.task_id, prompt=humaneval_prompt(t, style), tests=t.tests,
                          entry_point=t.entry_point,
                          reference=t.prompt + t.canonical_solution)
                for t in load_humaneval()[:limit]]
    raise BitfrontError(f"unknown benchmark {bench!r}; choose from {BENCHES}")


def _mbpp_format(bench: str, tasks: list[MBPPTask], style: str,
                 shots: list[MBPPTask] | None) -> list[BenchTask]:
    """Bench tasks of MBPP-format tasks (MBPP itself and the pocket benchmark)."""
    return [BenchTask(task_id=f"{bench}/{t.task_id}", prompt=mbpp_prompt(t, style, shots),
                      tests=(*t.test_imports, t.test_setup_code, *t.test_list),
                      entry_point=_entry_point(t.test_list, t.solution), reference=t.solution)
            for t in tasks]


def _top_level(code: str, kinds=(ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
               ) -> list[str]:
    """The names of the top-level definitions of `code` (of `kinds`)."""
    try:
        return [n.name for n in _parse(code).body if isinstance(n, kinds)]
    except SyntaxError:
        return []


def _entry_point(tests, reference: str) -> str | None:
    """The function an MBPP task's asserts call first among those its reference solution
    defines: never a built-in the asserts happen to call around it (`int(lobb_num(5, 3))`),
    unless the task itself defines one of that name (`sum`)."""
    defined = set(_top_level(reference))
    for test in tests:
        for match in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\s*\(", test):
            if match.group(1) in defined:
                return match.group(1)
    return None


def program_for(task: BenchTask, answer: str) -> Program:
    """The program to execute for one answer: prompt head + answer up to its stop, sanitised
    down to what the entry point and the tests need."""
    code = task.prompt.head + cut_at_stops(answer, task.prompt.stop)
    used = names_used("\n".join(task.tests))
    return task_program(task, sanitize(code, task.entry_point, used))


def task_program(task: BenchTask, code: str) -> Program:
    """`code` judged by the task's tests, trusting only the task: the tests' helpers and
    imports come from its own code, and only the entry point and the classes the tests build
    arguments from (MBPP's `Node`, `Pair`) are taken from `code`."""
    used = names_used("\n".join(task.tests))
    classes = _top_level(task.reference, (ast.ClassDef,))
    return Program(code=code, tests=task.tests, entry_point=task.entry_point,
                   context=task.reference,
                   crosses=tuple(c for c in classes if c in used and c != task.entry_point))


@dataclass(frozen=True)
class EvalConfig(Config):
    """How a benchmark is run: which tasks, how answers are generated and executed."""

    bench: str = setting("mbpp", "benchmark", choices=BENCHES)
    split: str = setting("test", "task split (MBPP and pocket: test, validation, ...)")
    limit: int | None = setting(None, "first N tasks only")
    samples: int = setting(1, "samples per task (n of pass@k)")
    style: str | None = setting(None, "prompt format (default: instruct for chat models, "
                                      "else plain)", choices=STYLES)
    max_new_tokens: int = setting(512, "answer length limit in tokens")
    temperature: float = setting(0.0, "sampling temperature (0: greedy)")
    top_p: float = setting(0.95, "nucleus sampling mass (with a temperature > 0)")
    batch_size: int = setting(8, "prompts generated together")
    seed: int = setting(0, "generation seed")
    workers: int = setting(2, "sandbox processes in parallel")
    timeout: float = setting(10.0, "seconds per program")
    unsafe_no_sandbox: bool = setting(False, "run generated code without bubblewrap: UNSAFE, "
                                             "for machines where it cannot run")
    diffusion: DiffusionOptions = setting(factory=DiffusionOptions,
                                          help="diffusion models: denoising settings")

    def __post_init__(self):
        for key in ("samples", "max_new_tokens", "batch_size", "workers", "timeout"):
            self.require(getattr(self, key) > 0, key, "a positive number")
        self.require(self.limit is None or self.limit > 0, "limit", "a positive number")
        self.require(self.temperature >= 0, "temperature", "a number ≥ 0")
        self.require(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        self.require(self.bench in BENCHES, "bench", f"one of {BENCHES}")

    def key(self, model: str, extra: dict | None = None) -> str:
        blob = json.dumps({"model": model, **asdict(self), **(extra or {})}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_journal(path: Path, key: str) -> dict[str, dict] | None:
    """The finished tasks of the journal at `path`; None when it is absent or its header was
    damaged (the journal is then started afresh)."""
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or "key" not in header:
        return None
    if header["key"] != key:
        raise BitfrontError(f"{path} holds a run with other settings or another model; "
                            "choose another --out or delete it")
    done = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: redo that task
            continue
        if isinstance(record, dict) and "task_id" in record:
            done[record["task_id"]] = record
    return done


def evaluate(lm: Generator, config: EvalConfig, out: Path, *, model_key: str | None = None,
             mbpp_source=None, show_progress: bool = True) -> dict:
    """Run (or resume) an evaluation and write its JSON report to `out`; returns it."""
    style = config.style or default_style(lm)
    tasks = bench_tasks(config.bench, style=style, split=config.split, limit=config.limit,
                        mbpp_source=mbpp_source)
    if config.samples > 1 and config.temperature == 0:
        raise BitfrontError("several samples per task need sampling: set a temperature > 0")
    # Everything that changes the answers is in the key: the sampler of diffusion models too,
    # and how tasks are grouped into batches (each batch has its own seed).
    extra = {"mbpp": str(mbpp_source or os.environ.get("BITFRONT_MBPP") or "vendored")}
    key = config.key(model_key or lm.fingerprint(), {**extra, "batches": "by-length"})
    journal = out.with_name(out.name + ".partial.jsonl")
    done = _read_journal(journal, key)
    if done is None:  # the header is written whole or not at all
        write_atomic(journal, json.dumps({"key": key, "config": asdict(config)}) + "\n")
        done = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    limits = Limits(timeout=config.timeout, cpu_seconds=int(config.timeout) + 1,
                    isolation="none" if config.unsafe_no_sandbox else "bubblewrap")
    require_sandbox(limits.isolation)  # before generating anything
    partition = eval_batches(tasks, config)
    with progress_bar() as bar, journal.open("a") as log:
        task_bar = bar.add_task(f"{config.bench} pass@k", total=len(tasks),
                                completed=len(done), info="", visible=show_progress)
        for number, batch in enumerate(partition):
            missing = [t for t in batch if t.task_id not in done]
            if not missing:
                continue
            answers = generate_answers(lm, batch, number, config)
            programs = [program_for(t, answers[i * config.samples + s])
                        for i, t in enumerate(batch) if t in missing
                        for s in range(config.samples)]
            outcomes = run_programs(programs, limits=limits, workers=config.workers)
            for k, task in enumerate(missing):
                i = batch.index(task)
                mine = outcomes[k * config.samples : (k + 1) * config.samples]
                record = {"task_id": task.task_id,
                          "passed": sum(o.passed for o in mine),
                          "samples": [{"completion": answers[i * config.samples + s],
                                       **mine[s].to_dict()} for s in range(config.samples)]}
                done[task.task_id] = record
                log.write(json.dumps(record) + "\n")
                log.flush()
            passed = sum(r["passed"] > 0 for r in done.values())
            bar.update(task_bar, advance=len(missing), info=f"{passed} tasks passed")
    report = summarize(lm.name, config, style, [done[t.task_id] for t in tasks])
    write_atomic(out, json.dumps(report, indent=1) + "\n")
    return report


def eval_batches(tasks: list[BenchTask], config: EvalConfig) -> list[list[BenchTask]]:
    """The tasks generated together, longest prompts (in characters) first so that a batch
    pads little. A fixed partition, each batch with its own seed: a resumed run generates
    exactly what an uninterrupted one would."""
    ordered = sorted(tasks, key=lambda t: -len(t.prompt.prompt.user)
                     - len(t.prompt.prompt.assistant_prefix))
    per_batch = max(1, config.batch_size // config.samples)
    return [ordered[i : i + per_batch] for i in range(0, len(ordered), per_batch)]


def generate_answers(lm: Generator, batch: list[BenchTask], number: int,
                     config: EvalConfig) -> list[str]:
    """The `config.samples` answers of each task of batch `number`, task by task."""
    prompts = [t.prompt.prompt for t in batch for _ in range(config.samples)]
    options = GenerationOptions(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        top_p=config.top_p, stop=batch[0].prompt.stop,
        seed=config.seed + number, batch_size=config.batch_size)
    sampler = {"diffusion": config.diffusion} if lm.family == "diffusion" else {}
    return lm.generate(prompts, options, **sampler)


def summarize(model: str, config: EvalConfig, style: str, records: list[dict]) -> dict:
    n = config.samples
    ks = [k for k in (1, 10, 100) if k <= n]
    scores: dict = {}
    for k in ks:  # each with its 95% bootstrap interval over the tasks
        interval = mean_interval([pass_at_k(n, r["passed"], k) for r in records])
        scores[f"pass@{k}"] = interval.estimate
        scores[f"pass@{k}_interval"] = [interval.low, interval.high]
    statuses: dict[str, int] = {}
    for record in records:
        for sample in record["samples"]:
            statuses[sample["status"]] = statuses.get(sample["status"], 0) + 1
    return {"schema": SCHEMA, "model": model, "bench": config.bench, "style": style,
            "config": asdict(config), "tasks": len(records), **scores, "outcomes": statuses,
            "results": records}
