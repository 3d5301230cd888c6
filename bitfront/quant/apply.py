"""Applying a bit plan. For the search: cached packed candidates are dequantized straight into
the live model's layers (only the layers whose bitwidth changes), and the originals (the 16-bit
candidates) are copied back on restore; no model copy, no re-quantization. For latency and
memory: a packed copy of the model whose quantized layers compute from low-bit storage."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bitfront.errors import PlanError
from bitfront.kernels.qlinear import QuantLinear
from bitfront.models.base import CodeLM
from bitfront.quant.candidates import Candidates
from bitfront.space.plan import BitPlan


class PlanApplier:
    """Owns the quantizable weights of `lm` while plans are applied; starts from (and
    restores to) the weights as loaded."""

    def __init__(self, lm: CodeLM, candidates: Candidates):
        self.lm = lm
        self.candidates = candidates
        modules = dict(lm.module.named_modules())
        self.weights = {name: modules[name].weight for name in candidates.space.names()}
        self.current = dict.fromkeys(self.weights, 16)

    def check(self, plan: BitPlan) -> None:
        plan.validate(self.candidates.space, self.lm.fingerprint())
        settings = self.candidates.settings
        for name, spec in plan.specs.items():
            if spec.bits not in self.candidates.bits:
                raise PlanError(f"{name}: no candidate at {spec.bits} bits (cached: "
                                f"{self.candidates.bits})")
            if spec.quantized and (spec.group_size, spec.sym) != (settings.group_size,
                                                                  settings.sym):
                raise PlanError(f"{name}: plan asks group size {spec.group_size}, "
                                f"sym={spec.sym}; candidates have {settings.group_size}, "
                                f"sym={settings.sym}")

    def apply(self, plan: BitPlan) -> int:
        """Swap in `plan`'s weights; returns how many layers changed."""
        self.check(plan)
        changed = 0
        for name, spec in plan.specs.items():
            if self.current[name] != spec.bits:
                self.candidates.weight(name, spec.bits, out=self.weights[name].data)
                self.current[name] = spec.bits
                changed += 1
        return changed

    def restore(self) -> None:
        for name, bits in self.current.items():
            if bits != 16:
                self.candidates.weight(name, 16, out=self.weights[name].data)
                self.current[name] = 16

    @contextmanager
    def applied(self, plan: BitPlan) -> Iterator[None]:
        self.apply(plan)
        try:
            yield
        finally:
            self.restore()


def plan_space(lm: CodeLM, plan: BitPlan):
    """The layer space a plan was made over (head and embeddings as the plan has them)."""
    from bitfront.space.layers import layer_space

    return layer_space(lm, include_head="lm_head" in plan.specs,
                       include_embeddings=any(n.endswith("embed_tokens") for n in plan.specs))


def plan_calibration(lm: CodeLM, plan: BitPlan, *, mbpp_source=None):
    """The calibration set recorded in the plan's metadata (the default one if none is)."""
    from bitfront.quant.calibration import CalibrationConfig, calibration_set

    return calibration_set(lm, CalibrationConfig.from_dict(
        plan.meta.get("calibration", {}), "plan meta.calibration."), mbpp_source=mbpp_source)


def candidates_for_plan(lm: CodeLM, plan: BitPlan, *, mbpp_source=None,
                        show_progress: bool = True) -> Candidates:
    """The candidate cache a saved plan was made from (computed if missing), following the
    quantizer and calibration settings recorded in its metadata; refuses when what it
    rebuilds differs from what the plan names (other weights, or calibration text from
    another Python's standard library)."""
    from bitfront.quant.candidates import QuantizerSettings, build_candidates

    spec = next(iter(plan.specs.values()))
    quantizer = plan.meta.get("quantizer") or {"group_size": spec.group_size, "sym": spec.sym}
    settings = QuantizerSettings.from_dict(quantizer, "plan meta.quantizer.")
    calibration = plan_calibration(lm, plan, mbpp_source=mbpp_source)
    space = plan_space(lm, plan)
    plan.validate(space, lm.fingerprint())
    candidates = build_candidates(lm, space, calibration, settings=settings,
                                  show_progress=show_progress)
    wanted = plan.meta.get("candidates")
    if wanted and wanted != candidates.key:
        raise PlanError(f"the plan was made from candidates {wanted}, but this machine "
                        f"builds {candidates.key} from the recorded settings (different "
                        "calibration text, e.g. another Python version's standard library); "
                        "run the search here, or copy that candidate cache")
    return candidates


def packed_module(lm: CodeLM, plan: BitPlan, candidates: Candidates, *,
                  dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None
                  ) -> nn.Module:
    """A copy of `lm.module` in `dtype` whose quantized layers are `QuantLinear`s holding the
    plan's packed candidates (the real low-bit model, for latency and memory)."""
    PlanApplier(lm, candidates).check(plan)
    if any(candidates.space[n].embedding and s.quantized for n, s in plan.specs.items()):
        raise PlanError("packed models have no quantized-embedding kernel: quantized "
                        "embeddings are modelled in memory and accuracy only")
    device = torch.device(device) if device is not None else lm.device
    module = copy.deepcopy(lm.module).to(device, dtype)
    modules = dict(module.named_modules())
    for name, spec in plan.specs.items():
        if not spec.quantized:
            continue
        parent_name, _, child = name.rpartition(".")
        original = modules[name]
        quant = QuantLinear(candidates.packed(name, spec.bits), getattr(original, "bias", None),
                            dtype=dtype, device=device)
        setattr(modules[parent_name] if parent_name else module, child, quant)
    return module.eval()
