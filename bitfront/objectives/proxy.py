"""The fast proxy: the search's accuracy objective.

No generation: the reference solutions of a fixed, seeded subset of a benchmark's *validation*
split (MBPP for real models, the pocket benchmark for pocket models; never the test tasks used
for final pass@1) are scored teacher-forced given their
prompt, through `CodeLM.score` (AR: next token; diffusion: masked reconstruction at seeded
ratios). The result is reported as retention relative to the unquantized model measured when
the proxy is built (1.0 = nothing lost): top-1 token accuracy retention (the objective) and
per-token likelihood retention exp(mean log-prob − baseline mean log-prob). The tasks are
tokenized once and always batched the same way: diffusion models attend to padding, so their
scores depend on which samples share a batch, and a fixed batching keeps plans comparable.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass

from bitfront.config import Config, setting
from bitfront.errors import BitfrontError
from bitfront.evaluators.harness import BenchTask, bench_tasks
from bitfront.evaluators.prompts import STYLES, default_style
from bitfront.models.base import CodeLM
from bitfront.stats import ratio_interval


@dataclass(frozen=True)
class ProxyConfig(Config):
    tasks: int = setting(64, "validation tasks scored (of 90 for MBPP, 96 for pocket)")
    bench: str = setting("mbpp", "benchmark whose validation split is scored",
                         choices=("mbpp", "pocket"))
    seed: int = setting(0, "seed of the task subset and of diffusion masks")
    batch_size: int = setting(8, "tasks per forward pass")
    style: str | None = setting(None, "prompt format (default: instruct for chat models, "
                                      "else plain)", choices=STYLES)

    def __post_init__(self):
        self.require(self.tasks > 0, "tasks", "a positive number")
        self.require(self.batch_size > 0, "batch_size", "a positive number")


@dataclass(frozen=True)
class ProxyScore:
    top1: float
    logprob: float
    retention: float  # top-1 accuracy relative to the unquantized model
    logprob_retention: float  # exp(logprob - baseline logprob)
    retention_low: float  # 95% bootstrap interval of `retention` over the tasks (paired)
    retention_high: float
    per_task: tuple[float, ...]  # top-1 accuracy of each task

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "per_task"}


class AccuracyProxy:
    """Build while the model is unquantized: the baseline is measured then."""

    def __init__(self, lm: CodeLM, config: ProxyConfig | None = None, *, mbpp_source=None):
        self.lm = lm
        self.config = config = config or ProxyConfig()
        self.style = config.style or default_style(lm)
        pool = bench_tasks(config.bench, style=self.style, split="validation",
                           mbpp_source=mbpp_source)
        if config.tasks > len(pool):
            raise BitfrontError(f"the proxy asks {config.tasks} tasks; the validation split "
                                f"has {len(pool)}")
        self.tasks: list[BenchTask] = random.Random(config.seed).sample(pool, config.tasks)
        self.contexts = [lm.encode(lm.render(t.prompt.prompt)) for t in self.tasks]
        self.targets = [lm.encode(t.reference) for t in self.tasks]
        self.baseline = self._raw()

    def fingerprint(self) -> str:
        """Identifies what the proxy measures (task subset, prompt style, settings)."""
        blob = json.dumps({"config": self.config.to_dict(), "style": self.style,
                           "tasks": [t.task_id for t in self.tasks]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def tokens(self) -> int:
        return sum(len(c) + len(t) for c, t in zip(self.contexts, self.targets, strict=True))

    def _raw(self) -> ProxyScore:
        result = self.lm.score_tokens(self.contexts, self.targets,
                                      batch_size=self.config.batch_size, seed=self.config.seed)
        return ProxyScore(top1=result.mean_accuracy, logprob=result.mean_logprob, retention=1.0,
                          logprob_retention=1.0, retention_low=1.0, retention_high=1.0,
                          per_task=tuple(result.accuracy))

    def __call__(self) -> ProxyScore:
        """The proxy for the model's current weights."""
        raw = self._raw()
        base = self.baseline
        interval = ratio_interval(raw.per_task, base.per_task, seed=self.config.seed)
        return ProxyScore(
            top1=raw.top1, logprob=raw.logprob, retention=interval.estimate,
            logprob_retention=math.exp(raw.logprob - base.logprob),
            retention_low=interval.low, retention_high=interval.high, per_task=raw.per_task,
        )
