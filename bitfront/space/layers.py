"""What can be quantized: the layer space of a model and how layers are grouped.

By default every linear of every decoder block (q, k, v, o, gate, up, down) is quantizable;
`lm_head` and the token embeddings can be switched on. A grouping policy decides which layers
share one bitwidth: per linear (default), per block, or per linear type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from bitfront.config import Config, setting
from bitfront.errors import BitfrontError

GROUPINGS = ("linear", "block", "type")


@dataclass(frozen=True)
class SpaceConfig(Config):
    """Which layers are quantizable besides the decoder's linears."""

    include_head: bool = setting(False, "also quantize lm_head")
    include_embeddings: bool = setting(False, "also quantize the token embeddings (round to "
                                              "nearest)")
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class Layer:
    """One quantizable weight matrix."""

    name: str  # module name in the model
    kind: str  # q_proj, ..., down_proj, lm_head, embed_tokens
    block: int | None  # decoder block index; None for head and embeddings
    out_features: int
    in_features: int

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features

    @property
    def embedding(self) -> bool:
        """Token embeddings: quantized for memory and accuracy, but looked up, not
        multiplied, so they have no packed kernel and no per-layer latency."""
        return self.kind == "embed_tokens"


@dataclass(frozen=True)
class LayerSpace:
    """The ordered quantizable layers of one model, plus the count of all other parameters
    (which stay in 16-bit)."""

    layers: tuple[Layer, ...]
    other_params: int

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.layers)


def _layer(name: str, weight_shape) -> Layer:
    match = _BLOCK.search(name)
    out_f, in_f = weight_shape
    return Layer(name=name, kind=name.rsplit(".", 1)[-1],
                 block=int(match.group(1)) if match else None,
                 out_features=int(out_f), in_features=int(in_f))


def layer_space(lm, *, include_head: bool = False, include_embeddings: bool = False
                ) -> LayerSpace:
    """The layer space of a `CodeLM`: its quantizable linears, optionally head and
    embeddings (quantized along the hidden dimension like a linear weight)."""
    modules: dict[str, nn.Module] = dict(lm.quantizable(include_head=include_head))
    embeddings = [m.weight for m in lm.module.modules() if isinstance(m, nn.Embedding)]
    if include_head and any(modules["lm_head"].weight is w for w in embeddings):
        raise BitfrontError("lm_head shares its weight with the token embeddings (tied): "
                            "quantizing it would quantize the embeddings too; leave the head "
                            "out (the default)")
    if include_embeddings:
        for name, mod in lm.module.named_modules():
            if isinstance(mod, nn.Embedding):
                modules[name] = mod
    layers = tuple(_layer(name, mod.weight.shape) for name, mod in modules.items())
    chosen = {id(mod.weight) for mod in modules.values()}
    other = sum(p.numel() for p in lm.module.parameters() if id(p) not in chosen)
    return LayerSpace(layers=layers, other_params=other)


def group_layers(space: LayerSpace, policy: str = "linear") -> dict[str, list[str]]:
    """Groups of layers that share one bitwidth, in layer order: `linear` (each layer alone),
    `block` (all linears of a decoder block), `type` (all layers of one kind)."""
    if policy not in GROUPINGS:
        raise BitfrontError(f"unknown grouping {policy!r}; choose from {GROUPINGS}")
    groups: dict[str, list[str]] = {}
    for layer in space.layers:
        if policy == "linear":
            key = layer.name
        elif policy == "block":
            key = f"block.{layer.block}" if layer.block is not None else layer.name
        else:
            key = layer.kind
        groups.setdefault(key, []).append(layer.name)
    return groups
