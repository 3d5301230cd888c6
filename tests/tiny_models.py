"""Tiny random checkpoints in the real on-disk formats of the subject models.

Each uses the real `config.json` of its subject (from tests/fixtures/hf, copied from
shared/data/hf) shrunk to a few layers and a small width, the real CoDA/Qwen3 tokenizer, and
random weights saved as safetensors (or GGUF), so they load through the same code paths as the
real checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from bitfront.models.coda import CoDANetwork, backbone_config

HF = Path(__file__).parent / "fixtures" / "hf"
CODA_REAL = HF / "coda-v0-instruct"
QWEN3_REAL = HF / "qwen3-1.7b"
TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json"]
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}


def real_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def copy_tokenizer(directory: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy(CODA_REAL / name, directory / name)


def tiny_coda(directory: Path, *, seed: int = 0, shards: int = 1, **overrides) -> Path:
    """CoDA's real config.json (shrunk) + random weights in CoDA's safetensors layout."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {**real_config(CODA_REAL), **SMALL, **overrides}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(CODA_REAL / "generation_config.json", directory / "generation_config.json")
    copy_tokenizer(directory)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = CoDANetwork(backbone_config(config))
    state = {k: v.contiguous() for k, v in network.state_dict().items()}
    if shards == 1:
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
        return directory
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, directory / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def tiny_qwen3(directory: Path, *, seed: int = 0, tokenizer=None, **overrides) -> Path:
    """Qwen3-1.7B's real config (shrunk, tied embeddings) saved by transformers, with the real
    tokenizer unless another is given."""
    config = {**real_config(QWEN3_REAL), **SMALL, **overrides}
    if tokenizer is not None:
        config["vocab_size"] = len(tokenizer)
    for key in ("architectures", "model_type", "torch_dtype"):
        config.pop(key)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(Qwen3Config(**config))
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(directory)
    if tokenizer is None:
        copy_tokenizer(directory)
    else:
        tokenizer.save_pretrained(directory)
    return directory


def small_tokenizer():
    """A 300-token byte-level BPE with the pocket special tokens (fast to convert to GGUF)."""
    from bitfront.pocket.tokenizer import train_tokenizer

    text = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n"] * 50
    return train_tokenizer(text, vocab_size=300)


def tiny_llama(directory: Path, *, seed: int = 0) -> Path:
    """A Llama-family model with the same tokenizer."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=151936, **SMALL,
                                             tie_word_embeddings=False))
    model.save_pretrained(directory)
    copy_tokenizer(directory)
    return directory


def tiny_qwen3_gguf(hf_dir: Path, path: Path) -> Path:
    """Write the model in `hf_dir` (a tiny Qwen3) as an F32 GGUF file, as llama.cpp's
    converter would: architecture metadata, GGUF tensor names, and the BPE tokenizer."""
    import gguf
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    cfg = model.config
    if cfg.head_dim != 128:
        # transformers reads no head_dim from qwen3 GGUF metadata and falls back to 128.
        raise ValueError("transformers' GGUF loader needs head_dim 128 for qwen3")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_name("tiny-qwen3")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # Like llama.cpp, pad the token list to the embedding's row count.
    tokens = [f"[PAD{i}]" for i in range(cfg.vocab_size)]
    types = [gguf.TokenType.UNUSED] * cfg.vocab_size
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    for text, idx in tok.get_vocab().items():
        tokens[idx] = text
        types[idx] = gguf.TokenType.CONTROL if idx in special else gguf.TokenType.NORMAL
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_bos_token_id(tok.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        writer.add_tensor(gguf_name, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
