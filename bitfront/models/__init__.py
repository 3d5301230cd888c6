"""Subject models behind one interface, `CodeLM`: autoregressive (any HF causal LM, GGUF) and
masked diffusion (CoDA, natively), plus the offline pocket pair.

The names below are imported on first use, so that light modules (e.g. the diffusion
sampler's option checks) do not pull in transformers.
"""

from importlib import import_module

_EXPORTS = {"CodeLM": "base", "GenerationOptions": "base", "Prompt": "base",
            "ScoreResult": "base", "load_local": "load", "load_model": "load"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"bitfront.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'bitfront.models' has no attribute {name!r}")
