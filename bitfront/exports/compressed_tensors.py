"""Writing a bit plan as a compressed-tensors ("pack-quantized") checkpoint.

The checkpoint is a Hugging Face model directory that transformers loads, on CPU too: the
model's own `config.json` (CoDA's stays CoDA's) plus a `quantization_config` with one config
group per (bits, group size, symmetry), each targeting its modules by an anchored regex; the
plan's own GPTQ candidates, compressed by the library (no re-quantization: see below); layers at
16 bits and every other tensor in `dtype`; the tokenizer, the generation config and the plan.

Conventions. Our candidates (kernels/quant.py) hold unsigned codes q ∈ [0, 2^b − 1] with a
float16 scale s and an unsigned integer zero z per (row, group): w = s·(q − z).
compressed-tensors holds signed codes and zero points: w = s·(q' − z') with q', z' ∈
[−2^(b−1), 2^(b−1) − 1]. Shifting both by 2^(b−1) (q' = q − 2^(b−1), z' = z − 2^(b−1)) keeps
q' − z' = q − z. Symmetric candidates always have z = 2^(b−1) (GPTQ's symmetric quirk only
changes the scale of groups without negative weights), so z' = 0: the library's symmetric
scheme, which stores no zero point. The library quantizes our dequantized weight with our scales
and zero points; this gives back exactly our codes, since s·(q − z) is exact in float32 (an
11-bit mantissa times at most 8 bits) and so is its division by s. Scales are stored in float16,
as the candidates hold them.

Asymmetric layers are written with the "block" strategy, blocks of 1 row × group size columns:
the same numbers as group quantization, but with the zero points kept unpacked, int8 [out,
n_groups]. With the "group" strategy the library packs zero points to [⌈out·b/32⌉, n_groups]
int32, and no loader of compressed-tensors 0.20 + transformers 5 reads such a mixed-precision
checkpoint back: the default load builds each module on the meta device, where
`PackedQuantizationCompressor.compress` leaves its zero point unpacked ([out, n_groups]), so the
packed tensor is a size mismatch; and loading with `dequantize=True` decompresses every module
with the first config group's scheme (transformers' `get_dense_scheme`), wrong as soon as the
plan has two bitwidths. Unpacked zero points cost (8 − b)/g bits per weight more than packed ones
(0.05 at 2 bits, g = 128). vLLM serves pack-quantized weights of 4 and 8 bits only; of these
checkpoints it can serve plans of symmetric 4/8-bit layers (its `uint4b8`/`uint8b128` types are
exactly our symmetric convention).

Activation order: compressed-tensors 0.20 removed per-column group indices (`actorder="group"`,
`weight_g_idx`). Act-order candidates with static groups have contiguous groups and are written
with `actorder="weight"` (it describes calibration only); other act-order candidates are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bitfront.errors import PlanError
from bitfront.exports.checkpoint import checkpoint_tensors, write_checkpoint
from bitfront.exports.formats import module_regex
from bitfront.kernels.quant import PackedWeight, dequantize, unpack_codes
from bitfront.models.base import CodeLM
from bitfront.paths import atomic_directory
from bitfront.quant.apply import PlanApplier
from bitfront.quant.candidates import Candidates
from bitfront.space.layers import Layer, LayerSpace
from bitfront.space.plan import BitPlan

if TYPE_CHECKING:
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

FORMAT = "pack-quantized"


def _weight_args(layer: Layer, bits: int, group_size: int, sym: bool, act_order: bool
                 ) -> QuantizationArgs:
    """compressed-tensors' `QuantizationArgs` of one quantized layer (see the module
    docstring for why asymmetric layers use blocks)."""
    from compressed_tensors.quantization import QuantizationArgs

    size = layer.in_features if group_size == -1 else group_size
    if layer.in_features % size:
        raise PlanError(f"{layer.name}: {layer.in_features} input features are not a multiple "
                        f"of the group size {size}, which compressed-tensors requires")
    if not sym:
        shape = {"strategy": "block", "block_structure": [1, size]}
    elif group_size == -1:
        shape = {"strategy": "channel"}
    else:
        shape = {"strategy": "group", "group_size": group_size}
    return QuantizationArgs(num_bits=bits, type="int", symmetric=sym, **shape,
                            actorder="weight" if act_order else None)


def quantization_config(plan: BitPlan, space: LayerSpace, *, act_order: bool = False
                        ) -> tuple[QuantizationConfig, dict[str, QuantizationScheme]]:
    """(compressed-tensors `QuantizationConfig` of `plan`, the scheme of each quantized layer):
    one config group per distinct weight scheme, i.e. per (bits, group size, symmetry), and
    per input width for asymmetric per-channel layers, whose block is one whole row."""
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
    )

    by_args: dict[str, tuple[QuantizationArgs, list[str]]] = {}
    for name, spec in plan.specs.items():
        if spec.quantized:
            args = _weight_args(space[name], spec.bits, spec.group_size, spec.sym, act_order)
            by_args.setdefault(args.model_dump_json(), (args, []))[1].append(name)
    if not by_args:
        raise PlanError("the plan keeps every layer in 16-bit: nothing to quantize")
    groups = sorted(by_args.values(), key=lambda g: (g[0].num_bits, g[0].model_dump_json()))
    schemes = [QuantizationScheme(targets=["re:" + module_regex(names)], weights=args,
                                  format=FORMAT) for args, names in groups]
    config = QuantizationConfig(config_groups={f"group_{i}": s for i, s in enumerate(schemes)},
                                format=FORMAT, quantization_status=QuantizationStatus.COMPRESSED)
    return config, {name: s for s, (_, names) in zip(schemes, groups, strict=True)
                    for name in names}


def _compress(name: str, packed: PackedWeight, scheme: QuantizationScheme
              ) -> dict[str, torch.Tensor]:
    """The library's compressed tensors of one candidate (`weight_packed`, `weight_scale`,
    `weight_shape`, `weight_zero_point` when asymmetric)."""
    from compressed_tensors.compressors import BaseCompressor

    in_f = packed.shape[1]
    size = in_f if packed.group_size == -1 else packed.group_size
    if not torch.equal(packed.g_idx.long(), torch.arange(in_f) // size):
        raise PlanError(f"{name}: act-order candidates without static groups cannot be "
                        "written as compressed-tensors (it has no per-column group index); "
                        "build candidates with static groups or without act-order")
    offset = 1 << (packed.bits - 1)
    zeros = unpack_codes(packed)[1].t() - offset  # [out, n_groups], signed
    state = {"weight": dequantize(packed), "weight_scale": packed.scales.t().float()}
    if scheme.weights.symmetric:
        if zeros.any():
            raise ValueError(f"{name}: symmetric candidate with zero points other than "
                             f"{offset}")
    else:
        state["weight_zero_point"] = zeros.to(torch.int8)
    compressed = BaseCompressor.get_value_from_registry(FORMAT).compress(state, scheme)
    compressed["weight_scale"] = packed.scales.t()
    return compressed


def write_compressed_tensors(lm: CodeLM, plan: BitPlan, candidates: Candidates,
                             directory: Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write `plan` (made from `candidates` of `lm`, whose weights are as loaded) as a
    compressed-tensors checkpoint in `directory`; tensors outside the quantized layers in
    `dtype`. Returns `directory`."""
    from compressed_tensors.compressors import ModelCompressor

    PlanApplier(lm, candidates).check(plan)
    config, schemes = quantization_config(plan, candidates.space,
                                          act_order=candidates.settings.act_order)
    tensors = checkpoint_tensors(
        lm, plan, lambda name: _compress(name, candidates.packed(name, plan.specs[name].bits),
                                         schemes[name]), dtype)
    with atomic_directory(directory) as partial:  # complete, or nothing a loader accepts
        write_checkpoint(lm, plan, tensors, partial, dtype)
        ModelCompressor(quantization_config=config).update_config(str(partial))
    return directory
