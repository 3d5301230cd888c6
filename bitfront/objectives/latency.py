"""The latency objective: a per-device lookup table, validated against end-to-end timing.

Latency is defined per generated sample at fixed prompt/answer lengths (the `Workload`):

- AR: prefill of the prompt, then one decode step with KV cache per further answer token;
  also reported per answer token;
- diffusion: `steps` full forward passes over prompt + answer (plus the sampler's reveal);
  also reported per step.

The table is measured once per device (and dtype, attention backend, model shapes,
workload) and cached: for every distinct quantizable layer shape × bitwidth × phase, the packed
kernel's time per call at the token count that phase runs (AR prefill: batch × prompt; AR
decode: batch; diffusion: batch × (prompt + answer)), and the rest of the model (attention with
the chosen backend, norms, embeddings, head, sampler) measured once by running the whole
generation with every quantizable linear replaced by a free stand-in. Kernels are timed in place,
because the same kernel timed alone, with warm caches and idle threads, runs measurably faster
than between the model's other operations; but cheaply: per bitwidth one weight per distinct
shape is packed (round-to-nearest; speed does not depend on values) and copied into every layer
of that shape, and a few short real forwards per phase (one prefill and `calls` decode steps, or
`calls` diffusion steps) are timed by hooks on every linear (CUDA events on a GPU; Python's
garbage collector off), instead of whole generations. The table is measured in the dtype the
model runs in unless the workload names another. A plan's latency is rest + Σ over layers of
calls × table entry: a sum, so every search trial gets it for free; `validation.validate_costs`
checks it end to end.

Timings are only as good as the machine is quiet. While the table is measured, the kernel's
per-thread scheduler statistics tell how long this process's threads waited for a CPU while
they could have run, per second they ran (`cpu_wait`: near 0 on a quiet machine, about 1 when
another job takes half the CPUs); the table records it beside the load average, the CPU
pressure (PSI) and the CPUs and threads it had (`meta["conditions"]`). A table measured under
contention (`cpu_wait` over `CONTENDED`) comes with a warning and is not trusted for good: it is
measured again the next time it is asked for on a quiet machine.

Two backends measure the table (`Workload.backend`). `torch` times bitfront's own kernels as
above. `llama.cpp` times the runtime CPU users deploy AR models with: each layer shape at the
ggml type llama.cpp writes for each bitwidth (`GGML_TYPES`, with its fallbacks for rows that
are not a multiple of the type's block), solved from timed GGUFs of the model (see
`bitfront.runtimes.llama_timing`); a plan's latency is the same sum. `auto` (the default) takes
llama.cpp for a model of a llama.cpp architecture on the CPU when llama-cpp-python is installed
(batch 1), else torch: diffusion models keep the torch kernels. A `dtype` applies to the models
torch times (llama.cpp times its own types), so one study's settings serve both.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import os
import statistics
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from bitfront.config import Config, setting
from bitfront.errors import BitfrontError
from bitfront.kernels.qlinear import QuantLinear
from bitfront.kernels.quant import PackedWeight, rtn_quantize
from bitfront.models.base import CodeLM
from bitfront.models.diffusion_sampling import DiffusionOptions, diffusion_sample
from bitfront.paths import cache_dir, disk_errors, read_cached, write_atomic
from bitfront.progress import track
from bitfront.space.layers import LayerSpace
from bitfront.space.plan import BitPlan

SCHEMA = 2
DTYPES = ("bfloat16", "float16", "float32")
BACKENDS = ("auto", "torch", "llama.cpp")
CONTENDED = 0.2  # seconds waiting for a CPU per second on one above which timings are suspect
QUIET_PRESSURE = 10.0  # % of the last 10 s some task waited for a CPU (PSI) on a quiet machine


class LatencyWarning(UserWarning):
    """A latency table measured while other work competed for the CPUs."""


def _schedstat() -> tuple[int, int] | None:
    """(ns on a CPU, ns waiting for one) summed over this process's threads, or None where
    the kernel keeps no scheduler statistics."""
    run = wait = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/schedstat") as fh:
                on_cpu, waiting = fh.read().split()[:2]
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        run, wait = run + int(on_cpu), wait + int(waiting)
    return (run, wait) if run else None


def cpu_pressure() -> float | None:
    """% of the last 10 s in which some task waited for a CPU (PSI), or None without PSI."""
    try:
        with open("/proc/pressure/cpu") as fh:
            return float(fh.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def _quiet_now() -> bool:
    """Whether the machine looks quiet enough to time on (PSI, else the load average)."""
    pressure = cpu_pressure()
    if pressure is not None:
        return pressure < QUIET_PRESSURE
    return os.getloadavg()[0] < 0.5 * len(os.sched_getaffinity(0))


class _CpuWait:
    """Measures `cpu_wait` (see the module's docstring) over a `with` block."""

    def __enter__(self) -> _CpuWait:
        self.start, self.pressure = _schedstat(), cpu_pressure()
        self.ratio: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        end = _schedstat()
        if self.start is not None and end is not None and end[0] > self.start[0]:
            self.ratio = max(0.0, (end[1] - self.start[1]) / (end[0] - self.start[0]))

    def conditions(self, threads: int) -> dict:
        """What the table was measured under (`threads`: those the timed kernels ran on)."""
        return {"cpu_wait": None if self.ratio is None else round(self.ratio, 4),
                "contended": self.ratio is not None and self.ratio > CONTENDED,
                "cpu_pressure": [self.pressure, cpu_pressure()],
                "load": [round(x, 2) for x in os.getloadavg()],
                "cpus": len(os.sched_getaffinity(0)), "threads": threads,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


@dataclass(frozen=True)
class Workload(Config):
    """One generated sample: prompt and answer lengths, batch, diffusion steps; the backend
    that times it, the dtype torch kernels are timed in (by default the one the model runs
    in) and the threads llama.cpp runs on."""

    prompt_len: int = setting(128, "latency workload: prompt tokens")
    answer_len: int = setting(128, "latency workload: answer tokens")
    batch: int = setting(1, "latency workload: samples per batch", flag="latency-batch")
    steps: int | None = setting(None, "latency workload: diffusion steps (default: one per "
                                      "answer token)")
    dtype: str | None = setting(None, "dtype torch-timed latency tables are measured in "
                                      "(default: the model's, as loaded on its device)",
                                flag="latency-dtype", choices=DTYPES)
    backend: str = setting("auto", "what times the latency table: torch (bitfront's kernels), "
                                   "llama.cpp (its CPU kernels, AR models), auto (llama.cpp "
                                   "where it can time the model, else torch)",
                           flag="latency-backend", choices=BACKENDS)
    threads: int | None = setting(None, "threads llama.cpp runs on (default: every CPU)",
                                  flag="latency-threads")

    def __post_init__(self):
        self.require(self.prompt_len >= 1, "prompt_len", "at least 1")
        self.require(self.answer_len >= 2, "answer_len", "at least 2")
        self.require(self.batch >= 1, "batch", "at least 1")
        self.require(self.steps is None or self.steps >= 1, "steps", "at least 1")
        self.require(self.dtype is None or self.dtype in DTYPES, "dtype", f"one of {DTYPES}")
        self.require(self.backend in BACKENDS, "backend", f"one of {BACKENDS}")
        self.require(self.threads is None or self.threads >= 1, "threads", "at least 1")
        self.require(self.backend != "llama.cpp" or self.dtype is None, "dtype",
                     "unset with the llama.cpp backend (it times llama.cpp's own types)")
        self.require(self.backend != "llama.cpp" or self.batch == 1, "batch",
                     "1 with the llama.cpp backend (it times one sample at a time)")
        self.require(self.backend != "torch" or self.threads is None, "threads",
                     "unset with the torch backend (torch's own thread count applies)")

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


def _random_prompt(module: nn.Module, workload: Workload, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (workload.batch, workload.prompt_len), generator=gen)
    return ids.to(next(module.parameters()).device)


def _run_ar(module: nn.Module, ids: torch.Tensor, decode_steps: int,
            clock: _LinearClock | None = None) -> None:
    """Prefill `ids`, then `decode_steps` greedy steps with the KV cache (phases on `clock`)."""
    if clock is not None:
        clock.phase = "prefill"
    out = module(input_ids=ids, use_cache=True)
    if clock is not None:
        clock.phase = "decode"
    for _ in range(decode_steps):
        token = out.logits[:, -1:].argmax(-1)
        out = module(input_ids=token, past_key_values=out.past_key_values, use_cache=True)


@torch.no_grad()
def generate_fixed(module: nn.Module, family: str, workload: Workload, *, vocab: int,
                   mask_id: int | None = None, seed: int = 0) -> None:
    """One timed unit of work: a whole fixed-length generation (the latency definition)."""
    ids = _random_prompt(module, workload, vocab, seed)
    if family == "ar":
        return _run_ar(module, ids, workload.answer_len - 1)
    diffusion_sample(module, ids, max_new_tokens=workload.answer_len, mask_id=mask_id,
                     opts=DiffusionOptions(steps=workload.steps, alg="entropy"),
                     generator=torch.Generator(device=ids.device).manual_seed(seed))


@dataclass
class LatencyTable:
    """Per-layer kernel times and the rest of the model, for one device, workload and
    backend (llama.cpp: what a layer's type adds over its shape's fastest type, the rest being
    the model with every layer at its fastest type, per phase in `rest_by_phase`)."""

    key: str
    device: str
    dtype: str
    family: str
    workload: Workload
    layers: dict[str, float]  # "phase|out|in|bits" -> seconds per call
    rest: float  # seconds per sample for everything but the quantizable linears
    meta: dict = field(default_factory=dict)
    backend: str = "torch"  # what measured it: "torch" or "llama.cpp"
    rest_by_phase: dict[str, float] = field(default_factory=dict)  # llama.cpp: rest per phase

    @property
    def contended(self) -> bool:
        """Measured while other work competed for the CPUs (see `meta["conditions"]`)."""
        return bool(self.meta.get("conditions", {}).get("contended"))

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
        out = {"seconds": total, f"per_{unit}": total / count, "linear_by_phase": by_phase,
               "rest": self.rest}
        if self.rest_by_phase:
            out["seconds_by_phase"] = {phase: seconds + self.rest_by_phase[phase]
                                       for phase, seconds in by_phase.items()}
        return out

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **{k: v for k, v in asdict(self).items() if k != "workload"},
                "workload": asdict(self.workload)}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"latency table schema {data.get('schema')}, not {SCHEMA}")
        data = {k: v for k, v in data.items() if k != "schema"}
        return cls(**{**data, "workload": Workload(**data["workload"])})


def latency_backend(lm: CodeLM, workload: Workload) -> str:
    """The backend that times `lm` for `workload` ("torch" or "llama.cpp"; see the module's
    docstring), or a one-line error when llama.cpp is asked for and cannot time it."""
    if workload.backend == "torch" or (workload.backend == "auto" and workload.batch != 1):
        return "torch"
    from bitfront.exports.gguf import gguf_arch
    from bitfront.runtimes.llama_cpp import require_llama_cpp

    try:
        if lm.family != "ar":
            raise BitfrontError(f"llama.cpp has no {lm.family} architecture")
        if lm.device.type != "cpu":
            raise BitfrontError(f"the model runs on {lm.device}, the backend times llama.cpp "
                                "on the CPU")
        require_llama_cpp()
        gguf_arch(lm)
    except BitfrontError as exc:
        if workload.backend == "auto":
            return "torch"
        raise BitfrontError(f"the llama.cpp latency backend cannot time {lm.name}: {exc}"
                            ) from None
    return "llama.cpp"


def _torch_dtype(lm: CodeLM, workload: Workload) -> torch.dtype:
    return getattr(torch, workload.dtype) if workload.dtype else lm.dtype


def _runtime(lm: CodeLM, workload: Workload, backend: str) -> dict:
    """What the table's times depend on besides the model and workload: the backend, its
    version, device, threads and (torch) dtype and attention."""
    if backend == "llama.cpp":
        from bitfront.runtimes.llama_cpp import default_threads, require_llama_cpp

        return {"backend": backend, "device": "cpu",
                "llama_cpp": require_llama_cpp().__version__,
                "threads": workload.threads or default_threads()}
    device = lm.device
    return {"backend": backend,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "dtype": str(_torch_dtype(lm, workload)),
            "torch": torch.__version__,
            "attn": getattr(lm.module.config, "_attn_implementation", None)}


def _table_key(lm: CodeLM, space: LayerSpace, workload: Workload, bits, group_size: int,
               runtime: dict) -> str:
    # The architecture, not where the checkpoint lies: one table for every copy of a model.
    config = lm.module.config.to_dict() if hasattr(lm.module.config, "to_dict") else {}
    config.pop("_name_or_path", None)
    blob = json.dumps({**runtime, "family": lm.family, "config": config,
                       "layers": [[l.out_features, l.in_features] for l in space.layers],
                       "workload": asdict(workload), "bits": list(bits),
                       "group_size": group_size, "schema": SCHEMA}, sort_keys=True, default=str)
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


@contextlib.contextmanager
def _no_gc():
    """Python's garbage collector off, as `timeit` does while it times."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _linears(space: LayerSpace) -> list[str]:
    """The layers with a per-layer latency (embeddings are part of the rest)."""
    return [layer.name for layer in space.layers if not layer.embedding]


def _packed_layers(lm: CodeLM, space: LayerSpace, bits: int, group_size: int,
                   dtype: torch.dtype) -> dict[str, nn.Module]:
    """Every linear of `space` packed at `bits`, quantizing once per distinct shape (each layer
    gets its own copy of the packed tensors, so no layer runs on another's warm weights)."""
    modules = dict(lm.module.named_modules())
    packed: dict[tuple[int, int], PackedWeight] = {}
    layers = {}
    for layer in space.layers:
        if layer.embedding:
            continue
        linear = modules[layer.name]
        shape = (layer.out_features, layer.in_features)
        if shape not in packed:
            packed[shape] = rtn_quantize(linear.weight.detach().float(), bits, group_size)[1]
        weight = replace(packed[shape], **{k: t.clone() for k, t in
                                           packed[shape].tensors().items()})
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        layers[layer.name] = QuantLinear(weight, bias, dtype=dtype, device=lm.device)
    return layers


@torch.no_grad()
def _short_run(module: nn.Module, family: str, workload: Workload, calls: int, *, vocab: int,
               mask_id: int | None, clock: _LinearClock) -> None:
    """A few real forwards per phase: one prefill and `calls` decode steps (AR), or `calls`
    diffusion steps over prompt + masked answer."""
    ids = _random_prompt(module, workload, vocab, seed=0)
    if family == "ar":
        return _run_ar(module, ids, calls, clock)
    clock.phase = "step"
    x = torch.nn.functional.pad(ids, (0, workload.answer_len), value=mask_id)
    for _ in range(calls):
        module(x, x == mask_id)


def measure_latency_table(lm: CodeLM, space: LayerSpace, workload: Workload, *,
                          bits=(2, 3, 4, 8, 16), group_size: int = 128, repeats: int = 3,
                          calls: int = 1, root: Path | None = None,
                          show_progress: bool = True) -> LatencyTable:
    """Measure (or load from the cache) the latency table of `lm` with the workload's backend
    (`latency_backend`): torch times each kernel over `calls` calls per short run, the median
    of `repeats` runs; llama.cpp times each GGUF of its design `repeats` times. The table
    records the conditions it was measured under (a cached table measured under contention is
    measured again when the machine is quiet)."""
    backend = latency_backend(lm, workload)
    runtime = _runtime(lm, workload, backend)
    key = _table_key(lm, space, workload, bits, group_size, runtime)
    path = (root or cache_dir() / "latency") / f"{key}.json"
    cached = read_cached(path, LatencyTable.from_dict)
    if cached is not None and not (cached.contended and _quiet_now()):
        return cached
    with _CpuWait() as waited:
        if backend == "llama.cpp":
            table = _measure_llama(lm, space, workload, bits=bits, group_size=group_size,
                                   repeats=repeats, key=key, threads=runtime["threads"],
                                   show_progress=show_progress)
        else:
            table = _measure(lm, space, workload, bits=bits, group_size=group_size,
                             repeats=repeats, calls=calls, key=key,
                             dtype=_torch_dtype(lm, workload), show_progress=show_progress)
    table.meta["conditions"] = waited.conditions(runtime["threads"])
    if table.contended:
        warnings.warn(
            f"the latency table of {lm.name} was measured while other work competed for the "
            f"CPUs (its threads waited {waited.ratio:.2f} s for a CPU per second on one; load "
            f"{table.meta['conditions']['load'][0]} on {table.meta['conditions']['cpus']} "
            "CPUs): its latencies may be too high; it is measured again when next asked for "
            "on a quiet machine", LatencyWarning, stacklevel=2)
    write_atomic(path, json.dumps(table.to_dict(), indent=1) + "\n")
    return table


def _measure(lm: CodeLM, space: LayerSpace, workload: Workload, *, bits, group_size: int,
             repeats: int, calls: int, key: str, dtype: torch.dtype,
             show_progress: bool) -> LatencyTable:
    """The measurement behind `measure_latency_table`."""
    device = lm.device
    per_run = {"prefill": 1, "decode": calls} if lm.family == "ar" else {"step": calls}
    vocab, mask_id = len(lm.tokenizer), _mask_id(lm)
    module = copy.deepcopy(lm.module).to(dtype).eval()
    linears = _linears(space)
    modules = dict(module.named_modules())
    dense = {name: modules[name] for name in linears}
    layers: dict[str, float] = {}
    for b in track(list(bits), "latency table", show=show_progress):
        current = dense if b == 16 else _packed_layers(lm, space, b, group_size, dtype)
        _replace(module, linears, lambda name, _, c=current: c[name])
        clock = _LinearClock(current, device)
        runs = []
        for i in range(repeats + 1):
            with _no_gc():  # a collection inside one timed call would skew that layer
                _short_run(module, lm.family, workload, calls, vocab=vocab, mask_id=mask_id,
                           clock=clock)
            timed = clock.collect()
            if i:  # the first run warms up
                runs.append(timed)
        clock.remove()
        for phase, n in per_run.items():
            per_shape: dict[tuple[int, int], list[float]] = {}
            for layer in (layer for layer in space.layers if not layer.embedding):
                per_call = statistics.median(r[f"{phase}|{layer.name}"] for r in runs) / n
                per_shape.setdefault((layer.out_features, layer.in_features), []).append(
                    per_call)
            for (out_f, in_f), times in per_shape.items():
                layers[f"{phase}|{out_f}|{in_f}|{b}"] = statistics.mean(times)
        del clock
    _replace(module, linears, lambda name, mod: FreeLinear(dense[name].weight.shape[0]))
    rest = time_call(lambda: generate_fixed(module, lm.family, workload,
                                            vocab=vocab, mask_id=mask_id),
                     device, repeats=repeats, warmup=1)
    table = LatencyTable(key=key, device=str(device), dtype=str(dtype), family=lm.family,
                         workload=workload, layers=layers, rest=rest,
                         meta={"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "attn": getattr(lm.module.config, "_attn_implementation", None),
                               "calls": calls, "repeats": repeats})
    return table


def _measure_llama(lm: CodeLM, space: LayerSpace, workload: Workload, *, bits, group_size: int,
                   repeats: int, key: str, threads: int, show_progress: bool) -> LatencyTable:
    """The llama.cpp measurement behind `measure_latency_table`: the model's 16-bit GGUF,
    the design's GGUFs quantized from it by llama.cpp (each layer shape at the type llama.cpp
    writes for a bitwidth), each timed against the 16-bit one and deleted, then the costs
    solved for."""
    from bitfront.exports.formats import GGML_TYPES
    from bitfront.exports.gguf import gguf_arch, plan_tensor_types, write_source, written_type
    from bitfront.runtimes import llama_timing
    from bitfront.runtimes.llama_cpp import quantize_gguf, require_llama_cpp

    arch, _ = gguf_arch(lm)
    shapes: dict[tuple[int, int], list[str]] = {}
    for layer in space.layers:
        if not layer.embedding:
            shapes.setdefault((layer.out_features, layer.in_features), []).append(layer.name)
    types = {shape: {b: written_type(GGML_TYPES[b], shape[1]) for b in bits}
             for shape in shapes}
    options = llama_timing.type_lists(types)
    counts = {shape: len(names) for shape, names in shapes.items()}
    rows = llama_timing.design(options, counts)
    # The plan bitwidth that makes each type (the widest, where several do).
    bits_for = {shape: {kind: b for b, kind in sorted(by_bits.items())}
                for shape, by_bits in types.items()}
    pairs, model, scratch = [], lm.fingerprint(), cache_dir()
    with disk_errors(scratch):
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="llama-latency-") as tmp:
        source, variant = Path(tmp) / "source.gguf", Path(tmp) / "variant.gguf"
        with disk_errors(source):
            write_source(lm, source)
        for row in track(rows, "llama.cpp latency table", show=show_progress):
            plan = BitPlan.from_bits(model, {
                name: bits_for[shape][row[shape]] for shape, names in shapes.items()
                for name in names}, group_size)
            wanted = plan_tensor_types(lm, plan, arch)
            written = quantize_gguf(source, variant, wanted)
            if Counter(written[name] for name in wanted) != Counter(
                    row[shape] for shape, names in shapes.items() for _ in names):
                raise BitfrontError(f"llama.cpp wrote other types than bitfront predicts for "
                                    f"{lm.name}: its fallback rules changed")
            pairs.append(llama_timing.time_pair(
                variant, source, prompt_len=workload.prompt_len,
                answer_len=workload.answer_len, threads=threads, repeats=repeats))
    costs = llama_timing.fit_costs(rows, llama_timing.scaled(pairs), options, counts)
    calls = workload.phases(lm.family)
    rest_by_phase = {phase: n * costs.rest[phase] for phase, n in calls.items()}
    return LatencyTable(
        key=key, device="cpu", dtype="f16", family=lm.family, workload=workload,
        layers={f"{phase}|{o}|{i}|{b}": costs.layers[phase][o, i][kind]
                for phase in calls for (o, i), by_bits in types.items()
                for b, kind in by_bits.items()},
        rest=sum(rest_by_phase.values()), backend="llama.cpp", rest_by_phase=rest_by_phase,
        meta={"llama_cpp": require_llama_cpp().__version__, "threads": threads,
              "types": {f"{o}|{i}|{b}": kind for (o, i), by_bits in types.items()
                        for b, kind in by_bits.items()},
              "runs": costs.runs, "repeats": repeats, "decode_steps": llama_timing.STEPS,
              "fit_residual": costs.residual, "clean_calls": round(costs.clean, 3)})


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
