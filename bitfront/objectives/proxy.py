"""The fast proxy: the search's accuracy objective.

No generation: the reference solutions of a fixed, seeded subset of a benchmark's *validation*
split (MBPP for real models, the pocket benchmark for pocket models; never the test tasks used
for final pass@1) are scored teacher-forced given their
prompt, through `CodeLM.score` (AR: next token; diffusion: masked reconstruction at seeded
ratios). The result is reported as retention relative to the unquantized model measured when
the proxy is built (1.0 = nothing lost): top-1 token accuracy retention, per-token likelihood
retention exp(mean log-prob − baseline mean log-prob), and KL retention exp(−mean KL) where
KL is the divergence of the current weights' next-token (AR) / masked-token (diffusion)
distributions from the unquantized model's at the same positions (the baseline keeps its
top `kl_topk` tokens there; the rest of its mass is one tail bucket). The tasks are
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
from bitfront.models.base import CodeLM, ScoreResult
from bitfront.stats import mean_interval, ratio_interval


@dataclass(frozen=True)
class ProxyConfig(Config):
    tasks: int = setting(64, "validation tasks scored (of 90 for MBPP, 96 for pocket)")
    bench: str = setting("mbpp", "benchmark whose validation split is scored",
                         choices=("mbpp", "pocket"))
    seed: int = setting(0, "seed of the task subset and of diffusion masks")
    batch_size: int = setting(8, "tasks per forward pass")
    style: str | None = setting(None, "prompt format (default: instruct for chat models, "
                                      "else plain)", choices=STYLES)
    # 64: the 16-bit model's top 64 tokens hold nearly all its mass at a scored position, so
    # the tail bucket loses little of the KL (a lower bound, exact at k = vocab). On the
    # pocket pair (16 tasks, uniform 2/3-bit plans) k = 64 gives 99-99.8% of the exact KL
    # for AR and 98-99% for diffusion, whose masked-token distributions are flatter
    # (diffusion with k = 32: 95.5-97.5%, k = 16: 91-95%). The baseline keeps 64 × 8
    # bytes per scored position (a few MB for 64 MBPP tasks, where full distributions over a
    # 152k vocabulary would take GBs), and the ranking of plans does not hinge on the last %.
    kl_topk: int = setting(64, "16-bit tokens kept per scored position for the KL proxy "
                               "(the rest of the mass is one tail bucket)")

    def __post_init__(self):
        self.require(self.tasks > 0, "tasks", "a positive number")
        self.require(self.batch_size > 0, "batch_size", "a positive number")
        self.require(self.kl_topk > 0, "kl_topk", "a positive number")


@dataclass(frozen=True)
class ProxyScore:
    top1: float
    logprob: float
    retention: float  # top-1 accuracy relative to the unquantized model
    logprob_retention: float  # exp(logprob - baseline logprob)
    retention_low: float  # 95% bootstrap interval of `retention` over the tasks (paired)
    retention_high: float
    kl: float  # mean over tasks of the mean KL(16-bit || current) per target token
    kl_retention: float  # exp(-kl): 1.0 = the 16-bit model's distributions
    kl_retention_low: float  # 95% bootstrap interval of `kl_retention` over the tasks
    kl_retention_high: float
    per_task: tuple[float, ...]  # top-1 accuracy of each task
    per_task_kl: tuple[float, ...]  # mean KL of each task

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("per_task", "per_task_kl")}


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
        baseline = self._score(topk=config.kl_topk)
        self.reference = baseline.topk  # the 16-bit distributions the KL is measured against
        self.baseline = self._raw(baseline)

    def fingerprint(self) -> str:
        """Identifies what the proxy measures (task subset, prompt style, settings)."""
        blob = json.dumps({"config": self.config.to_dict(), "style": self.style,
                           "tasks": [t.task_id for t in self.tasks]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def tokens(self) -> int:
        return sum(len(c) + len(t) for c, t in zip(self.contexts, self.targets, strict=True))

    def _score(self, **options) -> ScoreResult:
        return self.lm.score_tokens(self.contexts, self.targets,
                                    batch_size=self.config.batch_size, seed=self.config.seed,
                                    **options)

    @staticmethod
    def _raw(result: ScoreResult) -> ProxyScore:
        kl = result.kl or [0.0] * len(result.accuracy)
        return ProxyScore(top1=result.mean_accuracy, logprob=result.mean_logprob, retention=1.0,
                          logprob_retention=1.0, retention_low=1.0, retention_high=1.0,
                          kl=sum(kl) / max(len(kl), 1), kl_retention=1.0,
                          kl_retention_low=1.0, kl_retention_high=1.0,
                          per_task=tuple(result.accuracy), per_task_kl=tuple(kl))

    def __call__(self) -> ProxyScore:
        """The proxy for the model's current weights."""
        raw = self._raw(self._score(reference=self.reference))
        base = self.baseline
        interval = ratio_interval(raw.per_task, base.per_task, seed=self.config.seed)
        # exp(-mean) is monotone: the percentile interval of the mean KL maps onto it.
        kl = mean_interval(raw.per_task_kl, seed=self.config.seed)
        return ProxyScore(
            top1=raw.top1, logprob=raw.logprob, retention=interval.estimate,
            logprob_retention=math.exp(raw.logprob - base.logprob),
            retention_low=interval.low, retention_high=interval.high,
            kl=raw.kl, kl_retention=math.exp(-raw.kl), kl_retention_low=math.exp(-kl.high),
            kl_retention_high=math.exp(-kl.low), per_task=raw.per_task,
            per_task_kl=raw.per_task_kl,
        )
