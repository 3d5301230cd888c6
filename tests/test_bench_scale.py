"""The scale benchmark's extrapolation arithmetic (the measurement itself takes minutes)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(blocks, seconds, cache, weights):
    stages = {name: {"s": s, "peak_rss": 1} for name, s in seconds.items()}
    return {"family": "qwen3", "blocks": blocks, "stages": stages, "cache_bytes": cache,
            "quantizable_weight_bytes": weights, "proxy_tasks": 8}


def test_extrapolation_separates_fixed_and_per_block_cost():
    bench = _bench()
    one = _run(1, {"candidates": 3.0, "hawq_traces": 5.0, "proxy_forward": 12.0,
                   "search_trial": 13.0}, cache=150, weights=100)
    two = _run(2, {"candidates": 5.0, "hawq_traces": 7.0, "proxy_forward": 14.0,
                   "search_trial": 15.0}, cache=300, weights=200)
    out = bench.extrapolate({1: one, 2: two}, probes=1, trials=200)
    assert out["per_block_s"]["candidates"] == 2.0
    assert out["fixed_s"]["candidates"] == 1.0
    assert out["full_model_s"]["candidates"] == 1.0 + 28 * 2.0
    assert out["full_model_s"]["hawq_traces"] == (3.0 + 28 * 2.0) * 8  # 4 probes x 2 batches
    assert out["full_model_s"]["search_trial"] == (11.0 + 28 * 2.0) * 8  # 64 / 8 tasks
    assert out["cache_bytes_full"] == 150 + 27 * 150
    assert out["cache_ratio"] == 1.5
    run = out["predicted_full_run"]
    assert run["total_s"] == run["candidates_s"] + run["sensitivities_s"] + run["trials_s"]
