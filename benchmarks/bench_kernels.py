"""Benchmark: packed low-bit linear speed per bitwidth against the 16-bit linear (bf16 and
fp32) at the pocket and 1.7B layer shapes; the latency table's median prediction error against
end-to-end timing of packed pocket models; analytic against measured memory. Prints JSON
(and writes it with --save).

    python benchmarks/bench_kernels.py [--shapes pocket,1.7b] [--models pocket-ar,...] [--save]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bitfront.kernels.qlinear import QuantLinear
from bitfront.kernels.quant import rtn_quantize
from bitfront.models import load_model
from bitfront.objectives.fidelity import sample_plans
from bitfront.objectives.latency import Workload, measure_latency_table, time_call
from bitfront.objectives.validation import validate_costs
from bitfront.quant.calibration import calibration_set
from bitfront.quant.candidates import build_candidates
from bitfront.space.layers import layer_space

SHAPES = {"pocket": [(128, 128), (64, 128), (384, 128), (128, 384)],
          "1.7b": [(2048, 2048), (1024, 2048), (6144, 2048), (2048, 6144)]}
TOKENS = (1, 256)  # AR decode; prefill / a diffusion step over 256 tokens


@torch.no_grad()
def linear_speed(out_f: int, in_f: int, tokens: int, device: torch.device) -> dict:
    weight = torch.randn(out_f, in_f) * 0.02
    row = {"shape": [out_f, in_f], "tokens": tokens}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        dense = nn.Linear(in_f, out_f, bias=False).to(device, dtype)
        x = torch.randn(tokens, in_f, device=device, dtype=dtype)
        seconds = time_call(lambda d=dense, x=x: d(x), device, repeats=20)
        row[f"16bit_{name}_us"] = round(1e6 * seconds, 1)
    x = torch.randn(tokens, in_f, device=device, dtype=torch.bfloat16)
    for bits in (2, 3, 4, 8):
        _, packed = rtn_quantize(weight, bits)
        layer = QuantLinear(packed, None, dtype=torch.bfloat16, device=device)
        seconds = time_call(lambda q=layer: q(x), device, repeats=20)
        row[f"{bits}bit_us"] = round(1e6 * seconds, 1)
        row[f"{bits}bit_kernel"] = layer.kernel
        row[f"{bits}bit_speedup_vs_bf16"] = round(row["16bit_bf16_us"] / (1e6 * seconds), 2)
    return row


def cost_validation(name: str, workload: Workload) -> dict:
    lm = load_model(name, show_progress=False)
    space = layer_space(lm)
    cands = build_candidates(lm, space, calibration_set(lm), show_progress=False)
    with tempfile.TemporaryDirectory() as fresh:  # time the measurement, not a cache hit
        start = time.perf_counter()
        table = measure_latency_table(lm, space, workload, root=Path(fresh),
                                      show_progress=False)
        table_s = time.perf_counter() - start
    report = validate_costs(lm, cands, table, sample_plans(cands, lm.fingerprint()),
                            show_progress=False)
    return {"model": name, "family": lm.family, "workload": workload.__dict__,
            "table_s": round(table_s, 1), "rest_s": table.rest, **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default="pocket,1.7b")
    parser.add_argument("--models", default="pocket-ar,pocket-diffusion")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--answer-len", type=int, default=64)
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu-{torch.get_num_threads()}threads")
    workload = Workload(prompt_len=args.prompt_len, answer_len=args.answer_len,
                        backend="torch")
    validations = [cost_validation(m, workload) for m in args.models.split(",") if m]
    result = {
        "benchmark": "packed kernels, latency table and memory",
        "device": device_name, "cpu": platform.processor(), "torch": torch.__version__,
        "targets": {"median_latency_rel_error": 0.10, "memory_rel_error": 0.01},
        "linear": {family: [linear_speed(o, i, t, device) for (o, i) in SHAPES[family]
                            for t in TOKENS] for family in args.shapes.split(",")},
        "latency_table": [{k: v for k, v in r.items() if k != "rows"} for r in validations],
        "plans": {r["model"]: r["rows"] for r in validations},
        "median_latency_rel_error": statistics.median(
            r["median_latency_rel_error"] for r in validations) if validations else None,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.save:
        path = Path(__file__).parent / "results" / f"kernels-{device_name.replace(' ', '_')}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text + "\n")


if __name__ == "__main__":
    main()
