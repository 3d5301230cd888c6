"""Benchmark: generation throughput of `bitfront eval` against plain `transformers` `generate`.

Both sides get the same tasks, batched exactly as `bitfront eval` batches them
(`harness.eval_batches`), and the same per-batch settings: greedy, `--max-new-tokens`,
`use_cache=True`, the same stop tokens and stop strings, left padding. (a) is the harness's
own generation call (`harness.generate_answers`: render, encode, sort, generate, decode, cut);
(b) is `model.generate` on the already tokenised batches, decoding nothing, with one
`StopStringCriteria` built before timing (`generate(stop_strings=...)` rebuilds its vocabulary
tables on every call; that cost is reported apart as `stop_tables_s`). Both sides are warmed
up on the first batch. Sandbox execution is not timed. Tokens are those (b) generates before
each row stops (eos, or the pad after a stop string; the eos itself not counted), so both
rates divide the same count; `ratio` is bitfront seconds / plain seconds. Prints JSON.

    python benchmarks/bench_generate.py [--model pocket-ar] [--bench pocket] [--limit 16]
    python benchmarks/bench_generate.py --model SmolLM2-135M-Instruct.Q4_1.gguf --bench humaneval \
        --limit 16 --max-new-tokens 256 --out generate-smollm2-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import transformers
from transformers import StoppingCriteriaList, StopStringCriteria

from bitfront.evaluators.harness import EvalConfig, bench_tasks, eval_batches, generate_answers
from bitfront.evaluators.prompts import default_style
from bitfront.models import load_model
from bitfront.models.base import batches, cut_at_stops, pad_batch

RESULTS = Path(__file__).parent / "results"


def bitfront_side(lm, partition, config: EvalConfig) -> tuple[float, list[str]]:
    start = time.perf_counter()
    answers = [a for number, batch in enumerate(partition)
               for a in generate_answers(lm, batch, number, config)]
    return time.perf_counter() - start, answers


@torch.no_grad()
def plain_side(lm, partition, config: EvalConfig) -> tuple[float, int, list[str]]:
    """Plain `generate` over the same token batches: seconds, the tokens generated until each
    row stops, and the answers (decoded and cut after timing) in the harness's order."""
    encoded, order = [], []
    for batch in partition:
        ids, base = [lm.encode(lm.render(t.prompt.prompt)) for t in batch], len(order)
        for idx in batches(len(ids), config.batch_size, [len(i) for i in ids]):
            encoded.append((pad_batch([ids[i] for i in idx], lm.pad_token_id, side="left"),
                            batch[0].prompt.stop))
            order += [base + i for i in idx]
    criteria = {s: s and StoppingCriteriaList([StopStringCriteria(lm.tokenizer, list(s))])
                for s in {s for _, s in encoded}}
    module, stops, tokens, outputs = lm.module, lm.stop_token_ids(), 0, []
    start = time.perf_counter()
    for (ids, mask), stop in encoded:
        out = module.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                              max_new_tokens=config.max_new_tokens, do_sample=False,
                              temperature=None, top_p=None, top_k=None, use_cache=True,
                              pad_token_id=lm.pad_token_id, eos_token_id=stops,
                              stopping_criteria=criteria[stop] or None)
        # A finished row is padded after its end: count the tokens before its first eos/pad.
        ended = torch.isin(out[:, ids.shape[1]:], torch.tensor(stops, device=out.device))
        tokens += int((ended.int().cumsum(1) == 0).sum())
        outputs += [(row[ids.shape[1]:], stop) for row in out]
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    seconds, answers = time.perf_counter() - start, [""] * len(outputs)
    for k, (row, stop) in zip(order, outputs, strict=True):
        answers[k] = cut_at_stops(lm.tokenizer.decode(row, skip_special_tokens=True), stop)
    return seconds, tokens, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pocket-ar", help="name, local HF dir or .gguf")
    parser.add_argument("--bench", default="pocket", choices=("pocket", "humaneval", "mbpp"))
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=1, help="best of N for each side")
    parser.add_argument("--out", default=None, help="also write the JSON to benchmarks/results/")
    args = parser.parse_args()

    lm = load_model(args.model, device=args.device, dtype=args.dtype, show_progress=False)
    config = EvalConfig(bench=args.bench, limit=args.limit, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size)
    tasks = bench_tasks(args.bench, style=default_style(lm), limit=args.limit)
    partition = eval_batches(tasks, config)
    start = time.perf_counter()
    if tasks[0].prompt.stop:
        StopStringCriteria(lm.tokenizer, list(tasks[0].prompt.stop))
    tables = time.perf_counter() - start
    plain_side(lm, partition[:1], config)  # warm-up
    bitfront_side(lm, partition[:1], config)
    plain = min((plain_side(lm, partition, config) for _ in range(args.repeats)),
                key=lambda r: r[0])
    ours = min((bitfront_side(lm, partition, config) for _ in range(args.repeats)),
               key=lambda r: r[0])
    tokens = plain[1]
    result = {
        "model": args.model, "bench": args.bench, "prompts": len(tasks),
        "batches": len(partition), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "generated_tokens": tokens,
        "bitfront_s": round(ours[0], 3), "plain_s": round(plain[0], 3),
        "bitfront_tokens_per_s": round(tokens / ours[0], 1),
        "plain_tokens_per_s": round(tokens / plain[0], 1),
        "ratio": round(ours[0] / plain[0], 3), "same_answers": ours[1] == plain[2],
        "stop_tables_s": round(tables, 3),
        "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / Path(args.out).name).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
