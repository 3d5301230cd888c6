"""HAWQ sensitivity: how much the loss suffers when a layer is quantized to b bits.

Ω_i(b) = |Tr(H_i)| / n_i · ‖Q_b(W_i) − W_i‖², with H_i the loss Hessian w.r.t. layer i's
weight (Hutchinson trace, kernels/hvp.py), n_i its number of weights and Q_b the GPTQ
candidate. The magnitude of the trace is used: away from a minimum (an undertrained model, a
layer of mixed curvature) the estimate can come out negative, and a negative Ω would tell the
seed ILP that quantizing a layer *helps*. The cheap variant needs no trace: GPTQ's own
reconstruction loss at b bits, a second-order estimate of the layer's output error.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from bitfront.config import Config, setting
from bitfront.kernels.hvp import hutchinson_traces
from bitfront.models.base import CodeLM, recomputed_blocks
from bitfront.paths import read_cached, write_atomic
from bitfront.quant.calibration import Calibration
from bitfront.quant.candidates import Candidates

SCHEMA = 2  # 2: Ω from |Tr(H)|
METHODS = ("fd", "exact")


@dataclass(frozen=True)
class SensitivityConfig(Config):
    """How the Hessian traces are estimated."""

    probes: int = setting(4, "Hutchinson probes per batch")
    batches: int = setting(2, "calibration batches used for the traces (0: all)",
                           flag="trace-batches")
    method: str = setting("fd", "Hessian-vector products: finite differences (works with "
                                "flash attention) or exact double backward", choices=METHODS)
    eps: float = setting(1e-3, "finite-difference step", flag="fd-eps")
    seed: int = setting(0, "seed of the probes and of the diffusion loss's masks",
                        flag="trace-seed")

    def __post_init__(self):
        self.require(self.probes > 0, "probes", "a positive number")
        self.require(self.batches >= 0, "batches", "a number ≥ 0")
        self.require(self.method in METHODS, "method", f"one of {METHODS}")
        self.require(self.eps > 0, "eps", "a positive number")


@dataclass(frozen=True)
class SensitivityRow:
    layer: str
    kind: str
    block: int | None
    bits: int
    trace: float  # Tr(H_i), Hutchinson estimate
    n_params: int
    delta_sq: float  # ‖Q_b(W) − W‖²
    omega: float  # HAWQ: |trace| / n · delta_sq
    gptq_loss: float  # the cheap variant


@dataclass
class Sensitivity:
    model: str
    method: str
    probes: int
    rows: list[SensitivityRow]

    def omega(self, layer: str, bits: int) -> float:
        if bits == 16:
            return 0.0
        for row in self.rows:
            if row.layer == layer and row.bits == bits:
                return row.omega
        raise KeyError((layer, bits))

    def ranked(self, bits: int) -> list[SensitivityRow]:
        """Rows at `bits`, most sensitive first."""
        return sorted((r for r in self.rows if r.bits == bits), key=lambda r: -r.omega)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "method": self.method,
                "probes": self.probes, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict) -> Sensitivity:
        return cls(model=data["model"], method=data["method"], probes=data["probes"],
                   rows=[SensitivityRow(**r) for r in data["rows"]])

    def save(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path, csv_path = directory / "sensitivity.json", directory / "sensitivity.csv"
        json_path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        with csv_path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(SensitivityRow.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(asdict(r) for r in self.rows)
        return json_path, csv_path


@contextmanager
def _float32(module: nn.Module) -> Iterator[None]:
    """Run in float32, then return to the module's dtype (exactly: every 16-bit value is a
    float32 value). Finite-difference steps of 1e-3 of a weight's scale vanish in bfloat16."""
    dtype = next(module.parameters()).dtype
    if dtype == torch.float32:
        yield
        return
    module.float()
    try:
        yield
    finally:
        module.to(dtype)


def hawq_sensitivity(lm: CodeLM, candidates: Candidates, calibration: Calibration,
                     config: SensitivityConfig = SensitivityConfig(), *,
                     show_progress: bool = True) -> Sensitivity:
    """Traces on the calibration windows (clean; the diffusion loss masks them itself),
    combined with every candidate's weight perturbation."""
    space = candidates.space
    modules = dict(lm.module.named_modules())
    weights = {name: modules[name].weight for name in space.names()}
    c = config
    data = calibration.clean[:c.batches] if c.batches else calibration.clean

    def restore() -> None:  # the originals come back from the cache: no copy in memory
        for name, weight in weights.items():
            candidates.weight(name, 16, out=weight.data)

    with _float32(lm.module), recomputed_blocks(lm.module):
        traces = hutchinson_traces(lambda b: lm.loss(b, seed=c.seed), lm.module, weights, data,
                                   probes=c.probes, method=c.method, eps=c.eps, seed=c.seed,
                                   restore=restore, show_progress=show_progress)
    rows = []
    for layer in space.layers:
        original = candidates.weight(layer.name, 16).float()
        for bits in candidates.settings.bits:
            delta = float(((candidates.weight(layer.name, bits).float() - original) ** 2).sum())
            trace = traces[layer.name]
            rows.append(SensitivityRow(
                layer=layer.name, kind=layer.kind, block=layer.block, bits=bits, trace=trace,
                n_params=layer.numel, delta_sq=delta,
                omega=abs(trace) / layer.numel * delta,
                gptq_loss=candidates.gptq_loss(layer.name, bits)))
    return Sensitivity(model=lm.name, method=c.method, probes=c.probes, rows=rows)


def cached_sensitivity(lm: CodeLM, candidates: Candidates, calibration: Calibration,
                       config: SensitivityConfig = SensitivityConfig(), *,
                       show_progress: bool = True) -> Sensitivity:
    """`hawq_sensitivity`, stored beside the candidates it was computed from."""
    c = config
    path = candidates.directory / (f"sensitivity-v{SCHEMA}-{c.method}-p{c.probes}-e{c.eps:g}"
                                   f"-s{c.seed}-b{c.batches or 'all'}.json")
    if (cached := read_cached(path, Sensitivity.from_dict)) is not None:
        return cached
    sens = hawq_sensitivity(lm, candidates, calibration, config, show_progress=show_progress)
    write_atomic(path, json.dumps(sens.to_dict(), indent=1) + "\n")
    return sens


def gptq_loss_sensitivity(model: str, candidates: Candidates) -> Sensitivity:
    """The cheap variant as a table: Ω_i(b) = GPTQ's reconstruction loss (no traces)."""
    rows = [SensitivityRow(layer=layer.name, kind=layer.kind, block=layer.block, bits=bits,
                           trace=float("nan"), n_params=layer.numel, delta_sq=float("nan"),
                           omega=candidates.gptq_loss(layer.name, bits),
                           gptq_loss=candidates.gptq_loss(layer.name, bits))
            for layer in candidates.space.layers for bits in candidates.settings.bits]
    return Sensitivity(model=model, method="gptq-loss", probes=0, rows=rows)
