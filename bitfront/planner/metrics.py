"""What a trial measures, as one typed record, and which metric each objective reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# objective -> metric; the accuracy objective reads the retention the study optimises.
OBJECTIVE_METRICS = {"accuracy": {"top1": "retention", "likelihood": "logprob_retention",
                                  "kl": "kl_retention"},
                     "memory": "memory_bytes", "latency": "latency_s"}


def objective_metric(objective: str, accuracy: str = "top1") -> str:
    """The metric an objective reads (`accuracy`: top1 | likelihood | kl)."""
    metric = OBJECTIVE_METRICS[objective]
    return metric[accuracy] if isinstance(metric, dict) else metric


@dataclass(frozen=True)
class TrialMetrics:
    """Proxy accuracy, exact memory and predicted latency of one plan."""

    retention: float  # proxy top-1 accuracy relative to the 16-bit model
    logprob_retention: float  # exp(mean log-prob - 16-bit mean log-prob)
    top1: float
    logprob: float
    memory_bytes: float
    avg_bits: float
    nominal_bits: float
    retention_low: float | None = None  # 95% bootstrap interval of `retention` over tasks
    retention_high: float | None = None
    # exp(-mean KL(16-bit || plan)) of the next-token / masked-token distributions (1.0 =
    # the 16-bit model's), the KL itself, and the 95% bootstrap interval over tasks. None
    # in records from before the KL proxy.
    kl_retention: float | None = None
    kl: float | None = None
    kl_retention_low: float | None = None
    kl_retention_high: float | None = None
    latency_s: float | None = None  # seconds per generated sample
    per_token: float | None = None
    per_step: float | None = None
    rest: float | None = None  # latency outside the quantizable layers

    def value(self, objective: str, accuracy: str = "top1") -> float:
        value = getattr(self, objective_metric(objective, accuracy))
        if value is None:
            raise ValueError(f"these metrics hold no {objective_metric(objective, accuracy)}")
        return float(value)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> TrialMetrics:
        """From a trial's user attributes or a stored record (other keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) for k, v in data.items() if k in names and v is not None})
