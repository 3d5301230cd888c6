"""What the checkpoint writers share: the model's tensors with its quantized layers replaced by
their stored form, and the files around them (config in the checkpoint's dtype, generation
config, tokenizer, the plan)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from bitfront.errors import PlanError
from bitfront.models.base import CodeLM
from bitfront.models.coda import coda_config_dict
from bitfront.space.plan import BitPlan


def checkpoint_tensors(lm: CodeLM, plan: BitPlan,
                       stored: Callable[[str], dict[str, torch.Tensor]], dtype: torch.dtype
                       ) -> dict[str, torch.Tensor]:
    """The state dict of `lm` (weights as loaded) in `dtype`, where the weight of each layer
    the plan quantizes is replaced by `stored(layer)` (tensors named relative to the layer);
    a head tied to the embeddings is stored once, as transformers does."""
    modules = dict(lm.module.named_modules())
    quantized = {name for name, spec in plan.specs.items() if spec.quantized}
    if any(isinstance(modules[name], nn.Embedding) for name in quantized):
        raise PlanError("checkpoints cannot hold quantized embeddings; search without "
                        "--include-embeddings for a deployable plan")
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in lm.module.state_dict().items():
        module, _, field = name.rpartition(".")
        if module in quantized and field == "weight":
            for key, value in stored(module).items():
                tensors[f"{module}.{key}"] = value.contiguous()
        else:
            tensors[name] = tensor.detach().to("cpu", dtype).contiguous()
    if getattr(lm.module.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    return tensors


def write_checkpoint(lm: CodeLM, plan: BitPlan, tensors: dict[str, torch.Tensor],
                     directory: Path, dtype: torch.dtype, quantization_config: dict | None = None
                     ) -> None:
    """Write `tensors` as `model.safetensors` with the model's config (CoDA's stays CoDA's) in
    `dtype` plus `quantization_config`, the generation config, the tokenizer and the plan."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    if lm.family == "diffusion":
        config = {**coda_config_dict(lm.module.config, lm.tokens),
                  "torch_dtype": str(dtype).removeprefix("torch.")}
    else:
        hf_config = copy.deepcopy(lm.module.config)
        hf_config.dtype = dtype
        config = json.loads(hf_config.to_json_string())
        lm.module.generation_config.save_pretrained(directory)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "bitplan.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    lm.tokenizer.save_pretrained(directory)
