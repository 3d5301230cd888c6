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
  kernels/quant.py) are unpacked and dequantized (`dequantize`, computed in float32, so the
  weight equals the simulated plan's), then one matmul. On CUDA this is the path
  used too: the GPTQModel / Triton kernels are not wired because no GPU was available to
  validate them.
"""

from __future__ import annotations

import torch
from torch import nn

from bitfront.kernels.quant import (
    PackedWeight,
    contiguous_groups,
    dequantize,
    unpack_codes,
)

KERNELS = ("int4pack", "int8pack", "dequant")
_FAST_DTYPES = (torch.bfloat16, torch.float16)
_INNER_K_TILES = 2


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def choose_kernel(packed: PackedWeight, dtype: torch.dtype, device: torch.device) -> str:
    out_f, in_f = packed.shape
    size = in_f if packed.group_size == -1 else packed.group_size
    if device.type != "cpu" or dtype not in _FAST_DTYPES:
        return "dequant"
    if (packed.bits == 4 and _has_op("_weight_int4pack_mm_for_cpu") and contiguous_groups(packed)
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
            self.contiguous = contiguous_groups(packed)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(device, dtype),
                                                           requires_grad=False)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, group_size={self.group_size}, kernel={self.kernel}")

    def dequantized(self) -> torch.Tensor:
        """The weight [out, in] in `self.dtype` (the `dequant` kernel's first step)."""
        packed = PackedWeight(self.bits, self.group_size, self.qweight, self.qzeros,
                              self.scales, self.g_idx, (self.out_features, self.in_features))
        return dequantize(packed, self.dtype, contiguous=self.contiguous)

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
            y = nn.functional.linear(x, self.dequantized())
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
