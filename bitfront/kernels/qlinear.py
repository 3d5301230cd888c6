"""A linear layer that stores packed 2/3/4/8-bit group-wise weights and computes from them.

The kernel is chosen per layer, fastest first, among those that can compute the layer's exact
quantized weights:

- `int4pack`: PyTorch's weight-only int4 kernel (tinygemm; `_weight_int4pack_mm_for_cpu`)
  for 4-bit layers with contiguous groups, bf16/fp16 activations, on CPU. It stores its own
  layout: the codes repacked [out, in/2] and per-group (scale, zero) pairs, where our
  w = s·(q − z) becomes tinygemm's (q − 8)·s + s·(8 − z).
- `int8pack`: PyTorch's weight-only int8 kernel (`_weight_int8pack_mm`) for 8-bit symmetric
  per-channel layers (w = s·(q − 128)); bf16/fp16 activations.
- `dequant`: anything else: the GPTQ-format tensors (qweight, qzeros, scales, g_idx; see
  kernels/quant.py) are unpacked and dequantized, then one matmul. On CUDA this is the path
  used too: the GPTQModel / Triton kernels are not wired because no GPU was available to
  validate them.
"""

from __future__ import annotations

import torch
from torch import nn

from bitfront.kernels.quant import PackedWeight, unpack_codes

KERNELS = ("int4pack", "int8pack", "dequant")
_FAST_DTYPES = (torch.bfloat16, torch.float16)
_INNER_K_TILES = 2


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def _unpack_plan(bits: int, device) -> tuple[torch.Tensor, ...]:
    """For each of the 32 values of a packed block: its low word and shift, the mask of the
    bits it finds there, its high word and the shift into it (values of 3 bits may straddle
    two int32 words), and whether it straddles."""
    j = torch.arange(32, device=device, dtype=torch.int32)
    word, shift = (j * bits) // 32, (j * bits) % 32
    straddle = shift + bits > 32
    low_bits = torch.clamp(32 - shift, max=bits)
    low_mask = (torch.ones_like(j) << low_bits) - 1
    high_shift = torch.where(straddle, 32 - shift, 0)
    return word.long(), shift, low_mask, torch.clamp(word + 1, max=bits - 1).long(), \
        high_shift, straddle.to(torch.int32)


def unpack_fast(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """`unpack_rows` vectorised, in int32: words [blocks·bits, m] -> values [n, m]."""
    blocks, m = words.shape[0] // bits, words.shape[1]
    if 32 % bits == 0:
        shifts = torch.arange(0, 32, bits, device=words.device, dtype=torch.int32)
        values = (words.unsqueeze(1) >> shifts.view(1, -1, 1)) & ((1 << bits) - 1)
        return values.reshape(words.shape[0] * (32 // bits), m)[:n]
    word, shift, low_mask, high, high_shift, straddle = _unpack_plan(bits, words.device)
    w = words.view(blocks, bits, m)
    low = (w[:, word] >> shift.view(1, -1, 1)) & low_mask.view(1, -1, 1)
    up = ((w[:, high] << high_shift.view(1, -1, 1)) & ((1 << bits) - 1)) * straddle.view(1, -1, 1)
    return (low | up).reshape(blocks * 32, m)[:n]


def _contiguous_groups(packed: PackedWeight) -> bool:
    out_f, in_f = packed.shape
    size = in_f if packed.group_size == -1 else packed.group_size
    expected = torch.arange(in_f, device=packed.g_idx.device) // size
    return bool(torch.equal(packed.g_idx.long(), expected))


def choose_kernel(packed: PackedWeight, dtype: torch.dtype, device: torch.device) -> str:
    out_f, in_f = packed.shape
    size = in_f if packed.group_size == -1 else packed.group_size
    if device.type != "cpu" or dtype not in _FAST_DTYPES:
        return "dequant"
    if (packed.bits == 4 and _has_op("_weight_int4pack_mm_for_cpu") and _contiguous_groups(packed)
            and in_f % size == 0 and size in (32, 64, 128, 256) and in_f % 16 == 0):
        return "int4pack"
    if packed.bits == 8 and packed.group_size == -1 and _has_op("_weight_int8pack_mm"):
        _, zeros = unpack_codes(packed)
        if bool((zeros == 128).all()):
            return "int8pack"
    return "dequant"


class QuantLinear(nn.Module):
    """y = x Wᵀ + b with W held in low-bit form (see the module docstring for kernels)."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None, *,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                 kernel: str | None = None):
        super().__init__()
        device = torch.device(device)
        self.out_features, self.in_features = packed.shape
        self.bits, self.group_size = packed.bits, packed.group_size
        self.dtype = dtype
        self.kernel = kernel or choose_kernel(packed, dtype, device)
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; choose from {KERNELS}")
        if self.kernel == "int4pack":
            codes, zeros = unpack_codes(packed)
            scales = packed.scales.float()  # [groups, out]
            pairs = torch.stack([scales, scales * (8 - zeros.float())], dim=-1)
            self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                codes.to(torch.int32).contiguous(), _INNER_K_TILES).to(device))
            self.register_buffer("scales_and_zeros", pairs.to(device, dtype).contiguous())
        elif self.kernel == "int8pack":
            codes, _ = unpack_codes(packed)
            self.register_buffer("weight_int8",
                                 (codes - 128).to(torch.int8).contiguous().to(device))
            self.register_buffer("scales", packed.scales.reshape(-1).to(device, dtype))
        else:
            for name, tensor in packed.tensors().items():
                self.register_buffer(name, tensor.to(device))
            self.contiguous = _contiguous_groups(packed)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(device, dtype),
                                                           requires_grad=False)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}, kernel={self.kernel}")

    def dequantized(self) -> torch.Tensor:
        """The weight, transposed [in, out], in `self.dtype` (the `dequant` kernel's first
        step); per-group broadcasting when groups are contiguous, a gather otherwise."""
        codes = unpack_fast(self.qweight, self.bits, self.in_features)  # [in, out]
        zeros = unpack_fast(self.qzeros.t().contiguous(), self.bits, self.out_features).t()
        scales = self.scales.to(self.dtype)  # [groups, out]
        groups = scales.shape[0]
        size = self.in_features if self.group_size == -1 else self.group_size
        if self.contiguous and groups * size == self.in_features:
            w = (codes.view(groups, size, -1) - zeros.unsqueeze(1)).to(self.dtype)
            return (w * scales.unsqueeze(1)).view(self.in_features, -1)
        g = self.g_idx.long()
        return (codes - zeros[g]).to(self.dtype) * scales[g]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features).to(self.dtype)
        if self.kernel == "int4pack":
            size = self.in_features if self.group_size == -1 else self.group_size
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight_int4, size,
                                                           self.scales_and_zeros)
        elif self.kernel == "int8pack":
            y = torch.ops.aten._weight_int8pack_mm(x, self.weight_int8, self.scales)
        else:
            y = x @ self.dequantized()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def module_nbytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of `module`, each storage counted once."""
    seen, total = set(), 0
    for tensor in [*module.parameters(), *module.buffers()]:
        key = (tensor.untyped_storage().data_ptr(), tensor.device)
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total
