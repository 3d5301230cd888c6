"""Bit-plan export formats for deployment pipelines.

- `json`: the BitPlan (schema-versioned) with its metrics and provenance;
- `gptqmodel`: a GPTQModel `QuantizeConfig` whose `dynamic` map (regex -> overrides, first
  match wins, `-:` skips quantization) reproduces the plan exactly: the most common bitwidth
  is the base, every other bitwidth gets one anchored rule listing its modules;
- `llama-cpp`: `--tensor-type` arguments for `llama-quantize` (HF module names -> GGUF tensor
  names, bits -> GGUF types).
"""

from __future__ import annotations

import re
from collections import Counter

from bitfront.errors import BitfrontError
from bitfront.space.plan import SCHEMA, BitPlan

FORMATS = ("json", "gptqmodel", "llama-cpp")
GGUF_TYPES = {2: "q2_k", 3: "q3_k", 4: "q4_k", 8: "q8_0", 16: "f16"}
_GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def export_json(plan: BitPlan, metrics: dict, provenance: dict) -> dict:
    return {**plan.to_dict(), "metrics": metrics, "provenance": provenance,
            "export_schema": SCHEMA}


def _rule(names: list[str]) -> str:
    """One anchored regex matching exactly `names` (grouped by everything but the block
    index, so that per-type patterns stay short)."""
    by_shape: dict[str, list[str]] = {}
    for name in names:
        match = re.fullmatch(r"(.*\.layers\.)(\d+)(\..*)", name)
        if match:
            key = re.escape(match.group(1)) + "{}" + re.escape(match.group(3))
            by_shape.setdefault(key, []).append(match.group(2))
        else:
            by_shape.setdefault(re.escape(name), [])
    parts = []
    for key, blocks in by_shape.items():
        if blocks:
            ordered = sorted(set(blocks), key=int)
            parts.append(key.replace("{}", f"({'|'.join(ordered)})"))
        else:
            parts.append(key)
    return f"^(?:{'|'.join(parts)})$"


def gptqmodel_config(plan: BitPlan, *, act_order: bool = False, damp: float = 0.01) -> dict:
    """A GPTQModel QuantizeConfig (as JSON) reproducing `plan` through `dynamic`."""
    specs = plan.specs
    quantized = [s for s in specs.values() if s.quantized]
    if not quantized:
        raise BitfrontError("the plan keeps every layer in 16-bit: nothing to quantize")
    if len({(s.group_size, s.sym) for s in quantized}) > 1:
        raise BitfrontError("GPTQModel export needs one group size and one symmetry for all "
                            "quantized layers")
    base = Counter(s.bits for s in quantized).most_common(1)[0][0]
    dynamic: dict[str, dict] = {}
    skipped = [name for name, s in specs.items() if not s.quantized]
    if skipped:
        dynamic["-:" + _rule(skipped)] = {}
    for bits in sorted({s.bits for s in quantized} - {base}):
        names = [name for name, s in specs.items() if s.bits == bits]
        dynamic["+:" + _rule(names)] = {"bits": bits, "group_size": quantized[0].group_size}
    return {"bits": base, "group_size": quantized[0].group_size, "sym": quantized[0].sym,
            "desc_act": act_order, "damp_percent": damp, "lm_head": "lm_head" in specs
            and specs["lm_head"].quantized, "quant_method": "gptq", "dynamic": dynamic}


def resolve_dynamic(config: dict, module: str) -> tuple[int, int] | None:
    """(bits, group size) GPTQModel gives `module` under `config`, None if it is skipped:
    the rules are tried in order, `-:` skips, a positive match overrides the base."""
    for pattern, overrides in config["dynamic"].items():
        if pattern.startswith("-:"):
            if re.match(pattern[2:], module):
                return None
        elif re.match(pattern.removeprefix("+:"), module):
            return (overrides.get("bits", config["bits"]),
                    overrides.get("group_size", config["group_size"]))
    return config["bits"], config["group_size"]


def gguf_tensor_name(module: str) -> str:
    """The GGUF tensor (without `.weight`) of a Hugging Face module name."""
    if module == "lm_head":
        return "output"
    if module.endswith("embed_tokens"):
        return "token_embd"
    match = re.fullmatch(r".*layers\.(\d+)\.(.+)", module)
    if not match or match.group(2) not in _GGUF_NAMES:
        raise BitfrontError(f"no GGUF tensor name known for {module!r}")
    return f"blk.{match.group(1)}.{_GGUF_NAMES[match.group(2)]}"


def llama_cpp_args(plan: BitPlan) -> list[str]:
    """`--tensor-type NAME=TYPE` arguments for llama-quantize, one per layer."""
    args = []
    for name, spec in plan.specs.items():
        args += ["--tensor-type", f"{gguf_tensor_name(name)}={GGUF_TYPES[spec.bits]}"]
    return args
