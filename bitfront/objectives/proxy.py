"""The fast MBPP proxy: the search's accuracy objective.

No generation: the MBPP reference solutions of a fixed, seeded subset of the *validation*
split (never the test tasks used for final pass@1) are scored teacher-forced given their
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

from bitfront.errors import BitfrontError
from bitfront.evaluators.harness import BenchTask, bench_tasks
from bitfront.evaluators.prompts import default_style
from bitfront.models.base import CodeLM


@dataclass(frozen=True)
class ProxyConfig:
    n_tasks: int = 64  # of the 90 validation tasks
    seed: int = 0
    batch_size: int = 8
    style: str | None = None  # None: instruct for chat models, plain otherwise

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProxyScore:
    top1: float
    logprob: float
    retention: float  # top-1 accuracy relative to the unquantized model
    logprob_retention: float  # exp(logprob - baseline logprob)

    def to_dict(self) -> dict:
        return asdict(self)


class AccuracyProxy:
    """Build while the model is unquantized: the baseline is measured then."""

    def __init__(self, lm: CodeLM, config: ProxyConfig | None = None, *, mbpp_source=None):
        self.lm = lm
        self.config = config = config or ProxyConfig()
        self.style = config.style or default_style(lm)
        pool = bench_tasks("mbpp", style=self.style, split="validation",
                           mbpp_source=mbpp_source)
        if config.n_tasks > len(pool):
            raise BitfrontError(f"the proxy asks {config.n_tasks} tasks; the validation split "
                                f"has {len(pool)}")
        self.tasks: list[BenchTask] = random.Random(config.seed).sample(pool, config.n_tasks)
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
                          logprob_retention=1.0)

    def __call__(self) -> ProxyScore:
        """The proxy for the model's current weights."""
        raw = self._raw()
        base = self.baseline
        return ProxyScore(
            top1=raw.top1, logprob=raw.logprob,
            retention=raw.top1 / base.top1 if base.top1 > 0 else 0.0,
            logprob_retention=math.exp(raw.logprob - base.logprob),
        )
