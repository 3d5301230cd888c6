"""The latency objective: a per-device lookup table, validated against end-to-end timing.

Latency is defined per generated sample at fixed prompt/answer lengths (the `Workload`):

- AR: prefill of the prompt, then one decode step with KV cache per further answer token;
  also reported per answer token;
- diffusion: `steps` full forward passes over prompt + answer (plus the sampler's reveal);
  also reported per step.

The table is measured once per device (and dtype, attention backend, model shapes,
workload) and cached: for every quantizable layer shape × bitwidth, the packed kernel's time at
the token count each phase runs (AR prefill: batch × prompt; AR decode: batch; diffusion:
batch × (prompt + answer)), and the rest of the model (attention with the chosen backend,
norms, embeddings, head, sampler) measured once by running the whole generation with every
quantizable linear replaced by a free stand-in. Kernel times are taken in place: the model is
packed uniformly at each bitwidth (round-to-nearest weights; speed does not depend on values)
and every linear call of a real generation is timed by hooks (CUDA events on a GPU), because
the same kernel timed alone, with warm caches and idle threads, runs measurably faster than it
does between the model's other operations. A plan's latency is rest + Σ over layers of
calls × table entry: a sum, so every search trial gets it for free.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from bitfront.config import Config, setting
from bitfront.kernels.qlinear import QuantLinear
from bitfront.kernels.quant import rtn_quantize
from bitfront.models.base import CodeLM
from bitfront.models.diffusion_sampling import DiffusionOptions, diffusion_sample
from bitfront.paths import cache_dir, read_cached, write_atomic
from bitfront.progress import track
from bitfront.space.layers import LayerSpace
from bitfront.space.plan import BitPlan

SCHEMA = 1
DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Workload(Config):
    """One generated sample: prompt and answer lengths, batch, diffusion steps, and the dtype
    the kernels are timed in."""

    prompt_len: int = setting(128, "latency workload: prompt tokens")
    answer_len: int = setting(128, "latency workload: answer tokens")
    batch: int = setting(1, "latency workload: samples per batch", flag="latency-batch")
    steps: int | None = setting(None, "latency workload: diffusion steps (default: one per "
                                      "answer token)")
    dtype: str = setting("bfloat16", "dtype the latency table is measured in",
                         flag="latency-dtype", choices=DTYPES)

    def __post_init__(self):
        self.require(self.prompt_len >= 1, "prompt_len", "at least 1")
        self.require(self.answer_len >= 2, "answer_len", "at least 2")
        self.require(self.batch >= 1, "batch", "at least 1")
        self.require(self.steps is None or self.steps >= 1, "steps", "at least 1")
        self.require(self.dtype in DTYPES, "dtype", f"one of {DTYPES}")

    def phases(self, family: str) -> dict[str, int]:
        """phase -> how many times it runs per sample. Each call of a linear layer sees
        batch × prompt tokens (AR prefill), batch tokens (AR decode) or
        batch × (prompt + answer) tokens (a diffusion step)."""
        if family == "ar":
            return {"prefill": 1, "decode": self.answer_len - 1}
        return {"step": self.steps or self.answer_len}

    def unit(self, family: str) -> tuple[str, int]:
        return ("token", self.answer_len) if family == "ar" else ("step",
                                                                  self.phases(family)["step"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, *, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of `fn()` in seconds (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class FreeLinear(nn.Module):
    """Stands in for a linear layer at (almost) no cost, to time the rest of the model."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


def _replace(module: nn.Module, names, make) -> None:
    modules = dict(module.named_modules())
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else module, child, make(name, modules[name]))


@torch.no_grad()
def generate_fixed(module: nn.Module, family: str, workload: Workload, *, vocab: int,
                   mask_id: int | None = None, seed: int = 0, on_phase=None) -> None:
    """One timed unit of work: a whole fixed-length generation (the latency definition).
    `on_phase(name)` is called as each phase (prefill, decode, step) begins."""
    device = next(module.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (workload.batch, workload.prompt_len), generator=gen)
    ids = ids.to(device)
    on_phase = on_phase or (lambda phase: None)
    if family == "ar":
        on_phase("prefill")
        out = module(input_ids=ids, use_cache=True)
        on_phase("decode")
        for _ in range(workload.answer_len - 1):
            token = out.logits[:, -1:].argmax(-1)
            out = module(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
        return
    on_phase("step")
    diffusion_sample(module, ids, max_new_tokens=workload.answer_len, mask_id=mask_id,
                     opts=DiffusionOptions(steps=workload.steps, alg="entropy"),
                     generator=torch.Generator(device=device).manual_seed(seed))


@dataclass
class LatencyTable:
    """Per-layer kernel times and the rest of the model, for one device and workload."""

    key: str
    device: str
    dtype: str
    family: str
    workload: Workload
    layers: dict[str, float]  # "phase|out|in|bits" -> seconds per call
    rest: float  # seconds per sample for everything but the quantizable linears
    meta: dict = field(default_factory=dict)

    def layer_time(self, phase: str, out_f: int, in_f: int, bits: int) -> float:
        return self.layers[f"{phase}|{out_f}|{in_f}|{bits}"]

    def layer_seconds(self, layer, bits: int) -> float:
        """Seconds per sample that `layer` costs at `bits`, every phase included
        (embeddings are looked up, not multiplied: they are part of `rest`)."""
        if layer.embedding:
            return 0.0
        return sum(calls * self.layer_time(phase, layer.out_features, layer.in_features, bits)
                   for phase, calls in self.workload.phases(self.family).items())

    def predict(self, space: LayerSpace, plan: BitPlan) -> dict:
        """Predicted seconds per sample, per token / step, and the split by phase."""
        by_phase = {}
        for phase, calls in self.workload.phases(self.family).items():
            by_phase[phase] = calls * sum(
                self.layer_time(phase, layer.out_features, layer.in_features,
                                plan.specs[layer.name].bits)
                for layer in space.layers if not layer.embedding)
        total = self.rest + sum(by_phase.values())
        unit, count = self.workload.unit(self.family)
        return {"seconds": total, f"per_{unit}": total / count, "linear_by_phase": by_phase,
                "rest": self.rest}

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **{k: v for k, v in asdict(self).items() if k != "workload"},
                "workload": asdict(self.workload)}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        data = {k: v for k, v in data.items() if k != "schema"}
        return cls(**{**data, "workload": Workload(**data["workload"])})


def _table_key(lm: CodeLM, space: LayerSpace, workload: Workload, bits, dtype, device,
               group_size: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # The architecture, not where the checkpoint lies: one table for every copy of a model.
    config = lm.module.config.to_dict() if hasattr(lm.module.config, "to_dict") else {}
    config.pop("_name_or_path", None)
    blob = json.dumps({"device": name, "threads": torch.get_num_threads(), "dtype": str(dtype),
                       "torch": torch.__version__, "family": lm.family, "config": config,
                       "attn": getattr(lm.module.config, "_attn_implementation", None),
                       "layers": [[l.out_features, l.in_features] for l in space.layers],
                       "workload": asdict(workload), "bits": list(bits),
                       "group_size": group_size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _LinearClock:
    """Times every call of the given modules by phase (forward hooks; CUDA events on GPU)."""

    def __init__(self, modules: dict[str, nn.Module], device: torch.device):
        self.device, self.phase = device, ""
        self.pending: list[tuple[str, object, object]] = []
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._start))
            self.handles.append(module.register_forward_hook(self._stop(name)))

    def _now(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, module, inputs):
        module._clock_start = self._now()

    def _stop(self, name):
        def hook(module, inputs, output):
            self.pending.append((f"{self.phase}|{name}", module._clock_start, self._now()))
        return hook

    def collect(self) -> dict[str, float]:
        """Total seconds per "phase|layer" since the last collect."""
        _sync(self.device)
        out: dict[str, float] = {}
        for key, start, end in self.pending:
            seconds = (start.elapsed_time(end) / 1000 if self.device.type == "cuda"
                       else end - start)
            out[key] = out.get(key, 0.0) + seconds
        self.pending.clear()
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _linears(space: LayerSpace) -> list[str]:
    """The layers with a per-layer latency (embeddings are part of the rest)."""
    return [layer.name for layer in space.layers if not layer.embedding]


def _uniform_packed(lm: CodeLM, space: LayerSpace, bits: int, group_size: int,
                    dtype: torch.dtype) -> nn.Module:
    """`lm.module` in `dtype` with every layer of `space` packed at `bits` (RTN weights)."""
    module = copy.deepcopy(lm.module).to(dtype)
    if bits != 16:
        def pack(name, linear):
            _, packed = rtn_quantize(linear.weight.detach().float(), bits, group_size)
            return QuantLinear(packed, linear.bias, dtype=dtype, device=lm.device)
        _replace(module, _linears(space), pack)
    return module.eval()


def measure_latency_table(lm: CodeLM, space: LayerSpace, workload: Workload, *,
                          bits=(2, 3, 4, 8, 16), group_size: int = 128, repeats: int = 5,
                          root: Path | None = None, show_progress: bool = True
                          ) -> LatencyTable:
    """Measure (or load from the cache) the latency table of `lm` on its device."""
    device, dtype = lm.device, getattr(torch, workload.dtype)
    key = _table_key(lm, space, workload, bits, dtype, device, group_size)
    path = (root or cache_dir() / "latency") / f"{key}.json"
    if (cached := read_cached(path, LatencyTable.from_dict)) is not None:
        return cached
    phases = workload.phases(lm.family)
    vocab, mask_id = len(lm.tokenizer), _mask_id(lm)
    layers: dict[str, float] = {}
    for b in track(list(bits), "latency table", show=show_progress):
        module = _uniform_packed(lm, space, b, group_size, dtype)
        targets = dict(module.named_modules())
        clock = _LinearClock({n: targets[n] for n in _linears(space)}, device)
        runs = []
        for i in range(repeats + 1):
            generate_fixed(module, lm.family, workload, vocab=vocab, mask_id=mask_id,
                           on_phase=lambda phase, c=clock: setattr(c, "phase", phase))
            timed = clock.collect()
            if i:  # the first run warms up
                runs.append(timed)
        clock.remove()
        for phase, calls in phases.items():
            per_shape: dict[tuple[int, int], list[float]] = {}
            for layer in (layer for layer in space.layers if not layer.embedding):
                per_call = statistics.median(r[f"{phase}|{layer.name}"] for r in runs) / calls
                per_shape.setdefault((layer.out_features, layer.in_features), []).append(
                    per_call)
            for (out_f, in_f), times in per_shape.items():
                layers[f"{phase}|{out_f}|{in_f}|{b}"] = statistics.mean(times)
        del module, targets, clock
    rest_module = copy.deepcopy(lm.module).to(dtype)
    _replace(rest_module, _linears(space),
             lambda name, mod: FreeLinear(mod.weight.shape[0]))
    rest = time_call(lambda: generate_fixed(rest_module, lm.family, workload,
                                            vocab=vocab, mask_id=mask_id),
                     device, repeats=max(3, repeats // 2), warmup=1)
    table = LatencyTable(key=key, device=str(device), dtype=str(dtype), family=lm.family,
                         workload=workload, layers=layers, rest=rest,
                         meta={"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "attn": getattr(lm.module.config, "_attn_implementation", None)})
    write_atomic(path, json.dumps(table.to_dict(), indent=1) + "\n")
    return table


def _mask_id(lm: CodeLM) -> int | None:
    return getattr(getattr(lm, "tokens", None), "mask", None)


def measure_plan_latency(lm: CodeLM, module: nn.Module, workload: Workload, *,
                         repeats: int = 3) -> dict:
    """End-to-end seconds per sample of a (packed) module running the workload."""
    seconds = time_call(lambda: generate_fixed(module, lm.family, workload,
                                               vocab=len(lm.tokenizer), mask_id=_mask_id(lm)),
                        lm.device, repeats=repeats, warmup=1)
    unit, count = workload.unit(lm.family)
    return {"seconds": seconds, f"per_{unit}": seconds / count}
