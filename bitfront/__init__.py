"""bitfront: Pareto-optimal per-layer bit plans for code LLMs (diffusion vs autoregressive)."""

__version__ = "0.1.0"
