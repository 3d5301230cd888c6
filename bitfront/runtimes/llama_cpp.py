"""llama.cpp through llama-cpp-python's ctypes binding (the `bitfront[llama]` extra): the
module itself, a loaded model, and llama.cpp's own quantizer with one type per tensor."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from bitfront.errors import BitfrontError

INSTALL = ("llama.cpp is not installed: `pip install 'bitfront[llama]'` (builds llama.cpp from "
           "source, about 5 minutes on 2 cores; `make install` sets portable CPU flags)")


def require_llama_cpp():
    """The `llama_cpp` module, or a one-line error saying how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise BitfrontError(INSTALL) from None
    return llama_cpp


def llama_cpp_installed() -> bool:
    """Whether the `bitfront[llama]` extra is installed (without loading llama.cpp)."""
    return importlib.util.find_spec("llama_cpp") is not None


def default_threads() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def load_llama(path: str | Path, *, n_ctx: int = 2048, threads: int | None = None,
               logits_all: bool = False, seed: int = 0):
    """A `llama_cpp.Llama` of the GGUF at `path` on the CPU: quiet, seeded, `threads` (default:
    every CPU available) for decode and prefill; `logits_all` keeps every position's logits."""
    llama_cpp = require_llama_cpp()
    path = Path(path)
    if not path.is_file():
        raise BitfrontError(f"no GGUF file at {path}")
    threads = threads or default_threads()
    with llama_log(llama_cpp) as log:
        try:
            return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, logits_all=logits_all, seed=seed,
                                   n_gpu_layers=0, verbose=False)
        except ValueError:
            reason = next((line.strip() for line in log if line.strip()), "")  # the cause
            raise BitfrontError(f"llama.cpp cannot load {path}: {reason or 'see its log'}"
                                ) from None


def ggml_type(name: str) -> int:
    """The ggml enum value of a type spelled as ggml does (`q4_K`, `f16`)."""
    import gguf

    try:
        return gguf.GGMLQuantizationType[name.upper()].value
    except KeyError:
        raise BitfrontError(f"unknown ggml type {name!r} (e.g. q2_K, q3_K, q4_K, q8_0, f16)"
                            ) from None


def file_ftype(llama_cpp, types: list[str]) -> int:
    """The `llama_ftype` naming the most common of `types` (`general.file_type`): the type
    itself, else its medium k-quant mixture (Q4_K -> MOSTLY_Q4_K_M)."""
    common = Counter(types).most_common(1)[0][0].upper() if types else "F16"
    for name in (f"LLAMA_FTYPE_MOSTLY_{common}", f"LLAMA_FTYPE_MOSTLY_{common}_M"):
        if hasattr(llama_cpp, name):
            return getattr(llama_cpp, name)
    return llama_cpp.LLAMA_FTYPE_GUESSED


class _GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def tensor_types_of(path: str | Path) -> dict[str, str]:
    """Tensor name -> ggml type (ggml's spelling) of every tensor in the GGUF at `path`, read
    by ggml's own GGUF parser (the `gguf` package's reader takes minutes on the 300k strings
    of a Qwen tokenizer; this, a fraction of a second)."""
    import gguf

    lib = require_llama_cpp().llama_cpp._lib  # libllama: its dependency libggml-base has gguf_*
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GgufInitParams]
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_get_n_tensors.restype = ctypes.c_int64
    lib.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.gguf_get_tensor_type.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_type.restype = ctypes.c_int
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    context = lib.gguf_init_from_file(str(path).encode(), _GgufInitParams(True, None))
    if not context:
        raise BitfrontError(f"{path} is not a GGUF file ggml can read")
    try:
        return {lib.gguf_get_tensor_name(context, i).decode():
                ggml_name(gguf.GGMLQuantizationType(lib.gguf_get_tensor_type(context, i)))
                for i in range(lib.gguf_get_n_tensors(context))}
    finally:
        lib.gguf_free(context)


def ggml_name(kind) -> str:
    """ggml's spelling of a `gguf.GGMLQuantizationType` (`Q4_K` -> `q4_K`)."""
    return re.sub(r"^([A-Z]+)", lambda m: m.group(1).lower(), kind.name)


@contextlib.contextmanager
def llama_log(llama_cpp) -> Iterator[list[str]]:
    """Collect llama.cpp's log (rather than print it) while the block runs; the lines come
    back in the yielded list. llama-cpp-python's own logger is restored afterwards."""
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def quantize_gguf(source: str | Path, dest: str | Path, tensor_types: Mapping[str, str], *,
                  imatrix: Mapping[str, np.ndarray] | None = None,
                  threads: int | None = None) -> dict[str, str]:
    """Quantize the GGUF `source` into `dest` with llama.cpp's `llama_model_quantize`: each
    tensor named in `tensor_types` gets that ggml type (an exact-name override; `pure`, so
    llama.cpp's mixture rules change nothing), every other tensor keeps its source type.
    `imatrix` maps a tensor name to its importance per input column (e.g. the mean squared
    activation), which llama.cpp's quantizers weigh their rounding error by. Where a row length
    is not a multiple of a type's block llama.cpp falls back to another type: the returned map
    (tensor name -> type written, read back from `dest`) says what each tensor got."""
    llama_cpp = require_llama_cpp()
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise BitfrontError(f"no GGUF file at {source}")
    present = tensor_types_of(source)
    unknown = sorted(set(tensor_types) - set(present))
    if unknown:
        raise BitfrontError(f"{source} has no tensor {unknown[0]!r} ({len(unknown)} unknown "
                            "names); name tensors as the GGUF does (blk.0.attn_q.weight)")
    wanted = {**present, **tensor_types}
    overrides = (llama_cpp.llama_model_tensor_override * (len(wanted) + 1))()
    for entry, (name, kind) in zip(overrides, wanted.items(), strict=False):
        entry.pattern = f"^{re.escape(name)}$".encode()
        entry.type = ggml_type(kind)
    params = llama_cpp.llama_model_quantize_default_params()
    # Overrides apply only under a quantized default type; every tensor has one, so the
    # default itself writes nothing. The file's label names the plan's most common type.
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    label = (llama_cpp.llama_model_kv_override * 2)()
    label[0].key = b"general.file_type"
    label[0].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
    label[0].value.val_i64 = file_ftype(llama_cpp, list(tensor_types.values()))
    params.kv_overrides = label
    params.tt_overrides = overrides
    params.pure = True
    params.nthread = threads or default_threads()
    if imatrix:
        keep = [np.ascontiguousarray(v, dtype=np.float32) for v in imatrix.values()]
        entries = (llama_cpp.llama_model_imatrix_data * (len(keep) + 1))()
        for entry, name, values in zip(entries, imatrix, keep, strict=False):
            entry.name = name.encode()
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = values.size
        params.imatrix = entries
    dest.unlink(missing_ok=True)
    with llama_log(llama_cpp) as log:
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(),
                                                ctypes.byref(params))
    if failed:
        dest.unlink(missing_ok=True)
        reason = next((line.strip() for line in reversed(log) if "failed" in line), "")
        raise BitfrontError(f"llama.cpp could not quantize {source} into {dest}: "
                            f"{reason or 'see its log'}".rstrip())
    return tensor_types_of(dest)
