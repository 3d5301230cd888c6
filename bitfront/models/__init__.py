"""Subject models behind one interface, `CodeLM`: autoregressive (any HF causal LM, GGUF) and
masked diffusion (CoDA, natively), plus the offline pocket pair."""

from bitfront.models.base import CodeLM, GenerationOptions, Prompt, ScoreResult
from bitfront.models.load import load_local, load_model

__all__ = ["CodeLM", "GenerationOptions", "Prompt", "ScoreResult", "load_local", "load_model"]
