"""CoDA, natively: the masked-diffusion network and its on-disk checkpoint format.

CoDA (Salesforce/CoDA-v0-Instruct) is a Qwen3 backbone with the same state-dict names
(`model.embed_tokens`, `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `q_norm`/`k_norm`,
`mlp.{gate,up,down}_proj`, the two layer norms, `model.norm`) and a separate, untied `lm_head`.
Unlike Qwen3 it attends bidirectionally with no attention mask at all (padding is attended too,
positions are 0..L-1), and its logits are shifted right by one: the output at position i-1
predicts token i. We reuse transformers' Qwen3 modules for the backbone instead of copying
them, and only switch off causality and add the shift; no `trust_remote_code` is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen3Config, Qwen3Model

from bitfront.errors import CheckpointError

CODA_MODEL_TYPE = "CoDA"
CODA_ARCHITECTURE = "CoDALanguageModel"

# CoDA config.json keys that carry over to the Qwen3 backbone unchanged.
_BACKBONE_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "attention_bias", "attention_dropout", "initializer_range",
)


@dataclass(frozen=True)
class CoDATokens:
    """The special token ids CoDA's sampler needs."""

    mask: int = 151669  # <|mask|>
    pad: int = 151643  # <|endoftext|>
    eos: int = 151645  # <|im_end|>


def is_coda_config(config: dict) -> bool:
    return (config.get("model_type") == CODA_MODEL_TYPE
            or CODA_ARCHITECTURE in (config.get("architectures") or []))


def backbone_config(config: dict) -> Qwen3Config:
    """The Qwen3 backbone configuration described by a CoDA `config.json`."""
    kwargs = {k: config[k] for k in _BACKBONE_KEYS if config.get(k) is not None}
    return Qwen3Config(**kwargs, tie_word_embeddings=False, use_cache=False,
                       pad_token_id=config.get("pad_token_id"))


def coda_config_dict(backbone: Qwen3Config, tokens: CoDATokens, **extra) -> dict:
    """A CoDA `config.json` for `backbone` (the inverse of `backbone_config`)."""
    out = {"architectures": [CODA_ARCHITECTURE], "model_type": CODA_MODEL_TYPE}
    for key in _BACKBONE_KEYS:
        if key == "rope_theta":
            out[key] = backbone.rope_parameters["rope_theta"]
        elif key == "rope_scaling":
            out[key] = None
        else:
            out[key] = getattr(backbone, key)
    out.update(mask_token_id=tokens.mask, pad_token_id=tokens.pad, eos_token_id=tokens.eos,
               tie_word_embeddings=False, torch_dtype="float32", **extra)
    return out


class CoDANetwork(nn.Module):
    """Qwen3 backbone + untied head; bidirectional; returns CoDA's shifted logits."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config)
        for layer in self.model.layers:
            layer.self_attn.is_causal = False
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Shifted logits [B, L, V]: `out[:, i]` is the prediction for token i; with a bool
        mask `positions` [B, L], only those positions' logits, [N, V] in row-major order."""
        return self.lm_head(self.hidden(input_ids, positions))

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def hidden(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The head's input, shifted like the logits ([B, L, H], or [N, H] at `positions`).

        The head is applied per position, so shifting the hidden states equals shifting the
        logits, and is cheaper; asking for a few positions skips the head everywhere else.
        """
        # A dict of masks is used as given by transformers: no mask for any layer type.
        no_mask = dict.fromkeys(self.config.layer_types)
        hidden = self.model(input_ids=input_ids, attention_mask=no_mask,
                            use_cache=False).last_hidden_state
        shifted = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        return shifted if positions is None else shifted[positions]


def read_config(directory: Path) -> dict:
    """`directory/config.json` as a dict (`CheckpointError` when missing or malformed)."""
    path = directory / "config.json"
    if not path.exists():
        raise CheckpointError(f"{directory} has no config.json")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore it from the "
                              "model's original files") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object; restore it from the model's "
                              "original files")
    return config


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise CheckpointError(f"{directory} has no model.safetensors or "
                              "model.safetensors.index.json: not a CoDA checkpoint")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            state.update(load_file(directory / shard))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {directory / shard} ({exc}): the file is "
                                  "damaged or truncated; download it again") from exc
    return state


def _decompress(directory: Path, state: dict[str, torch.Tensor], dtype: torch.dtype
                ) -> dict[str, torch.Tensor]:
    """The dense weights of a compressed-tensors checkpoint (bitfront's export), decompressed
    by the library, with scales in `dtype` as transformers loads them."""
    try:
        from compressed_tensors.entrypoints.convert import CompressedTensorsDequantizer
    except ImportError as exc:
        raise CheckpointError(f"{directory} is a compressed-tensors checkpoint: install "
                              "compressed-tensors to load it") from exc
    state = {k: v.to(dtype) if k.endswith("_scale") else v for k, v in state.items()}
    try:
        return CompressedTensorsDequantizer(directory, dtype=dtype).validate(state)
    except ValueError as exc:
        raise CheckpointError(f"{directory}: cannot decompress its weights: {exc}") from exc


def _check_keys(expected: set[str], found: set[str], directory: Path) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if not (missing or unexpected):
        return

    def show(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors: {show(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors: {show(unexpected)}")
    raise CheckpointError(f"CoDA checkpoint {directory} does not match its config: "
                          + "; ".join(parts))


def load_coda_network(directory: Path, *, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", attn: str = "sdpa"
                      ) -> tuple[CoDANetwork, CoDATokens]:
    """Build the network from `config.json` and load its safetensors, checking every key."""
    raw = read_config(directory)
    config = backbone_config(raw)
    config._attn_implementation = attn
    eos = raw.get("eos_token_id") or CoDATokens.eos
    tokens = CoDATokens(
        mask=raw.get("mask_token_id", CoDATokens.mask),
        pad=raw.get("pad_token_id", CoDATokens.pad),
        eos=eos[0] if isinstance(eos, list) else eos,  # HF configs may list several
    )
    with torch.device("meta"):
        network = CoDANetwork(config)
    state = _read_state_dict(directory)
    if raw.get("quantization_config"):
        state = _decompress(directory, state, dtype)
    expected = network.state_dict()
    _check_keys(set(expected), set(state), directory)
    for name, tensor in state.items():
        if tensor.shape != (want := expected[name].shape):
            raise CheckpointError(f"CoDA checkpoint {directory}: tensor {name} has shape "
                                  f"{tuple(tensor.shape)}, the config implies {tuple(want)}")
    network.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
    # Non-persistent buffers (rotary frequencies) are not in the file: rebuild them for real.
    network.model.rotary_emb = type(network.model.rotary_emb)(config=config)
    return network.to(device).eval(), tokens


def save_coda_network(network: CoDANetwork, tokens: CoDATokens, directory: Path, **extra) -> None:
    """Write `config.json` and `model.safetensors` in CoDA's layout."""
    directory.mkdir(parents=True, exist_ok=True)
    config = coda_config_dict(network.config, tokens, **extra)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in network.state_dict().items()}
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
