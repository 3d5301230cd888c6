"""The one place that decides how attention runs, for both families.

Backends are transformers attention implementations, so the same choice applies to any
Hugging Face causal LM and to our CoDA network (whose attention modules are non-causal):

- `flash`: flash-attn's kernels (`flash_attn_func`, and the varlen form for padded batches,
  through transformers' `flash_attention_2`) when the package is installed on CUDA; else
  PyTorch SDPA restricted to its flash backend (memory-efficient as the fallback when a
  padding mask rules flash out) on CUDA; else SDPA on CPU, whose CPU kernel is a
  flash-style fused kernel. Causal for AR models, non-causal for diffusion models: each
  attention module says which (`is_causal`).
- `sdpa`: PyTorch scaled dot-product attention with its default backend choice.
- `eager`: plain matrix products and softmax; twice differentiable (exact HVPs).

Outputs of all paths agree to float32 rounding (tested on tiny models: max |Δlogit| < 1e-4).
"""

from __future__ import annotations

import importlib.util

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bitfront.errors import BitfrontError

BACKENDS = ("flash", "sdpa", "eager")
SDPA_FLASH = "bitfront_sdpa_flash"


def _sdpa_flash_forward(*args, **kwargs):
    """transformers' SDPA attention, with PyTorch's flash backend preferred."""
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        return sdpa_attention_forward(*args, **kwargs)


AttentionInterface.register(SDPA_FLASH, _sdpa_flash_forward)
AttentionMaskInterface.register(SDPA_FLASH, sdpa_mask)


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_attention(requested: str | None = None, device: torch.device | str = "cpu") -> str:
    """The transformers `attn_implementation` for a requested backend (None: `flash`)."""
    requested = requested or "flash"
    if requested not in BACKENDS:
        raise BitfrontError(f"unknown attention backend {requested!r}; choose from {BACKENDS}")
    if requested != "flash":
        return requested
    if torch.device(device).type == "cuda":
        return "flash_attention_2" if flash_attn_installed() else SDPA_FLASH
    return "sdpa"
