"""Writing a plan in any export format: the one dispatch the API, the command line and the
study runner share. Text formats need only the plan; checkpoints need the model and the
candidates the plan was made from; a GGUF needs the model (llama.cpp quantizes it)."""

from __future__ import annotations

import json
from pathlib import Path

from bitfront.errors import BitfrontError
from bitfront.exports.formats import export_json, gptqmodel_config, llama_cpp_args
from bitfront.paths import write_atomic
from bitfront.space.plan import BitPlan

FORMATS = ("json", "gptqmodel", "llama-cpp", "compressed-tensors", "gguf")
CHECKPOINTS = ("compressed-tensors",)
MODEL_FORMATS = (*CHECKPOINTS, "gguf")  # written from the model's weights


def plan_text(plan: BitPlan, format: str, *, metrics: dict | None = None,
              provenance: dict | None = None, arch: str = "qwen3") -> str:
    """`plan` in a text format (json, gptqmodel, llama-cpp)."""
    if format == "json":
        return json.dumps(export_json(plan, metrics or {}, provenance or {}), indent=2)
    if format == "gptqmodel":
        quantizer = plan.meta.get("quantizer") or {}
        return json.dumps(gptqmodel_config(plan, act_order=quantizer.get("act_order", False),
                                           damp=quantizer.get("percdamp", 0.01)), indent=2)
    if format == "llama-cpp":
        return "\n".join(llama_cpp_args(plan, arch))
    raise BitfrontError(f"unknown export format {format!r}; choose from {FORMATS}")


def check_target(path: Path) -> None:
    """An export goes into an existing directory (a typo in --out is not silently made)."""
    if not path.parent.is_dir():
        raise BitfrontError(f"cannot write {path}: {path.parent} is not an existing "
                            "directory; create it or choose another --out")


def write_export(plan: BitPlan, format: str, path: Path, *, lm=None, candidates=None,
                 metrics: dict | None = None, provenance: dict | None = None,
                 mbpp_source=None) -> Path:
    """Write `plan` to `path`: a file for text formats, a model directory for checkpoints
    (those need `lm` and the plan's `candidates`), a GGUF file (needs `lm`; its record, what
    llama.cpp wrote, beside it as PATH.json)."""
    path = Path(path)
    check_target(path)
    if format in CHECKPOINTS:
        if lm is None or candidates is None:
            raise BitfrontError(f"a {format} checkpoint needs the model and its candidates")
        from bitfront.exports.compressed_tensors import write_compressed_tensors

        return write_compressed_tensors(lm, plan, candidates, path)
    if format == "gguf":
        if lm is None:
            raise BitfrontError("a gguf export needs the model")
        from bitfront.exports.gguf import export_gguf

        return export_gguf(lm, plan, path, mbpp_source=mbpp_source).path
    arch = getattr(getattr(lm, "module", None), "config", None)
    text = plan_text(plan, format, metrics=metrics, provenance=provenance,
                     arch=getattr(arch, "model_type", "qwen3"))
    write_atomic(path, text + "\n")  # whole or not at all; a full disk is one line
    return path
