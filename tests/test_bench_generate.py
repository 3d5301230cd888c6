"""The generation benchmark compares like with like: both sides give the same answers."""

import importlib.util
from pathlib import Path

from bitfront.evaluators.harness import EvalConfig, bench_tasks, eval_batches
from bitfront.evaluators.prompts import default_style
from bitfront.models import load_local

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generate.py"


def test_bitfront_and_plain_generate_agree_on_the_same_batches(micro_pair):
    spec = importlib.util.spec_from_file_location("bench_generate", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    config = EvalConfig(bench="humaneval", limit=5, max_new_tokens=16, batch_size=2)
    partition = eval_batches(bench_tasks("humaneval", style=default_style(lm), limit=5), config)
    _, ours = bench.bitfront_side(lm, partition, config)
    _, tokens, plain = bench.plain_side(lm, partition, config)
    assert ours == plain and len(ours) == 5
    assert 0 < tokens <= 5 * config.max_new_tokens
