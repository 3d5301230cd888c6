"""Turning a model name into a loaded `CodeLM`.

A name is one of the known subjects (`qwen3-1.7b`, `coda-1.7b`), a name another package
provides (models/registry.py: the pocket pair, trained on first use), a local
directory in Hugging Face layout (CoDA's `config.json` selects the diffusion loader, anything
else is loaded as a causal LM), a `.gguf` file, or a hub id `owner/name`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError

from bitfront.errors import BitfrontError, CheckpointError, UnknownModelError
from bitfront.kernels.attention import choose_attention
from bitfront.models.base import CodeLM
from bitfront.models.causal import CausalLM
from bitfront.models.coda import is_coda_config, load_coda_network, read_config
from bitfront.models.diffusion import DiffusionLM
from bitfront.models.registry import registered

KNOWN_MODELS: dict[str, str] = {
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "coda-1.7b": "Salesforce/CoDA-v0-Instruct",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except Exception as exc:  # noqa: BLE001 - offline, missing repo, auth: one message
        raise UnknownModelError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}); "
            "if this machine is offline, download it elsewhere and pass its local directory"
        ) from exc


def resolve_model_path(name: str, *, show_progress: bool = True) -> Path:
    """The local directory (or .gguf file) holding model `name`, fetching it if needed."""
    provided = registered()
    if name in provided:
        return provided[name](show_progress)
    if name in KNOWN_MODELS:
        return _download(KNOWN_MODELS[name])
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json: not a model directory")
        if path.is_file() and path.suffix != ".gguf":
            raise CheckpointError(f"{path} is a file but not a .gguf model")
        return path
    if _HUB_ID.match(name):
        return _download(name)
    known = ", ".join([*KNOWN_MODELS, *provided])
    raise UnknownModelError(f"unknown model {name!r}: use one of {known}, a local directory, "
                            "a .gguf file or a hub id like owner/name")


def load_local(path: Path, *, name: str | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, attn: str | None = None) -> CodeLM:
    """Load a model directory or .gguf file through the loader its format calls for."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    attn = choose_attention(attn, device)
    name = name or path.name
    if path.suffix == ".gguf":
        source, extra = path.parent, {"gguf_file": path.name}
    else:
        source, extra = path, {}
        if is_coda_config(read_config(path)):
            network, tokens = load_coda_network(path, dtype=dtype, device=device, attn=attn)
            tokenizer = _tokenizer(path)
            return DiffusionLM(name, network, tokenizer, tokens)
    try:
        tokenizer = (AutoTokenizer.from_pretrained(source, **extra) if extra
                     else _tokenizer(source))
        module, info = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=attn, output_loading_info=True, **extra)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load {path} as a causal LM ({reason}); check that its "
                              "files are complete (a truncated download?)") from exc
    if bad := [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]:
        shown = ", ".join(str(k) for k in list(bad)[:5])
        raise CheckpointError(f"{path} does not match its config: {len(bad)} missing or "
                              f"mis-shaped tensors ({shown})")
    if compressor := getattr(getattr(module, "hf_quantizer", None), "compressor", None):
        # compressed-tensors decompresses on the model's first forward pass (a hook on the
        # root module, which `CausalLM` bypasses to run its head in chunks): do it now.
        compressor.decompress_model(module)
    return CausalLM(name, module.to(device), tokenizer, gguf=path if extra else None)


def _tokenizer(path: Path):
    """The tokenizer class named in tokenizer_config.json (never remote code, and without
    reading config.json, whose CoDA `auto_map` would ask for remote code)."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    cls = tokenizer_class_from_name(config.get("tokenizer_class") or "") or AutoTokenizer
    try:
        return cls.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} has no usable tokenizer files: {exc}") from exc


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def load_model(name: str, *, device: torch.device | str | None = None,
               dtype: torch.dtype | str | None = None, attn: str | None = None,
               show_progress: bool = True) -> CodeLM:
    """Load any supported model by name (see the module docstring); `dtype` may be named
    (float32/fp32, bfloat16/bf16, float16/fp16)."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise BitfrontError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    path = resolve_model_path(name, show_progress=show_progress)
    return load_local(path, name=name, device=device, dtype=dtype, attn=attn)
