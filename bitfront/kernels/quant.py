"""Uniform group-wise weight quantization, round-to-nearest, and int32 bit packing.

Conventions follow GPTQ's quantizer so that the packed form is the usual GPTQ layout:
- a weight W [out, in] is split along `in` into groups of `group_size` columns (-1: one group
  per output channel, i.e. the whole row);
- per (row, group): asymmetric (default) scale = (max - min) / maxq, zero = round(-min / scale);
  symmetric: range [-absmax, absmax] and zero = (maxq + 1) / 2, except that a row/group with
  no negative weight keeps min = 0, so scale = absmax / maxq and its top half clips (GPTQ's
  own quirk, kept so that packed checkpoints match GPTQ's); maxq = 2^bits - 1; scales are
  rounded to float16 before use, so the dequantized weight equals what the packed form holds;
- q = clamp(round(w / scale) + zero, 0, maxq); dequantized w = scale * (q - zero).

Packed tensors: qweight int32 [ceil(in / 32) * bits, out] (values packed along `in`, 32 per
`bits` words), qzeros int32 [n_groups, ceil(out / 32) * bits], scales float16 [n_groups, out],
g_idx int32 [in] (the group of each input column).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
VALUES_PER_BLOCK = 32  # values packed into `bits` int32 words


@dataclass
class PackedWeight:
    """A quantized weight in its real low-bit storage."""

    bits: int
    group_size: int
    qweight: torch.Tensor  # int32 [ceil(in/32) * bits, out]
    qzeros: torch.Tensor  # int32 [n_groups, ceil(out/32) * bits]
    scales: torch.Tensor  # float16 [n_groups, out]
    g_idx: torch.Tensor  # int32 [in]
    shape: tuple[int, int]  # (out, in)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "qzeros": self.qzeros, "scales": self.scales,
                "g_idx": self.g_idx}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device: torch.device | str) -> PackedWeight:
        return replace(self, **{k: t.to(device) for k, t in self.tensors().items()})


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bitwidth {bits}; choose from {SUPPORTED_BITS}")


def group_count(in_features: int, group_size: int) -> int:
    return 1 if group_size == -1 else -(-in_features // group_size)


MSE_GRID, MSE_MAX_SHRINK, MSE_NORM = 100, 0.8, 2.4  # GPTQ's Quantizer(mse=True) settings


def quant_params(w: torch.Tensor, bits: int, sym: bool, mse: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of `w` [rows, cols], each [rows, 1]; GPTQ's `find_params`.

    `bits` may also be a tensor [rows, 1] of per-row bitwidths. With `mse`, the range is
    shrunk by the factor (1, 0.99, ..., 0.21) that minimises the row's ‖Q(w) − w‖^2.4, as
    GPTQ's grid search does.
    """
    maxq = (2 ** torch.as_tensor(bits, device=w.device) - 1).to(w.dtype)
    xmin = torch.clamp(w.min(dim=1, keepdim=True).values, max=0)
    xmax = torch.clamp(w.max(dim=1, keepdim=True).values, min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    degenerate = (xmin == 0) & (xmax == 0)
    xmin = torch.where(degenerate, -torch.ones_like(xmin), xmin)
    xmax = torch.where(degenerate, torch.ones_like(xmax), xmax)
    scale, zero = _scale_zero(xmin, xmax, maxq, sym)
    if mse:
        best = torch.full_like(scale, float("inf"))
        for i in range(int(MSE_MAX_SHRINK * MSE_GRID)):
            s, z = _scale_zero(xmin * (1 - i / MSE_GRID), xmax * (1 - i / MSE_GRID), maxq, sym)
            q = s * (quantize_codes(w, s, z, maxq) - z)
            err = (q - w).abs().pow(MSE_NORM).sum(dim=1, keepdim=True)
            better = err < best
            best, scale, zero = (torch.where(better, err, best), torch.where(better, s, scale),
                                 torch.where(better, z, zero))
    return scale, zero


def _scale_zero(xmin, xmax, maxq, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    scale = ((xmax - xmin) / maxq).clamp(min=2**-14).to(torch.float16).to(xmin.dtype)
    zero = torch.full_like(scale, 0) + ((maxq + 1) / 2 if sym else torch.round(-xmin / scale))
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   maxq: torch.Tensor | int) -> torch.Tensor:
    q = (torch.round(w / scale) + zero).clamp_(min=0)
    return torch.minimum(q, maxq) if torch.is_tensor(maxq) else q.clamp_(max=maxq)


def group_slices(in_features: int, group_size: int) -> list[slice]:
    size = in_features if group_size == -1 else group_size
    return [slice(i, min(i + size, in_features)) for i in range(0, in_features, size)]


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False
                 ) -> tuple[torch.Tensor, PackedWeight]:
    """Round-to-nearest baseline: (dequantized weight, packed form)."""
    check_bits(bits)
    w = weight.detach().float()
    maxq = 2**bits - 1
    dq = torch.empty_like(w)
    codes = torch.empty_like(w)
    scales, zeros = [], []
    for cols in group_slices(w.shape[1], group_size):
        scale, zero = quant_params(w[:, cols], bits, sym)
        codes[:, cols] = quantize_codes(w[:, cols], scale, zero, maxq)
        dq[:, cols] = scale * (codes[:, cols] - zero)
        scales.append(scale)
        zeros.append(zero)
    packed = pack_weight(codes, torch.cat(scales, 1), torch.cat(zeros, 1), bits, group_size)
    return dq.to(weight.dtype), packed


# --- bit packing --------------------------------------------------------------------------

def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers `values` [n, m] (< 2^bits) along dim 0 into int32 words
    [ceil(n / 32) * bits, m]; values may straddle word boundaries (3 bits)."""
    n, m = values.shape
    blocks = -(-n // VALUES_PER_BLOCK)
    padded = torch.zeros(blocks * VALUES_PER_BLOCK, m, dtype=torch.int64, device=values.device)
    padded[:n] = values.to(torch.int64)
    padded = padded.view(blocks, VALUES_PER_BLOCK, m)
    words = torch.zeros(blocks, bits, m, dtype=torch.int64, device=values.device)
    for j in range(VALUES_PER_BLOCK):
        word, shift = divmod(j * bits, 32)
        words[:, word] |= (padded[:, j] << shift) & 0xFFFFFFFF
        if shift + bits > 32:
            words[:, word + 1] |= padded[:, j] >> (32 - shift)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.view(blocks * bits, m).to(torch.int32)


def unpack_last(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Values packed along the last dim: int32 words [m, blocks·bits] -> uint8 [m, n],
    vectorised on the words' device (one whole-tensor op per bit position of a byte). The
    words are read as their little-endian bytes, a bitstream: for widths dividing 8 a value
    never straddles a byte; for 3 bits every 3 bytes hold 8 whole values."""
    m = words.shape[0]
    octets = words.contiguous().view(torch.uint8)  # [m, blocks·bits·4]
    if bits == 8:
        return octets[:, :n]
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        values = torch.stack([(octets >> shift) & mask for shift in range(0, 8, bits)], -1)
    else:
        triple = octets.view(m, -1, 3).to(torch.int32)
        stream = triple[..., 0] | (triple[..., 1] << 8) | (triple[..., 2] << 16)
        values = torch.stack([((stream >> shift) & mask).to(torch.uint8)
                              for shift in range(0, 8 * bits, bits)], -1)
    return values.view(m, -1)[:, :n]


def unpack_rows(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_rows`: int32 words [blocks·bits, m] -> uint8 values [n, m]."""
    return unpack_last(words.t(), bits, n).t()


def pack_weight(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                group_size: int, g_idx: torch.Tensor | None = None) -> PackedWeight:
    """Pack integer codes [out, in] with per-group scales/zeros [out, n_groups]."""
    out_f, in_f = codes.shape
    if g_idx is None:
        size = in_f if group_size == -1 else group_size
        g_idx = torch.arange(in_f, device=codes.device) // size
    return PackedWeight(
        bits=bits,
        group_size=group_size,
        qweight=pack_rows(codes.t().contiguous(), bits),
        qzeros=pack_rows(zeros.round(), bits).t().contiguous(),
        scales=scales.t().contiguous().to(torch.float16),
        g_idx=g_idx.to(torch.int32),
        shape=(out_f, in_f),
    )


def unpack_codes(packed: PackedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [out, in], zeros [n_groups, out]) as int32."""
    out_f, in_f = packed.shape
    codes = unpack_last(packed.qweight.t(), packed.bits, in_f)
    zeros = unpack_rows(packed.qzeros.t(), packed.bits, out_f).t()
    return codes.to(torch.int32), zeros.to(torch.int32)


DEQUANT_CHUNK = 1 << 21  # weights dequantized per step: the temporaries stay in cache


def dequantize(packed: PackedWeight, dtype: torch.dtype = torch.float32, *,
               contiguous: bool | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """The dequantized weight [out, in] in `dtype` (written into `out` if given), on the
    packed tensors' device. Computed in float32 as q·s − z·s, which equals s·(q − z) exactly
    (an fp16 scale times an integer of at most 8 bits), so it equals GPTQ's dequantized
    weight cast to `dtype`. Contiguous groups (`contiguous`, if the caller knows it) are
    dequantized a chunk of rows at a time; act-order groups through a gather."""
    out_f, in_f = packed.shape
    words = packed.qweight.t()  # [out, in words]
    zeros = unpack_rows(packed.qzeros.t(), packed.bits, out_f).float()  # [out, groups]
    scales = packed.scales.t().float()  # [out, groups]
    out = torch.empty(out_f, in_f, dtype=dtype, device=words.device) if out is None else out
    groups = scales.shape[1]
    size = in_f if packed.group_size == -1 else packed.group_size
    if contiguous is None:
        contiguous = contiguous_groups(packed)
    if not (contiguous and groups * size == in_f):
        g = packed.g_idx.long()
        codes = unpack_last(words, packed.bits, in_f)
        return out.copy_((codes - zeros[:, g]) * scales[:, g])
    offsets = zeros * scales
    rows = max(1, DEQUANT_CHUNK // in_f)
    staging = None if out.dtype == torch.float32 else torch.empty(
        min(rows, out_f), in_f, dtype=torch.float32, device=out.device)
    for r in range(0, out_f, rows):
        chunk = out[r:r + rows]
        exact = chunk if staging is None else staging[:chunk.shape[0]]
        exact.copy_(unpack_last(words[r:r + rows], packed.bits, in_f))
        grouped = exact.view(-1, groups, size)
        grouped.mul_(scales[r:r + rows, :, None]).sub_(offsets[r:r + rows, :, None])
        if exact is not chunk:
            chunk.copy_(exact)
    return out


def contiguous_groups(packed: PackedWeight) -> bool:
    """Whether input column i belongs to group i // group_size (no act-order permutation)."""
    out_f, in_f = packed.shape
    size = in_f if packed.group_size == -1 else packed.group_size
    expected = torch.arange(in_f, device=packed.g_idx.device) // size
    return bool(torch.equal(packed.g_idx.long(), expected))
