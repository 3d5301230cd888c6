"""The pocket pair: a small autoregressive and a small masked-diffusion code model of the same
Qwen3 backbone, trained by bitfront itself on the same corpus, so the whole CoDA-vs-Qwen3
pipeline runs offline on a laptop CPU."""
