"""Numeric building blocks: quantizers, GPTQ, Hessians, attention backends, packed linears."""
