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
from safetensors.torch import save_file

from bitfront.errors import PlanError
from bitfront.export.formats import gptqmodel_config
from bitfront.models.base import CodeLM
from bitfront.models.coda import coda_config_dict
from bitfront.quant.candidates import Candidates
from bitfront.space.plan import BitPlan


def write_gptq_checkpoint(lm: CodeLM, plan: BitPlan, candidates: Candidates, directory: Path,
                          *, dtype: torch.dtype = torch.float16) -> Path:
    if any(candidates.space[n].embedding and s.quantized for n, s in plan.specs.items()):
        raise PlanError("GPTQ checkpoints cannot hold quantized embeddings; search without "
                        "--include-embeddings for a deployable plan")
    directory.mkdir(parents=True, exist_ok=True)
    quant_config = {**gptqmodel_config(plan, act_order=candidates.settings.act_order,
                                       damp=candidates.settings.percdamp),
                    "checkpoint_format": "gptq_v2"}
    tensors: dict[str, torch.Tensor] = {}
    quantized = {name for name, spec in plan.specs.items() if spec.quantized}
    for name, tensor in lm.module.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module in quantized and name.endswith(".weight"):
            for field, value in candidates.packed(module, plan.specs[module].bits
                                                  ).tensors().items():
                tensors[f"{module}.{field}"] = value.contiguous()
        else:
            tensors[name] = tensor.detach().to("cpu", dtype).contiguous()
    # Tied weights are stored once, as transformers does.
    if getattr(lm.module.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    if lm.family == "diffusion":
        config = coda_config_dict(lm.module.config, lm.tokens)
    else:
        config = json.loads(json.dumps(lm.module.config.to_dict(), default=str))
    config["quantization_config"] = quant_config
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "quantize_config.json").write_text(json.dumps(quant_config, indent=2) + "\n")
    (directory / "bitplan.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    lm.tokenizer.save_pretrained(directory)
    return directory
