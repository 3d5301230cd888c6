"""What each layer costs when llama.cpp runs a model: per layer shape and ggml type, the seconds
one prefill and one decode step spend on it, measured on whole GGUFs with llama.cpp's own
kernels.

Why whole runs rather than per-op timings: a decode step on a CPU streams every weight from
memory once, so what a layer costs depends on what runs around it (cache, memory bandwidth,
the threads' barriers between ops); llama.cpp's only per-op hook (the scheduler's eval
callback) splits the graph at each observed op, which adds a launch per op and changes exactly
that. So the model is timed as deployed, and the per-layer costs are solved for:

- a **design** of GGUFs of the model, each holding every layer of one shape at one ggml type
  (balanced over the types each shape can take, shapes drawn independently, seeded);
- each GGUF is **timed** against the model's 16-bit GGUF (the reference): runs of each, in
  turn, of a prefill of the prompt and single-token decode steps at the middle of the answer
  (attention grows linearly with position, so a step there costs the mean step of the answer);
- per phase, least squares fits seconds = fixed + Σ_shape layers × δ(shape, type), δ = 0 for
  the reference (16-bit) type; the fit's relative residual says how additive the costs were.

The split between the fixed part and the layers is not identifiable from whole runs (every
plan holds every layer); the table uses one convention: a layer costs what its type adds over
the fastest type measured for its shape, and `rest` is the model with every layer at its
fastest type. Predictions of plans do not depend on the convention.

Timings resist other work on the machine. Each call is timed by the wall clock and, on one
thread, counts its CPU time where that is less (what it would have taken had it not waited for
a CPU; on more threads the others spin at a barrier while one waits, so only the wall clock
means anything); a run counts its median call. Other work also slows a run that never waits
(a neighbour on the same core, caches emptied), for spells of up to seconds: so a GGUF's runs
alternate with the reference's, at least `repeats` of each and for at least `MIN_SECONDS`, and
its time is the median ratio of its runs to the reference's beside them (a spell slows both)
times the reference's fastest run of the whole measurement (other work only ever slows a run
down). The share of calls whose threads had their CPUs (CPU time ≥ `CLEAN` × threads × wall)
is recorded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitfront.runtimes.llama_cpp import load_llama, require_llama_cpp

CLEAN = 0.9  # share of threads × wall a call's CPU time reaches when no thread waited
STEPS = 16  # decode steps timed per run
MIN_SECONDS = 0.5  # a GGUF and its reference are timed for at least this long
Shape = tuple[int, int]  # (out_features, in_features)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one GGUF: prefill (the whole prompt) and one decode step, and the
    share of calls that ran without waiting for a CPU."""

    prefill: float
    decode: float
    clean: float


class _Runs:
    """A GGUF loaded in llama.cpp, timed run by run: a prefill of `prompt_len` random tokens,
    then `steps` greedy decode steps in the middle of an `answer_len`-token answer."""

    def __init__(self, path: str | Path, *, prompt_len: int, answer_len: int, steps: int,
                 threads: int, seed: int = 0):
        self.llama_cpp = require_llama_cpp()
        self.path, self.threads, self.prompt_len = path, threads, prompt_len
        self.steps = min(steps, answer_len - 1)
        # Decode positions prompt_len .. prompt_len + answer_len - 2; the timed steps' mean
        # sits at their mean.
        filler = max(0, round((answer_len - 2) / 2 - (self.steps - 1) / 2))
        self.llama = load_llama(path, n_ctx=prompt_len + filler + self.steps + 1,
                                threads=threads)
        self.vocab = self.llama.n_vocab()
        self.memory = self.llama_cpp.llama_get_memory(self.llama.ctx)
        self.ids = np.random.default_rng(seed).integers(0, self.vocab,
                                                        prompt_len + filler).tolist()
        self.clean: list[bool] = []  # per timed call: whether its threads had their CPUs
        self.prefill: list[float] = []  # per run
        self.decode: list[float] = []  # per run: its median step
        self._call(self.ids[:1])  # touches every weight once: page faults, repacking
        self.clean.clear()

    def _call(self, tokens: list[int]) -> float:
        """Seconds of one llama_decode of `tokens` (see the module's docstring)."""
        llama_cpp, ctx = self.llama_cpp, self.llama.ctx
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(tokens), self.llama.n_batch):
            chunk = tokens[start:start + self.llama.n_batch]
            array = (llama_cpp.llama_token * len(chunk))(*chunk)  # alive while decoded
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(chunk))):
                raise RuntimeError(f"llama_decode failed on {self.path}")
        llama_cpp.llama_synchronize(ctx)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.clean.append(cpu >= CLEAN * self.threads * wall)
        return min(wall, cpu) if self.threads == 1 else wall

    def _greedy(self) -> int:
        logits = np.ctypeslib.as_array(
            self.llama_cpp.llama_get_logits_ith(self.llama.ctx, -1), shape=(self.vocab,))
        return int(logits.argmax())

    def run(self) -> None:
        self.llama_cpp.llama_memory_clear(self.memory, True)
        self.prefill.append(self._call(self.ids[:self.prompt_len]))
        if len(self.ids) > self.prompt_len:
            self._call(self.ids[self.prompt_len:])
            self.clean.pop()  # the filler is not timed
        self.decode.append(statistics.median(self._call([self._greedy()])
                                             for _ in range(self.steps)))

    def fastest(self) -> Timing:
        return Timing(min(self.prefill), min(self.decode), sum(self.clean) / len(self.clean))


@dataclass(frozen=True)
class Paired:
    """A GGUF timed against a reference: each one's fastest run, and the median ratio of the
    GGUF's runs to the reference's beside them (as a `Timing` of ratios)."""

    own: Timing
    reference: Timing
    ratio: Timing


def time_pair(path: str | Path, reference: str | Path, *, prompt_len: int, answer_len: int,
              threads: int, repeats: int = 3, steps: int = STEPS, seed: int = 0) -> Paired:
    """Time the GGUF at `path` against the one at `reference` in llama.cpp, their runs in turn
    (see the module's docstring)."""
    options = {"prompt_len": prompt_len, "answer_len": answer_len, "steps": steps,
               "threads": threads, "seed": seed}
    ref = _Runs(reference, **options)
    try:
        own = _Runs(path, **options)
        try:
            start = time.perf_counter()
            while len(own.decode) < repeats or time.perf_counter() - start < MIN_SECONDS:
                ref.run()
                own.run()
        finally:
            own.llama.close()
    finally:
        ref.llama.close()
    ratio = Timing(*(statistics.median(a / b for a, b in zip(getattr(own, phase),
                                                              getattr(ref, phase),
                                                              strict=True))
                     for phase in ("prefill", "decode")), own.fastest().clean)
    return Paired(own.fastest(), ref.fastest(), ratio)


def scaled(pairs: Sequence[Paired]) -> list[Timing]:
    """Each GGUF's time: its ratio to the reference times the reference's fastest run over all
    of `pairs`."""
    prefill = min(p.reference.prefill for p in pairs)
    decode = min(p.reference.decode for p in pairs)
    return [Timing(p.ratio.prefill * prefill, p.ratio.decode * decode, p.ratio.clean)
            for p in pairs]


def design(types: Mapping[Shape, Sequence[str]], counts: Mapping[Shape, int], *,
           seed: int = 0) -> list[dict[Shape, str]]:
    """The GGUFs to time, as shape -> type: each shape's types balanced over the runs, drawn
    independently per shape; enough runs to fit every cost with a few to spare (a quarter
    more, at least 4), and a design that identifies them all."""
    params = 1 + sum(len(t) - 1 for t in types.values())
    runs = params + max(4, params // 4)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        columns = {shape: [options[i % len(options)] for i in rng.permutation(runs)]
                   for shape, options in types.items()}
        rows = [{shape: columns[shape][i] for shape in types} for i in range(runs)]
        if np.linalg.matrix_rank(_matrix(rows, types, counts)) == params:
            return rows
    raise RuntimeError("no design identifies every layer cost")  # needs ~100 unlucky draws


def _matrix(rows: Sequence[Mapping[Shape, str]], types: Mapping[Shape, Sequence[str]],
            counts: Mapping[Shape, int]) -> np.ndarray:
    """Least-squares design matrix: a column of ones, then per shape and non-reference type
    the number of layers holding it."""
    columns = [(shape, kind) for shape, options in types.items() for kind in options[1:]]
    return np.array([[1.0] + [counts[shape] * (row[shape] == kind) for shape, kind in columns]
                     for row in rows])


@dataclass(frozen=True)
class LayerCosts:
    """Per phase: seconds per call of the rest of the model (every layer at its fastest
    type), and what each (shape, type) adds to it per layer; with the fit's relative
    residual (rms residual / mean time) and how many calls ran clean."""

    rest: dict[str, float]
    layers: dict[str, dict[Shape, dict[str, float]]]
    residual: dict[str, float]
    runs: int
    clean: float


def fit_costs(rows: Sequence[Mapping[Shape, str]], timings: Sequence[Timing],
              types: Mapping[Shape, Sequence[str]], counts: Mapping[Shape, int]) -> LayerCosts:
    """Solve the timed design for per-layer costs (see the module's docstring)."""
    matrix = _matrix(rows, types, counts)
    rest, layers, residual = {}, {}, {}
    for phase in ("prefill", "decode"):
        seconds = np.array([getattr(t, phase) for t in timings])
        solution, *_ = np.linalg.lstsq(matrix, seconds, rcond=None)
        errors = seconds - matrix @ solution
        residual[phase] = float(np.sqrt(np.mean(errors ** 2)) / seconds.mean())
        deltas = iter(solution[1:])
        fixed, per_shape = float(solution[0]), {}
        for shape, options in types.items():
            delta = {options[0]: 0.0, **{kind: float(next(deltas)) for kind in options[1:]}}
            fastest = min(delta.values())
            per_shape[shape] = {kind: d - fastest for kind, d in delta.items()}
            fixed += counts[shape] * fastest
        rest[phase], layers[phase] = fixed, per_shape
    clean = sum(t.clean for t in timings) / len(timings)
    return LayerCosts(rest, layers, residual, len(rows), clean)


def type_lists(types: Mapping[Shape, Mapping[int, str]]) -> dict[Shape, list[str]]:
    """Per shape, its distinct ggml types, the widest bitwidth's first (the reference)."""
    return {shape: list(dict.fromkeys(by_bits[b] for b in sorted(by_bits, reverse=True)))
            for shape, by_bits in types.items()}
