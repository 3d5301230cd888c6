"""The candidate cache: every quantizable layer at every bitwidth, computed once.

Candidates of a model are keyed by the model fingerprint, the calibration fingerprint, the
quantizer settings and the layer space; they live in `<cache>/candidates/<key>/`, one
safetensors file per layer holding the original weight once (`w16`) and each bitwidth's packed
form only (codes, zeros, fp16 scales, g_idx), with GPTQ's loss and a checksum in the metadata:
1 + Σ bits / dtype bits of the layer's bytes, plus the scales. A bitwidth's weight is
dequantized on the model's device when it is asked for and never kept: no dequantized copy is
on disk or resident. Files are written
atomically (temp file + rename); an entry that fails to parse or whose checksum does not match
is recomputed, and a killed run resumes from the layers already on disk (only the missing
layers' Hessians are captured again).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from bitfront.config import Config, setting
from bitfront.kernels.gptq import GPTQResult, gptq_quantize
from bitfront.kernels.hessian import capture_hessians
from bitfront.kernels.quant import PackedWeight, dequantize, rtn_quantize
from bitfront.models.base import CodeLM
from bitfront.paths import cache_dir, write_atomic
from bitfront.progress import progress_bar
from bitfront.quant.calibration import Calibration
from bitfront.space.layers import LayerSpace

FORMAT = 2  # 2: packed forms only (1 also stored every dequantized weight)
PACKED_FIELDS = ("qweight", "qzeros", "scales", "g_idx")
CANDIDATE_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class QuantizerSettings(Config):
    """How candidates are computed (GPTQ options shared by every bitwidth)."""

    bits: tuple[int, ...] = setting((2, 3, 4, 8), "bitwidths to compute candidates for",
                                    flag="candidate-bits")
    group_size: int = setting(128, "weights per quantization group; -1 = per output channel")
    sym: bool = setting(False, "symmetric quantization (no zero points)")
    act_order: bool = setting(False, "GPTQ: quantize columns by decreasing Hessian diagonal")
    static_groups: bool = setting(False, "GPTQ with act-order: fix group parameters upfront")
    percdamp: float = setting(0.01, "GPTQ: Hessian dampening, fraction of its mean diagonal")
    blocksize: int = setting(128, "GPTQ: columns updated per block")
    mse: bool = setting(False, "GPTQ: grid-search each group's range for the least error")

    def __post_init__(self):
        self.require(bool(self.bits) and set(self.bits) <= set(CANDIDATE_BITS), "bits",
                     f"bits from {CANDIDATE_BITS}")
        self.require(self.group_size > 0 or self.group_size == -1, "group_size",
                     "a positive number, or -1 for one group per row")
        self.require(self.percdamp > 0, "percdamp", "a positive number")
        self.require(self.blocksize > 0, "blocksize", "a positive number")


def candidate_key(model: str, calibration: str, settings: QuantizerSettings,
                  space: LayerSpace, hessian_dtype: torch.dtype = torch.float32) -> str:
    blob = json.dumps({"format": FORMAT, "model": model, "calibration": calibration,
                       "settings": settings.to_dict(), "layers": space.names(),
                       "hessian_dtype": str(hessian_dtype)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _layer_weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach()


class Candidates:
    """Read access to a complete candidate directory: weights on `device` in `dtype`, read
    (and dequantized) on demand, not retained."""

    def __init__(self, directory: Path, space: LayerSpace, settings: QuantizerSettings,
                 *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.directory = directory
        self.space = space
        self.settings = settings
        self.device = torch.device(device)
        self.dtype = dtype
        manifest = json.loads((directory / "manifest.json").read_text())
        self.calibration: dict = manifest["calibration"]
        self.losses: dict[str, dict[int, float]] = {
            name: {int(b): v for b, v in losses.items()}
            for name, losses in manifest["gptq_loss"].items()
        }

    @property
    def key(self) -> str:
        return self.directory.name

    @property
    def bits(self) -> tuple[int, ...]:
        return (*self.settings.bits, 16)

    def file(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def weight(self, name: str, bits: int, *, out: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The weight of `name` at `bits` (16: the original), dequantized on the device
        (into `out`, if given: plan application writes straight into the live weight)."""
        layer = self.space[name]
        return read_weight(self.file(name), bits, self.settings.group_size,
                           (layer.out_features, layer.in_features), self.device, self.dtype,
                           out=out)

    def packed(self, name: str, bits: int) -> PackedWeight:
        layer = self.space[name]
        return read_packed(self.file(name), bits, self.settings.group_size,
                           (layer.out_features, layer.in_features))

    def gptq_loss(self, name: str, bits: int) -> float:
        return 0.0 if bits == 16 else self.losses[name][bits]


def read_packed(path: Path, bits: int, group_size: int, shape: tuple[int, int]
                ) -> PackedWeight:
    """One bitwidth's packed form from a layer file."""
    with safe_open(path, framework="pt") as fh:
        parts = {f: fh.get_tensor(f"{bits}.{f}") for f in PACKED_FIELDS}
    return PackedWeight(bits=bits, group_size=group_size, shape=shape, **parts)


def read_weight(path: Path, bits: int, group_size: int, shape: tuple[int, int],
                device: torch.device, dtype: torch.dtype, *, out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """A layer file's weight at `bits` on `device` in `dtype` (into `out`, if given): the
    original at 16 bits, else the packed form moved to `device` and dequantized there."""
    if bits != 16:
        return dequantize(read_packed(path, bits, group_size, shape).to(device), dtype, out=out)
    with safe_open(path, framework="pt") as fh:
        original = fh.get_tensor("w16")
    return original.to(device, dtype) if out is None else out.copy_(original)


def write_layer(path: Path, original: torch.Tensor, results: dict[int, GPTQResult]) -> str:
    tensors = {"w16": original.cpu().contiguous()}
    meta = {"format": str(FORMAT)}
    for bits, result in results.items():
        for field, tensor in result.packed.tensors().items():
            tensors[f"{bits}.{field}"] = tensor.cpu().contiguous()
        meta[f"loss.{bits}"] = repr(result.loss)
    meta["checksum"] = _checksum(tensors)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return meta["checksum"]


def _read_losses(path: Path, bits: tuple[int, ...]) -> dict[int, float] | None:
    """GPTQ losses of a valid layer file, or None if the file is missing, truncated,
    corrupted or incomplete."""
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        expected = {"w16"} | {f"{b}.{f}" for b in bits for f in PACKED_FIELDS}
        if set(tensors) != expected or meta.get("checksum") != _checksum(tensors):
            return None
        return {b: float(meta[f"loss.{b}"]) for b in bits}
    except Exception:  # noqa: BLE001 - any unreadable file is simply recomputed
        return None


def _quantize_layer(module: nn.Module, hessian: torch.Tensor | None,
                    settings: QuantizerSettings) -> dict[int, GPTQResult]:
    weight = _layer_weight(module)
    if hessian is None:  # embeddings: no input Hessian, round to nearest
        out = {}
        for bits in settings.bits:
            dq, packed = rtn_quantize(weight, bits, settings.group_size, settings.sym)
            loss = float(((dq.float() - weight.float()) ** 2).sum() / 2)
            out[bits] = GPTQResult(bits=bits, weight=dq.float(), packed=packed, loss=loss)
        return out
    # Every setting but the bitwidths is a GPTQ option: a new field reaches the kernel as is.
    options = {k: v for k, v in settings.to_dict().items() if k != "bits"}
    return gptq_quantize(weight, hessian, settings.bits, **options)


def _chunks(space: LayerSpace, names: list[str], max_bytes: int, element_size: int
            ) -> list[list[str]]:
    """Split layers into calibration passes whose Hessians fit in `max_bytes`, never
    splitting a decoder block (its linears share Hessians)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    block = object()
    for name in names:
        layer = space[name]
        cost = layer.in_features**2 * element_size
        if current and layer.block != block and size + cost > max_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(name)
        size += cost
        block = layer.block
    if current:
        chunks.append(current)
    return chunks


def hessian_budget(lm: CodeLM) -> int:
    """Bytes of Hessians one calibration pass may collect: half the model's bytes, at most
    4 GiB (more passes over the calibration set, instead of more memory)."""
    return min(4 << 30, sum(p.numel() * p.element_size() for p in lm.module.parameters()) // 2)


def candidate_dir(lm: CodeLM, space: LayerSpace, calibration: Calibration,
                  settings: QuantizerSettings, root: Path | None = None,
                  hessian_dtype: torch.dtype = torch.float32) -> Path:
    """Where the candidates of these inputs live (or will)."""
    root = root or cache_dir() / "candidates"
    return root / candidate_key(lm.fingerprint(), calibration.fingerprint(), settings, space,
                                hessian_dtype)


def build_candidates(lm: CodeLM, space: LayerSpace, calibration: Calibration, *,
                     settings: QuantizerSettings | None = None, root: Path | None = None,
                     hessian_dtype: torch.dtype = torch.float32,
                     max_hessian_bytes: int | None = None, show_progress: bool = True
                     ) -> Candidates:
    """Compute (or resume, or just open) the candidates of every layer of `space`; the
    Hessians held at once stay within `max_hessian_bytes` (default: `hessian_budget`)."""
    settings = settings or QuantizerSettings()
    directory = candidate_dir(lm, space, calibration, settings, root, hessian_dtype)
    key = directory.name
    directory.mkdir(parents=True, exist_ok=True)
    modules = dict(lm.module.named_modules())
    losses: dict[str, dict[int, float]] = {}
    todo = []
    for name in space.names():
        found = _read_losses(directory / f"{name}.safetensors", settings.bits)
        if found is None:
            todo.append(name)
        else:
            losses[name] = found
    if todo:
        with progress_bar() as bar:
            task = bar.add_task("GPTQ candidates", total=len(todo), info="",
                                visible=show_progress)
            element_size = torch.empty(0, dtype=hessian_dtype).element_size()
            budget = max_hessian_bytes or hessian_budget(lm)
            for chunk in _chunks(space, todo, budget, element_size):
                linears = {n: modules[n] for n in chunk if isinstance(modules[n], nn.Linear)}
                bar.update(task, info=f"calibrating {len(linears)} layers")
                forward = partial(lm.calibration_forward,
                                  head=any(m is lm.head for m in linears.values()))
                hessians = capture_hessians(forward, linears, calibration.batches,
                                            dtype=hessian_dtype)
                for name in chunk:
                    bar.update(task, info=name)
                    results = _quantize_layer(modules[name], hessians.get(name), settings)
                    write_layer(directory / f"{name}.safetensors",
                                 _layer_weight(modules[name]), results)
                    losses[name] = {b: r.loss for b, r in results.items()}
                    bar.advance(task)
                del hessians
    manifest = {"format": FORMAT, "key": key, "model": lm.name, "settings": settings.to_dict(),
                "calibration": calibration.config.to_dict(), "layers": space.names(),
                "gptq_loss": {n: {str(b): v for b, v in losses[n].items()}
                              for n in space.names()}}
    write_atomic(directory / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return Candidates(directory, space, settings, device=lm.device, dtype=lm.dtype)
