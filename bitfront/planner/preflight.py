"""Before any expensive stage: what a run will cost, and everything a user can get wrong.

`estimate` predicts the disk (candidate cache still to write), the peak memory and the time
of each stage a command runs, from the model's shapes and the settings. Memory: what the
process holds now (model, libraries) plus the largest of what a stage holds (see
quant/candidates.py, kernels/hvp.py, models/base.py). Time: each stage's floating-point work
over this device's measured matmul rate, scaled by the share of that rate the stage reached
in `benchmarks/bench_scale.py` and on SmolLM2-135M on a 2-core CPU (rough: within about 2x).
`prepare` prints the estimate and refuses, in one line, a cache that will not fit on its disk;
`check_study` refuses to join a study of the same name made with other settings. (An
unreachable storage, an unwritable output and an infeasible budget are refused by the callers,
before any of this: `open_storage`, `paths.check_writable`, `SeedProblem.check`.)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from bitfront.errors import BitfrontError
from bitfront.models.base import HEAD_CHUNK_BYTES, CodeLM
from bitfront.models.diffusion import SCORE_MASK_RATIOS
from bitfront.quant.calibration import Calibration
from bitfront.quant.candidates import QuantizerSettings, candidate_dir, hessian_budget
from bitfront.space.layers import LayerSpace
from bitfront.space.memory import packed_nbytes
from bitfront.units import format_bytes, format_seconds

# Share of the measured matmul rate each stage reaches (bench_scale.py, 2-core CPU, fp32).
EFFICIENCY = {"calibration": 0.5, "gptq": 0.15, "sensitivity": 0.6, "trials": 0.5}
PROXY_TOKENS_PER_TASK = 256  # prompt + reference solution, MBPP-like


@dataclass
class Estimate:
    """What a command will need: bytes to write to the candidate cache, peak memory, and
    seconds per stage."""

    cache_bytes: int
    memory_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        stages = ", ".join(f"{k} {format_seconds(v)}" for k, v in self.seconds.items())
        return (f"estimate: disk {format_bytes(self.cache_bytes)} (candidate cache), peak "
                f"memory {format_bytes(self.memory_bytes)}, time ≈ "
                f"{format_seconds(sum(self.seconds.values()))} ({stages})")


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Floating-point operations per second of a [512, 2048] x [2048, 2048] matmul."""
    a = torch.randn(512, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * 512 * 2048 * 2048 / best


def _model_shape(lm: CodeLM) -> tuple[int, int, int, int]:
    """(hidden size, intermediate size, blocks, vocabulary) from the model's config."""
    c = lm.module.config
    return c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size


def estimate(lm: CodeLM, space: LayerSpace, setup, *, stages: tuple[str, ...],
             trials: int = 0, cached_bytes: int = 0, rate: float | None = None) -> Estimate:
    """The cost of running `stages` (of "calibration", "gptq", "sensitivity", "trials") on
    `lm` with the `Setup` `setup`; `cached_bytes` of the cache already exist."""
    hidden, inter, blocks, vocab = _model_shape(lm)
    q: QuantizerSettings = setup.quantizer
    model_bytes = sum(t.numel() * t.element_size()
                      for t in [*lm.module.parameters(), *lm.module.buffers()])
    element = lm.dtype.itemsize
    linears = sum(m.weight.numel() for m in lm.quantizable(include_head=True).values())
    cal = setup.calibration
    window = cal.seq_len

    def forward_flops(tokens: int, head: bool = True) -> float:
        weights = linears - (0 if head else hidden * vocab)
        return 2 * tokens * (weights + 2 * blocks * window * hidden)

    layers = [layer for layer in space.layers if not layer.embedding]
    # k/v read q's input and up reads gate's: they share that Hessian.
    owners = [layer for layer in layers if layer.kind not in ("k_proj", "v_proj", "up_proj")]
    hessian_bytes = sum(4 * layer.in_features ** 2 for layer in owners)
    cache = sum(layer.numel * element + sum(
        packed_nbytes(layer.out_features, layer.in_features, b, q.group_size) for b in q.bits)
        for layer in space.layers)
    rate = rate or matmul_rate(lm.device, lm.dtype)
    seconds: dict[str, float] = {}
    peak = 0
    if "calibration" in stages:
        tokens = cal.samples * window
        work = forward_flops(tokens, head=False) + sum(
            2 * tokens * layer.in_features ** 2 for layer in owners)
        seconds["calibration"] = work / (rate * EFFICIENCY["calibration"])
        peak = max(peak, min(hessian_bytes, hessian_budget(lm)))
    if "gptq" in stages:
        work = sum(layer.in_features ** 3 + len(q.bits) * 2 * layer.out_features
                   * layer.in_features ** 2 for layer in layers)
        todo = max(0.0, 1 - cached_bytes / cache)  # files carry headers beyond `cache`
        seconds["GPTQ"] = work * todo / (rate * EFFICIENCY["gptq"])
        widest = max(layers, key=lambda layer: layer.numel)
        peak = max(peak, min(hessian_bytes, hessian_budget(lm)) + 4 * (
            3 * widest.in_features ** 2 + (2 + len(q.bits)) * widest.numel))
    if "sensitivity" in stages:
        s = setup.sensitivity
        batch_tokens = cal.batch_size * window
        n_batches = s.batches or -(-cal.samples // cal.batch_size)
        # Each probe: two gradients, each a forward, a recomputed forward and a backward.
        work = n_batches * s.probes * 2 * 4 * forward_flops(batch_tokens)
        seconds["sensitivity"] = work / (rate * EFFICIENCY["sensitivity"])
        upcast = model_bytes if element == 2 else 0  # traces run in float32
        quantizable = sum(layer.numel for layer in layers)
        # int8 probes, and gradients: fd holds one layer's at a time, exact all of them.
        gradients = 4 * (max(layer.numel for layer in layers) if s.method == "fd"
                         else quantizable)
        activations = 4 * batch_tokens * (hidden * blocks + 6 * hidden + 4 * inter)
        peak = max(peak, upcast + quantizable + gradients + activations
                   + 3 * HEAD_CHUNK_BYTES)
    if "trials" in stages and trials:
        rows = len(SCORE_MASK_RATIOS) if lm.family == "diffusion" else 1
        tokens = setup.proxy.tasks * rows * PROXY_TOKENS_PER_TASK
        seconds["trials"] = trials * forward_flops(tokens) / (rate * EFFICIENCY["trials"])
        peak = max(peak, 4 * setup.proxy.batch_size * rows * PROXY_TOKENS_PER_TASK
                   * (6 * hidden + 4 * inter) + 3 * HEAD_CHUNK_BYTES)
    return Estimate(cache_bytes=max(0, cache - cached_bytes),
                    memory_bytes=max(_resident_bytes(), model_bytes) + peak, seconds=seconds)


def _resident_bytes() -> int:
    """This process's resident memory now (the loaded model and libraries); 0 if unknown."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh
                        if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def check_disk(root: Path, needed: int) -> None:
    """Refuse when the file system holding `root` has less than `needed` bytes free."""
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if needed > free:
        raise BitfrontError(f"the candidate cache needs about {format_bytes(needed)} in "
                            f"{root}, and only {format_bytes(free)} is free there; free some "
                            "space or point BITFRONT_CACHE elsewhere")


def check_study(storage, name: str, settings: dict, model: str) -> None:
    """Refuse to join study `name` if it exists in `storage` with other settings (the search
    trial count aside) or another model's weights."""
    import optuna

    from bitfront.planner.study import (
        CONFIG_ATTR,
        SETTINGS_ATTR,
        StudyMismatchError,
        differing_keys,
    )

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    theirs = study.user_attrs.get(SETTINGS_ATTR)
    if theirs is not None and (
            differ := differing_keys(_without_trials(theirs), _without_trials(settings))):
        raise StudyMismatchError(f"study {name!r} was made with other settings (differs "
                                 f"in: {', '.join(differ)}); use another study name or the "
                                 "same settings")
    made_for = study.user_attrs.get(CONFIG_ATTR, {}).get("model")
    if made_for is not None and made_for != model:
        raise StudyMismatchError(f"study {name!r} was made with another model's weights; use "
                                 "another study name")


def _without_trials(settings: dict) -> dict:
    return {**settings, "search": {k: v for k, v in settings.get("search", {}).items()
                                   if k != "trials"}}


def prepare(lm: CodeLM, space: LayerSpace, calibration: Calibration, setup, *,
            stages: tuple[str, ...], trials: int = 0, show: bool = True) -> Estimate:
    """Estimate the stages still to run (the candidates already cached count as done),
    print the estimate when `show`, and refuse if the cache will not fit on its disk."""
    directory = candidate_dir(lm, space, calibration, setup.quantizer)
    cached = sum(f.stat().st_size for f in directory.glob("*.safetensors")) \
        if directory.exists() else 0
    cost = estimate(lm, space, setup, stages=stages, trials=trials, cached_bytes=cached)
    if show:
        Console(stderr=True).print(cost.text(), soft_wrap=True)
    check_disk(directory.parent, cost.cache_bytes)
    return cost
