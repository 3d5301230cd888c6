"""Writing a quantized checkpoint of a plan in GPTQ layout (GPTQModel's `gptq_v2` format).

Each quantized linear `name` is stored as `name.qweight`, `name.qzeros`, `name.scales` and
`name.g_idx` (kernels/quant.py's packing, which is GPTQ's; zero points without the v1 "-1"
offset, hence `gptq_v2`), every other tensor in float16, with `config.json` carrying a
`quantization_config` whose `dynamic` map reproduces the plan (export/formats.py), a matching
`quantize_config.json`, and the tokenizer.

GPTQModel itself is not used to write it: its current release needs torch >= 2.14.1, which
on this CPU-only kind of machine resolves to the CUDA build (see the README).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bitfront.exports.checkpoint import checkpoint_tensors, write_checkpoint
from bitfront.exports.formats import gptqmodel_config
from bitfront.models.base import CodeLM
from bitfront.paths import atomic_directory
from bitfront.quant.candidates import Candidates
from bitfront.space.plan import BitPlan


def write_gptq_checkpoint(lm: CodeLM, plan: BitPlan, candidates: Candidates, directory: Path,
                          *, dtype: torch.dtype = torch.float16) -> Path:
    """Write `plan` (made from `candidates` of `lm`) as a GPTQ-v2 checkpoint in `directory`;
    tensors outside the quantized layers in `dtype`. Returns `directory`."""
    quant_config = {**gptqmodel_config(plan, act_order=candidates.settings.act_order,
                                       damp=candidates.settings.percdamp),
                    "checkpoint_format": "gptq_v2"}
    tensors = checkpoint_tensors(
        lm, plan, lambda name: candidates.packed(name, plan.specs[name].bits).tensors(), dtype)
    with atomic_directory(directory) as partial:  # complete, or nothing a loader accepts
        write_checkpoint(lm, plan, tensors, partial, dtype, quant_config)
        (partial / "quantize_config.json").write_text(json.dumps(quant_config, indent=2)
                                                      + "\n")
    return directory
