r"""Bit-plan export formats for deployment pipelines.

- `json`: the BitPlan (schema-versioned) with its metrics and provenance;
- `gptqmodel`: a GPTQModel `QuantizeConfig` whose `dynamic` map (regex -> overrides, first
  match wins, `-:` skips quantization) reproduces the plan exactly: the most common bitwidth
  is the base, every other bitwidth gets one anchored rule listing its modules;
- `llama-cpp`: a `llama-quantize --tensor-type-file`: one `PATTERN=TYPE` entry per layer, where
  PATTERN is an anchored regex of the layer's GGUF tensor (`^blk\.3\.ffn_down\.weight$`, names
  from the `gguf` package's own tensor-name map of the architecture: llama-quantize takes the
  first pattern that `regex_search`es a tensor name, so bare names would also hit e.g.
  `attn_q_norm`) and TYPE the ggml type of the bitwidth (`GGML_TYPES`). Each entry is also a
  valid `--tensor-type` value. llama.cpp re-quantizes from its own 16-bit GGUF with these types:
  the plan's bit allocation carries over, not its GPTQ weights.
"""

from __future__ import annotations

import re
from collections import Counter

from bitfront.errors import BitfrontError
from bitfront.space.plan import SCHEMA, BitPlan

# Bitwidth -> ggml type (ggml's spelling; llama-quantize reads it case-insensitively): the
# k-quant of the same bitwidth, which like our candidates has small groups with their own scale
# (q2_K and q4_K also a min, i.e. asymmetric: 16 and 32 weights per sub-block); 8 bits has no
# k-quant for weights, q8_0 (blocks of 32, one scale) is llama.cpp's 8-bit format; 16 stays
# 16-bit.
GGML_TYPES = {2: "q2_K", 3: "q3_K", 4: "q4_K", 8: "q8_0", 16: "f16"}


def export_json(plan: BitPlan, metrics: dict, provenance: dict) -> dict:
    return {**plan.to_dict(), "metrics": metrics, "provenance": provenance,
            "export_schema": SCHEMA}


def module_regex(names: list[str]) -> str:
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
        dynamic["-:" + module_regex(skipped)] = {}
    for bits in sorted({s.bits for s in quantized} - {base}):
        names = [name for name, s in specs.items() if s.bits == bits]
        dynamic["+:" + module_regex(names)] = {"bits": bits, "group_size": quantized[0].group_size}
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


def gguf_tensor_names(modules: list[str], arch: str = "qwen3") -> dict[str, str]:
    """The GGUF tensor of each Hugging Face module (`blk.N.attn_q.weight`, ...) in
    architecture `arch` (a GGUF architecture name such as `llama` or `qwen3`), from the `gguf`
    package's tensor-name map."""
    import gguf

    archs = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        raise BitfrontError(f"llama.cpp has no {arch!r} architecture; bitfront exports GGUF "
                            "tensor types for llama.cpp architectures such as llama and qwen3")
    blocks = [int(m.group(1)) for n in modules if (m := re.search(r"layers\.(\d+)\.", n))]
    names = gguf.get_tensor_name_map(archs[arch], max(blocks, default=-1) + 1)
    out = {}
    for module in modules:
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is None:
            raise BitfrontError(f"no GGUF tensor of architecture {arch!r} for {module!r}")
        out[module] = name
    return out


def llama_cpp_args(plan: BitPlan, arch: str = "qwen3") -> list[str]:
    """`PATTERN=TYPE` entries for llama-quantize, one per layer: joined by whitespace, a
    `--tensor-type-file`; each one, a `--tensor-type` value."""
    names = gguf_tensor_names(list(plan.specs), arch)
    return [f"^{re.escape(names[module])}$={GGML_TYPES[spec.bits]}"
            for module, spec in plan.specs.items()]
