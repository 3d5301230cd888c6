"""Benchmark: multi-bitwidth GPTQ vs four single-bitwidth runs; the candidate cache's bytes
per layer against the quantizable weight's bytes (bf16 and fp32 originals); and plan-apply time
(reading a layer file's packed form and dequantizing it into the live weight, as `PlanApplier`
does; restore copies the original back) vs one forward pass over the proxy batch, at the 1.7B
and pocket layer shapes. Prints JSON.

    python benchmarks/bench_quant.py [--shapes 1.7b,pocket] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bitfront.kernels.gptq import gptq_quantize
from bitfront.quant.candidates import read_weight, write_layer

SHAPES = {  # (out, in) of q/o, gate/up, down
    "1.7b": [(2048, 2048), (6144, 2048), (2048, 6144)],
    "pocket": [(128, 128), (384, 128), (128, 384)],
}
BITS = (2, 3, 4, 8)
PROXY_TOKENS = 32 * 256  # the proxy batch: 32 samples x 256 tokens
GROUP_SIZE = 128
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def correlated_hessian(dim: int, tokens: int = 4096, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, dim // 8, generator=g) @ torch.randn(dim // 8, dim, generator=g)
    x = latent + 0.5 * torch.randn(tokens, dim, generator=g)
    return 2 / tokens * x.t() @ x


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_shape(out_f: int, in_f: int, repeats: int) -> dict:
    weight = torch.randn(out_f, in_f) * 0.02
    H = correlated_hessian(in_f)
    multi = best_of(lambda: gptq_quantize(weight, H, BITS), repeats)
    singles = {b: best_of(lambda b=b: gptq_quantize(weight, H, [b]), repeats) for b in BITS}
    results = gptq_quantize(weight, H, BITS, group_size=GROUP_SIZE)
    x = torch.randn(PROXY_TOKENS, in_f)
    forward_s = best_of(lambda: torch.nn.functional.linear(x, weight), max(repeats, 3))
    out = {
        "shape": [out_f, in_f],
        "multibit_s": round(multi, 4),
        "single_s": {str(b): round(t, 4) for b, t in singles.items()},
        "sum_single_s": round(sum(singles.values()), 4),
        "multibit_over_sum": round(multi / sum(singles.values()), 3),
        "forward_s": round(forward_s, 5),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, dtype in DTYPES.items():
            path = Path(tmp) / f"{label}.safetensors"
            write_layer(path, weight.to(dtype), results)
            live = weight.to(dtype)
            apply_s = {str(b): best_of(lambda b=b, p=path, w=live: read_weight(
                p, b, GROUP_SIZE, (out_f, in_f), w.device, w.dtype, out=w), max(repeats, 5))
                for b in (*BITS, 16)}
            bound = 1 + sum(BITS) / (8 * live.element_size()) + 0.1
            out[label] = {
                "cache_over_weight": round(path.stat().st_size / live.nbytes, 4),
                "cache_target": round(bound, 4),
                "apply_s": {b: round(t, 5) for b, t in apply_s.items()},
                "apply_over_forward": round(max(apply_s.values()) / forward_s, 5),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default="1.7b,pocket")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    results = {}
    for family in args.shapes.split(","):
        results[family] = [bench_shape(o, i, args.repeats) for o, i in SHAPES[family]]
    print(json.dumps({
        "benchmark": "multi-bit GPTQ and plan apply",
        "device": "cpu", "threads": torch.get_num_threads(), "cpu": platform.processor(),
        "torch": torch.__version__, "bits": list(BITS), "proxy_tokens": PROXY_TOKENS,
        "targets": {"multibit_over_sum": 0.4, "apply_over_forward": 0.02,
                    "cache_over_weight": "1 + sum(bits)/dtype_bits + 0.1"},
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
