"""`--format gguf`: a mixed-precision GGUF made by llama.cpp's own quantizer.

bitfront writes the model's 16-bit source GGUF (llama.cpp's tensor names, architecture and
tokenizer metadata; 2-D weights in f16, norms in f32) with the `gguf` package, then has
llama.cpp quantize it with one type per plan layer (`GGML_TYPES`, `pure`) and an importance
matrix from the plan's calibration set (each input column's mean square activation: the
diagonal of the input Hessians GPTQ uses, halved). llama.cpp re-quantizes with its own
k-quants: the plan's bit allocation carries over, not its GPTQ weights. k-quants need rows
whose length is a multiple of 256: llama.cpp gives other rows a 32-block type (q2_K/q3_K ->
q4_0, q4_K -> q5_0, else f16); the export predicts and records which tensors got which type.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf
import numpy as np
import torch

from bitfront.errors import BitfrontError, PlanError
from bitfront.exports.formats import GGML_TYPES, gguf_tensor_names
from bitfront.kernels.hessian import capture_hessians
from bitfront.models.base import CodeLM
from bitfront.paths import atomic_files
from bitfront.quant.apply import plan_calibration, plan_space
from bitfront.space.plan import BitPlan
from bitfront.units import format_bytes

SCHEMA = 1
# Hugging Face model type -> (llama.cpp architecture, whether q/k rows are permuted: llama.cpp's
# llama applies rotary embeddings to adjacent pairs, transformers' to the two halves of a head).
ARCHS = {"qwen3": ("qwen3", False), "llama": ("llama", True)}
# llama.cpp's fallback for a row length its block does not divide (llama-quant.cpp); a
# fallback that does not divide it either becomes f16.
FALLBACKS = {"q2_K": "q4_0", "q3_K": "q4_0", "q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0"}
# The pre-tokenizer regex of a Split pre-tokenizer -> llama.cpp's name for it.
PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


@dataclass(frozen=True)
class GgufExport:
    """A written GGUF: its path, the JSON record beside it, and what the record says."""

    path: Path
    record: Path
    types: dict[str, str]  # tensor -> ggml type written
    fallbacks: dict[str, dict]  # tensor -> {"plan", "written", "row"}
    predicted_bytes: int
    bytes: int


def gguf_arch(lm: CodeLM) -> tuple[str, bool]:
    """The llama.cpp architecture of `lm` and whether its q/k rows need permuting, or a
    one-line refusal (diffusion models, other architectures)."""
    if lm.family == "diffusion":
        raise BitfrontError(f"{lm.name} is a diffusion model and llama.cpp has no diffusion "
                            "architecture: export it as compressed-tensors or json instead")
    config = lm.module.config
    if config.model_type not in ARCHS:
        raise BitfrontError(f"GGUF export supports {sorted(ARCHS)} models, not "
                            f"{config.model_type!r}")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or config.hidden_act != "silu":
        raise BitfrontError("GGUF export supports plain rotary embeddings and SiLU MLPs, not "
                            f"{rope.get('rope_type')!r} / {config.hidden_act!r}")
    return ARCHS[config.model_type]


def source_tensors(lm: CodeLM, arch: str, permute: bool) -> dict[str, torch.Tensor]:
    """The model's tensors under their GGUF names, as llama.cpp's converter lays them out (a
    tied head is stored once, as the token embedding)."""
    config = lm.module.config
    state = lm.module.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    modules = {name.rpartition(".")[0]: name for name in state}
    if other := [name for name in state if not name.endswith(".weight")]:
        raise BitfrontError(f"GGUF export does not handle {other[0]!r} (only weights)")
    names = gguf_tensor_names(list(modules), arch)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    out = {}
    for module, gguf_name in names.items():
        tensor = state[modules[module]].detach()
        kind = module.rpartition(".")[2]
        if permute and kind in heads:
            n = heads[kind]
            tensor = (tensor.reshape(n, 2, tensor.shape[0] // n // 2, *tensor.shape[1:])
                      .transpose(1, 2).reshape(tensor.shape))
        out[gguf_name] = tensor
    return out


def stored_type(tensor: torch.Tensor) -> str:
    """The source GGUF's type of a tensor: f16 for matrices, f32 for vectors (norms)."""
    return "f16" if tensor.dim() > 1 else "f32"


def plan_tensor_types(lm: CodeLM, plan: BitPlan, arch: str) -> dict[str, str]:
    """GGUF tensor -> the ggml type of its plan layer (a tied head names the embedding)."""
    plan.validate(plan_space(lm, plan), lm.fingerprint())
    names = layer_tensors(lm, list(plan.specs), arch)
    types: dict[str, str] = {}
    for module, spec in plan.specs.items():
        kind = GGML_TYPES[spec.bits]
        if types.setdefault(names[module], kind) != kind:
            raise PlanError(f"{names[module]} holds the tied head and the embeddings: give "
                            "both the same bits for a GGUF export")
    return types


def layer_tensors(lm: CodeLM, modules: list[str], arch: str) -> dict[str, str]:
    """The GGUF tensor of each module (a head tied to the embeddings: the token embedding)."""
    names = gguf_tensor_names(modules, arch)
    if lm.module.config.tie_word_embeddings and "lm_head" in names:
        names["lm_head"] = "token_embd.weight"
    return names


def written_type(kind: str, row: int) -> str:
    """The type llama.cpp writes for `kind` in rows of length `row` (its fallback rules)."""
    if row % _block(kind) == 0:
        return kind
    kind = FALLBACKS.get(kind, kind)
    return kind if row % _block(kind) == 0 else "f16"


def predicted_types(lm: CodeLM, plan: BitPlan) -> dict[str, str]:
    """Tensor -> the type the plan's GGUF will hold (plan types after fallbacks; other
    tensors as stored in the source)."""
    arch, permute = gguf_arch(lm)
    tensors = source_tensors(lm, arch, permute)
    wanted = plan_tensor_types(lm, plan, arch)
    return {name: written_type(wanted[name], t.shape[-1]) if name in wanted else stored_type(t)
            for name, t in tensors.items()}


def gguf_size(lm: CodeLM, plan: BitPlan) -> int:
    """Predicted bytes of the plan's GGUF file: bitfront's header (architecture, tokenizer,
    tensor infos) and every tensor at its type after llama.cpp's fallbacks, each aligned."""
    arch, permute = gguf_arch(lm)
    tensors = source_tensors(lm, arch, permute)
    types = predicted_types(lm, plan)
    with tempfile.TemporaryDirectory() as tmp:
        writer = _writer(lm, arch, Path(tmp) / "header.gguf")
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)  # llama.cpp adds it
        data = 0
        for name, tensor in tensors.items():
            kind = gguf.GGMLQuantizationType[types[name].upper()]
            block, size = gguf.GGML_QUANT_SIZES[kind]
            nbytes = tensor.numel() // block * size
            writer.add_tensor_info(name, tuple(tensor.shape), np.float16, nbytes, raw_dtype=kind)
            data += gguf.GGUFWriter.ggml_pad(nbytes, writer.data_alignment)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        header = (Path(tmp) / "header.gguf").stat().st_size
    return gguf.GGUFWriter.ggml_pad(header, writer.data_alignment) + data


def write_source(lm: CodeLM, path: Path) -> None:
    """The 16-bit GGUF of `lm` that llama.cpp quantizes."""
    arch, permute = gguf_arch(lm)
    writer = _writer(lm, arch, path)
    for name, tensor in source_tensors(lm, arch, permute).items():
        dtype = torch.float16 if stored_type(tensor) == "f16" else torch.float32
        writer.add_tensor(name, tensor.to("cpu", dtype).contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    try:
        writer.write_tensors_to_file()
    except OSError as exc:
        if exc.errno is not None:
            raise
        # numpy's tofile reports a short write without its cause: on a file, a full disk.
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from exc
    finally:
        writer.close()


def activation_importance(lm: CodeLM, plan: BitPlan, arch: str, *, mbpp_source=None
                          ) -> dict[str, np.ndarray]:
    """GGUF tensor -> mean square of each input column over the plan's calibration set, for
    the quantized linears: half the diagonal of their input Hessians."""
    modules = dict(lm.module.named_modules())
    linears = {name: modules[name] for name, spec in plan.specs.items()
               if spec.quantized and isinstance(modules[name], torch.nn.Linear)}
    if not linears:
        return {}
    calibration = plan_calibration(lm, plan, mbpp_source=mbpp_source)
    forward = partial(lm.calibration_forward, head=any(m is lm.head for m in linears.values()))
    hessians = capture_hessians(forward, linears, calibration.batches, diagonal=True)
    names = layer_tensors(lm, list(linears), arch)
    return {names[name]: (hessians[name] / 2).float().cpu().numpy() for name in linears}


def export_gguf(lm: CodeLM, plan: BitPlan, path: str | Path, *, importance: bool = True,
                mbpp_source=None, threads: int | None = None) -> GgufExport:
    """Write `plan` as a GGUF at `path` (and its record, `PATH.json`): the 16-bit source,
    quantized by llama.cpp with the plan's types and, when `importance`, the activation
    importance matrix. Atomic: both files appear only once complete; a failure (a full disk)
    is one line and leaves neither."""
    from bitfront.runtimes.llama_cpp import quantize_gguf, require_llama_cpp

    llama_cpp = require_llama_cpp()
    path = Path(path)
    arch, permute = gguf_arch(lm)
    rows = {name: t.shape[-1] for name, t in source_tensors(lm, arch, permute).items()}
    wanted = plan_tensor_types(lm, plan, arch)
    predicted = predicted_types(lm, plan)
    matrix = activation_importance(lm, plan, arch, mbpp_source=mbpp_source) if importance else {}
    record_path = path.with_name(path.name + ".json")
    with atomic_files(path, record_path) as scratch:
        source = scratch / "source-f16.gguf"
        write_source(lm, source)
        types = quantize_gguf(source, scratch / path.name, wanted, imatrix=matrix,
                              threads=threads)
        source.unlink()
        if types != predicted:  # bitfront's model of llama.cpp's rules is wrong: a bug
            differ = next(n for n in types if types[n] != predicted.get(n))
            raise RuntimeError(f"llama.cpp wrote {differ} as {types[differ]}, bitfront "
                               f"predicted {predicted.get(differ)}")
        fallbacks = {name: {"plan": kind, "written": types[name], "row": rows[name]}
                     for name, kind in wanted.items() if types[name] != kind}
        size = (scratch / path.name).stat().st_size
        predicted_bytes = gguf_size(lm, plan)
        record = {"schema": SCHEMA, "file": path.name, "bytes": size,
                  "predicted_bytes": predicted_bytes, "architecture": arch,
                  "model": plan.model, "types": types, "plan_types": wanted,
                  "fallbacks": fallbacks,
                  "importance": ({"tensors": len(matrix), "calibration": plan.meta.get(
                      "calibration", {})} if matrix else None),
                  "quantizer": f"llama-cpp-python {llama_cpp.__version__}"}
        (scratch / record_path.name).write_text(json.dumps(record, indent=1) + "\n")
    return GgufExport(path, record_path, types, fallbacks, predicted_bytes, size)


def summary(path: Path) -> list[str]:
    """What a person reads after exporting `path`: the plan tensors' types as written, each
    fallback llama.cpp made, and the file's size beside the prediction (from its record)."""
    record_path = path.with_name(path.name + ".json")
    record = json.loads(record_path.read_text())
    counts = Counter(record["types"][name] for name in record["plan_types"])
    size, predicted = record["bytes"], record["predicted_bytes"]
    return ["plan tensors by type written: " + ", ".join(f"{kind} {n}" for kind, n in
                                                        sorted(counts.items())),
            *(f"fallback {line}" for line in fallback_lines(record["fallbacks"])),
            f"{format_bytes(size)} ({size} bytes; predicted {predicted}, "
            f"{(predicted - size) / size:+.2%}); record {record_path}"]


def fallback_lines(fallbacks: dict[str, dict]) -> list[str]:
    """One line per type change llama.cpp made: plan type -> written type, the tensor kinds
    (block numbers folded) and their row lengths."""
    groups: dict[tuple[str, str], tuple[list, set, set]] = {}
    for name, f in fallbacks.items():
        names, kinds, rows = groups.setdefault((f["plan"], f["written"]), ([], set(), set()))
        names.append(name)
        kinds.add(re.sub(r"^blk\.\d+\.", "blk.N.", name))
        rows.add(f["row"])
    return [f"{plan} -> {written}: {len(names)} tensors ({', '.join(sorted(kinds))}; rows of "
            f"{'/'.join(map(str, sorted(rows)))}, not a multiple of {_block(plan)})"
            for (plan, written), (names, kinds, rows) in sorted(groups.items())]


def _block(kind: str) -> int:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind.upper()]][0]


def _writer(lm: CodeLM, arch: str, path: Path):
    """A GGUFWriter for `path` holding the architecture and tokenizer metadata of `lm`."""
    config = lm.module.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(Path(lm.name).stem)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if lm.gguf is not None:
        _copy_tokenizer(writer, lm.gguf)
    else:
        _add_tokenizer(writer, lm.tokenizer, config.vocab_size)
    return writer


def _copy_tokenizer(writer, source: Path) -> None:
    """The tokenizer metadata of the GGUF the model came from, as it was."""
    for key, field in gguf.GGUFReader(str(source)).fields.items():
        if key.startswith("tokenizer."):
            writer.add_key_value(key, field.contents(), field.types[0],
                                 sub_type=field.types[-1] if len(field.types) > 1 else None)


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's `gpt2` model: tokens in id order (padded to
    the embedding's rows), their types, the merges, special ids and the chat template."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise BitfrontError("GGUF export writes byte-level BPE tokenizers only, not "
                            f"{backend['model']['type']}")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(backend["pre_tokenizer"]))
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    added = tokenizer.added_tokens_decoder
    for text, idx in tokenizer.get_vocab().items():
        tokens[idx] = text
        types[idx] = (gguf.TokenType.NORMAL if idx not in added else gguf.TokenType.CONTROL
                      if added[idx].special else gguf.TokenType.USER_DEFINED)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                             for m in backend["model"]["merges"]])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    bos = tokenizer.bos_token_id
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(eos if pad is None else pad)
    writer.add_bos_token_id(bos if bos is not None else eos if pad is None else pad)
    writer.add_add_bos_token(bos is not None and tokenizer("x")["input_ids"][:1] == [bos])
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer's pre-tokenization: GPT-2's byte-level regex, or a
    known Split regex followed by byte-level mapping."""
    if pre and pre["type"] == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = (pre or {}).get("pretokenizers", [])
    for part in parts:
        if part["type"] == "Split" and part["pattern"].get("Regex") in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[part["pattern"]["Regex"]]
    raise BitfrontError("GGUF export knows GPT-2's and Qwen2's pre-tokenization only; this "
                        "tokenizer's is neither")
