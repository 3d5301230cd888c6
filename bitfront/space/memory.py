"""Exact memory accounting of a bit plan, in bytes of the real packed tensors.

A quantized layer [out, in] at b bits with group size g stores (see kernels/quant.py):
qweight int32 [ceil(in/32)·b, out], qzeros int32 [n_groups, ceil(out/32)·b], scales float16
[n_groups, out] and g_idx int32 [in]. A layer left at 16 bits, and every parameter outside the
layer space (norms, embeddings, head unless chosen), costs 2 bytes per value.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitfront.space.layers import Layer, LayerSpace
from bitfront.space.plan import BitPlan, QuantSpec

BYTES_16BIT = 2


def packed_nbytes(out_features: int, in_features: int, bits: int, group_size: int) -> int:
    """Bytes of the packed tensors of one quantized [out, in] weight."""
    n_groups = 1 if group_size == -1 else -(-in_features // group_size)
    qweight = -(-in_features // 32) * bits * out_features * 4
    qzeros = n_groups * -(-out_features // 32) * bits * 4
    scales = n_groups * out_features * 2
    g_idx = in_features * 4
    return qweight + qzeros + scales + g_idx


def layer_nbytes(layer: Layer, spec: QuantSpec) -> int:
    if not spec.quantized:
        return layer.numel * BYTES_16BIT
    return packed_nbytes(layer.out_features, layer.in_features, spec.bits, spec.group_size)


@dataclass(frozen=True)
class MemoryReport:
    total_bytes: int  # the whole model's weights
    layer_bytes: int  # the quantizable layers (packed or 16-bit)
    fixed_bytes: int  # everything outside the layer space, at 16 bits
    avg_bits: float  # bits per weight of the quantizable layers, overheads included
    nominal_bits: float  # weight-count-weighted mean of the chosen bitwidths


def plan_memory(space: LayerSpace, plan: BitPlan) -> MemoryReport:
    layer_bytes = sum(layer_nbytes(layer, plan.specs[layer.name]) for layer in space.layers)
    weights = sum(layer.numel for layer in space.layers)
    nominal = sum(layer.numel * plan.specs[layer.name].bits for layer in space.layers)
    fixed = space.other_params * BYTES_16BIT
    return MemoryReport(
        total_bytes=layer_bytes + fixed,
        layer_bytes=layer_bytes,
        fixed_bytes=fixed,
        avg_bits=8 * layer_bytes / weights,
        nominal_bits=nominal / weights,
    )
