"""The `bitfront` command: one verb per user question. Parses arguments, calls the packages,
prints results. User errors (`BitfrontError`) become one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

import bitfront
from bitfront.errors import BitfrontError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# Logs and pipes get a wide console so tables are not truncated; terminals use their width.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _dtype(name: str | None):
    import torch

    if name is None:
        return None
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise BitfrontError(f"unknown dtype {name!r}; choose from {sorted(table)}")
    return table[name]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="qwen3-1.7b, coda-1.7b, pocket-ar, pocket-diffusion "
                                 "(-micro), a local directory, a .gguf file or a hub id")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: bf16 on CUDA)")
    p.add_argument("--attn", choices=["flash", "sdpa", "eager"],
                   help="attention backend (default flash: flash-attn or SDPA flash on CUDA, "
                        "SDPA on CPU)")


def _load(args):
    from bitfront.models import load_model

    return load_model(args.model, device=args.device, dtype=_dtype(args.dtype), attn=args.attn)


# --- verbs -------------------------------------------------------------------------------

def cmd_pocket_train(args) -> int:
    from bitfront.paths import cache_dir
    from bitfront.pocket.store import cached_dir
    from bitfront.pocket.train import SIZES, train_pair

    size = SIZES[args.size]
    names = size.names()
    if not args.force and all((cached_dir(n) / "training.json").exists() for n in names):
        out.print(f"pocket pair {', '.join(names)} already trained in "
                  f"{cache_dir() / 'pocket'} (use --force to retrain)")
        return EXIT_OK
    paths = train_pair(size, cache_dir() / "pocket", seed=args.seed, mbpp_source=args.mbpp)
    _print_training(paths)
    return EXIT_OK


def _print_training(paths) -> None:
    import json

    from rich.table import Table

    table = Table(title="pocket pair")
    for col in ("model", "params", "tokens", "train s", "val loss", "MBPP top-1"):
        table.add_column(col, no_wrap=True)
    for name, path in paths.items():
        rec = json.loads((path / "training.json").read_text())
        m = rec["metrics"]
        table.add_row(name, f"{rec['parameters'] / 1e6:.2f}M", f"{rec['tokens_seen'] / 1e6:.2f}M",
                      f"{rec['train_seconds']:.0f}", f"{m['heldout_loss']:.3f}",
                      f"{m['mbpp_test_top1']:.1%}")
    out.print(table)
    for name, path in paths.items():
        out.print(f"{name}: {path}", soft_wrap=True)


def cmd_generate(args) -> int:
    from bitfront.models.diffusion_sampling import DiffusionOptions

    lm = _load(args)
    if args.no_chat:
        lm.use_chat = False
    gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
           "top_p": args.top_p, "top_k": args.top_k, "stop": args.stop, "seed": args.seed}
    if lm.family == "diffusion":
        gen["diffusion"] = DiffusionOptions(steps=args.steps, alg=args.alg,
                                            alg_temp=args.alg_temp,
                                            block_length=args.block_length)
    text = lm.generate([args.prompt], **gen)[0]
    if args.echo:
        sys.stdout.write(args.prompt)
    sys.stdout.write(text + "\n")
    return EXIT_OK


def _add_quant_options(p: argparse.ArgumentParser) -> None:
    q = p.add_argument_group("candidates (GPTQ at every bitwidth, cached)")
    q.add_argument("--candidate-bits", default="2,3,4,8",
                   help="bitwidths to compute candidates for (default 2,3,4,8)")
    q.add_argument("--group-size", type=int, default=128, help="-1 = per output channel")
    q.add_argument("--sym", action="store_true", help="symmetric quantization")
    q.add_argument("--act-order", action="store_true")
    q.add_argument("--static-groups", action="store_true")
    q.add_argument("--percdamp", type=float, default=0.01)
    q.add_argument("--include-head", action="store_true", help="also quantize lm_head")
    q.add_argument("--include-embeddings", action="store_true",
                   help="also quantize the token embeddings (round to nearest)")
    c = p.add_argument_group("calibration")
    c.add_argument("--calib-samples", type=int, default=64)
    c.add_argument("--calib-seq-len", type=int, default=256)
    c.add_argument("--calib-seed", type=int, default=0)
    c.add_argument("--no-mask-aware", action="store_true",
                   help="diffusion models: calibrate on unmasked text")


def _bits_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError as exc:
        raise BitfrontError(f"bad bit list {text!r}: use e.g. 2,3,4,8") from exc


def _candidates(args, lm):
    from bitfront.evaluators.calibration import CalibrationConfig, calibration_set
    from bitfront.search.candidates import QuantizerSettings, build_candidates
    from bitfront.space.layers import layer_space

    space = layer_space(lm, include_head=args.include_head,
                        include_embeddings=args.include_embeddings)
    settings = QuantizerSettings(bits=_bits_list(args.candidate_bits),
                                 group_size=args.group_size, sym=args.sym,
                                 act_order=args.act_order, static_groups=args.static_groups,
                                 percdamp=args.percdamp)
    calibration = calibration_set(lm, CalibrationConfig(
        n_samples=args.calib_samples, seq_len=args.calib_seq_len, seed=args.calib_seed,
        mask_aware=not args.no_mask_aware))
    return build_candidates(lm, space, calibration, settings=settings), calibration


def _run_dir(kind: str, model: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(model).name)
    return Path("runs") / kind / safe


def cmd_quantize(args) -> int:
    from bitfront.space.memory import plan_memory
    from bitfront.space.plan import BitPlan

    lm = _load(args)
    bits = _bits_list(args.candidate_bits)
    if args.bits not in (*bits, 16):
        raise BitfrontError(f"--bits {args.bits} is not among the candidate bits {bits}")
    candidates, calibration = _candidates(args, lm)
    plan = BitPlan.uniform(candidates.space, lm.fingerprint(), args.bits, args.group_size,
                           args.sym, name=f"uniform-{args.bits}bit", model_name=lm.name,
                           candidates=candidates.key,
                           quantizer=candidates.settings.to_dict(),
                           calibration=calibration.config.to_dict())
    path = Path(args.out) if args.out else _run_dir("quantize", args.model) / (
        f"plan-{args.bits}bit.json")
    plan.save(path)
    mem = plan_memory(candidates.space, plan)
    out.print(f"candidates: {candidates.directory}", soft_wrap=True)
    out.print(f"plan: {path}", soft_wrap=True)
    out.print(f"{len(plan.specs)} layers at {args.bits} bits: weights "
              f"{mem.total_bytes / 2**20:.2f} MiB, {mem.avg_bits:.2f} bits per weight "
              f"in quantized layers (overheads included)")
    return EXIT_OK


def cmd_sense(args) -> int:
    from rich.table import Table

    from bitfront.objectives.sensitivity import cached_sensitivity

    lm = _load(args)
    candidates, calibration = _candidates(args, lm)
    sens = cached_sensitivity(lm, candidates, calibration, probes=args.probes,
                              method=args.method, batches=args.trace_batches)
    directory = Path(args.out) if args.out else _run_dir("sense", args.model)
    json_path, csv_path = sens.save(directory)
    low = min(candidates.settings.bits)
    bits = sorted(candidates.settings.bits)
    table = Table(title=f"HAWQ sensitivity of {lm.name}, ranked by Ω at {low} bits")
    for col in ("#", "block", "layer", "Tr(H)", *(f"Ω@{b}" for b in bits), f"GPTQ@{low}"):
        table.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)
    for rank, row in enumerate(sens.ranked(low)[: args.top], 1):
        table.add_row(str(rank), "-" if row.block is None else str(row.block), row.kind,
                      f"{row.trace:.3g}", *(f"{sens.omega(row.layer, b):.2g}" for b in bits),
                      f"{row.gptq_loss:.2g}")
    out.print(table)
    out.print(f"wrote {csv_path} and {json_path}", soft_wrap=True)
    return EXIT_OK


def _eval_config(args, bench: str):
    from bitfront.evaluators.harness import EvalConfig

    return EvalConfig(bench=bench, limit=args.limit, samples=args.samples,
                      style=args.style, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_p=args.top_p,
                      batch_size=args.batch_size, seed=args.seed, workers=args.workers,
                      timeout=args.timeout)


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--limit", type=int, help="first N tasks only")
    g.add_argument("--samples", type=int, default=1, help="samples per task (n of pass@k)")
    g.add_argument("--style", choices=["instruct", "fewshot", "plain"],
                   help="prompt format (default: instruct for chat models, else plain)")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=2, help="sandbox processes in parallel")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    g.add_argument("--mbpp", help="MBPP directory or file (default: $BITFRONT_MBPP, else the "
                                  "vendored copy; 'hub' for the Hugging Face dataset)")


def cmd_eval(args) -> int:
    from bitfront.evaluators.harness import evaluate
    from bitfront.search.apply import PlanApplier, candidates_for_plan
    from bitfront.search.fidelity import plan_digest
    from bitfront.space.plan import BitPlan

    lm = _load(args)
    config = _eval_config(args, args.bench)
    key, tag = lm.fingerprint(), "16bit"
    plan = BitPlan.load(Path(args.plan)) if args.plan else None
    if plan is not None:
        tag = plan.meta.get("name") or Path(args.plan).stem
        key = f"{key}-{plan_digest(plan)}"
    out_path = Path(args.out) if args.out else _run_dir("eval", args.model) / (
        f"{args.bench}-{tag}.json")
    if plan is not None:
        applier = PlanApplier(lm, candidates_for_plan(lm, plan))
        applier.apply(plan)
    report = evaluate(lm, config, out_path, model_key=key, mbpp_source=args.mbpp)
    scores = ", ".join(f"{k} {report[k]:.1%}" for k in report if k.startswith("pass@"))
    out.print(f"{lm.name} on {args.bench} ({report['tasks']} tasks, {report['style']} prompts"
              f"{', plan ' + tag if plan else ''}): {scores}")
    out.print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(report["outcomes"].items())))
    out.print(f"wrote {out_path}", soft_wrap=True)
    return EXIT_OK


def cmd_fidelity(args) -> int:
    import json

    from rich.table import Table

    from bitfront.evaluators.proxy import AccuracyProxy, ProxyConfig
    from bitfront.search.fidelity import fidelity_plans, measure_fidelity
    from bitfront.space.plan import BitPlan

    lm = _load(args)
    candidates, _ = _candidates(args, lm)
    proxy = AccuracyProxy(lm, ProxyConfig(n_tasks=args.proxy_tasks), mbpp_source=args.mbpp)
    plans = fidelity_plans(candidates, lm.fingerprint(), mixed=args.mixed, seed=args.seed)
    plans += [BitPlan.load(Path(p)) for p in args.plans]
    directory = Path(args.out) if args.out else _run_dir("fidelity", args.model)
    result = measure_fidelity(lm, candidates, plans, proxy, _eval_config(args, args.bench),
                              directory, mbpp_source=args.mbpp)
    table = Table(title=f"proxy fidelity of {lm.name} on {args.bench}")
    for col in ("plan", "avg bits", "proxy retention", "likelihood retention", "pass@1"):
        table.add_column(col, justify="left" if col == "plan" else "right")
    for row in result.rows:
        table.add_row(row["plan"], f"{row['avg_bits']:.2f}", f"{row['proxy_retention']:.3f}",
                      f"{row['logprob_retention']:.3f}", f"{row['pass@1']:.1%}")
    out.print(table)
    if result.kendall_tau is None:
        out.print(f"Kendall τ / Spearman ρ {result.note}")
    else:
        out.print(f"Kendall τ {result.kendall_tau:.3f}, Spearman ρ {result.spearman_rho:.3f}")
    path = directory / "fidelity.json"
    path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    out.print(f"wrote {path}", soft_wrap=True)
    return EXIT_OK


def cmd_demo(args) -> int:
    from bitfront.models import load_model

    prompts = ["def add(a, b):", '"""Write a function to reverse a string."""\ndef reverse']
    for name in ("pocket-ar", "pocket-diffusion"):
        lm = load_model(name)
        for prompt in prompts:
            out.rule(f"{name}")
            out.print(prompt + lm.generate([prompt], max_new_tokens=64)[0], markup=False,
                      highlight=False)
    return EXIT_OK


# --- parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitfront",
        description="Pareto-optimal per-layer bit plans for diffusion and autoregressive "
                    "code LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"bitfront {bitfront.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    pocket = verbs.add_parser("pocket", help="the offline pocket pair")
    pocket_verbs = pocket.add_subparsers(dest="pocket_verb", metavar="ACTION", required=True)
    train = pocket_verbs.add_parser("train", help="train the pocket AR + diffusion pair")
    train.add_argument("--size", choices=["default", "micro"], default="default")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--force", action="store_true", help="retrain even if cached")
    train.add_argument("--mbpp", help="MBPP directory or file (default: $BITFRONT_MBPP, "
                                      "else the vendored copy)")
    train.set_defaults(run=cmd_pocket_train)

    gen = verbs.add_parser("generate", help="does this model load and write code?")
    _add_model_options(gen)
    gen.add_argument("prompt")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--no-chat", action="store_true", help="never apply a chat template")
    gen.add_argument("--echo", action="store_true", help="print the prompt before the answer")
    diff = gen.add_argument_group("diffusion sampling")
    diff.add_argument("--steps", type=int, help="denoising steps (default: max-new-tokens)")
    diff.add_argument("--alg", default="entropy",
                      choices=["origin", "maskgit_plus", "topk_margin", "entropy"])
    diff.add_argument("--alg-temp", type=float, default=0.0)
    diff.add_argument("--block-length", type=int, help="semi-autoregressive block length")
    gen.set_defaults(run=cmd_generate)

    quant = verbs.add_parser("quantize", help="uniform GPTQ plan + candidate cache")
    _add_model_options(quant)
    quant.add_argument("--bits", type=int, required=True, help="the plan's uniform bitwidth")
    quant.add_argument("--out", help="plan file (default runs/quantize/MODEL/plan-Bbit.json)")
    _add_quant_options(quant)
    quant.set_defaults(run=cmd_quantize)

    sense = verbs.add_parser("sense", help="which layers are sensitive (HAWQ table)?")
    _add_model_options(sense)
    sense.add_argument("--probes", type=int, default=4, help="Hutchinson probes per batch")
    sense.add_argument("--method", choices=["fd", "exact"], default="fd",
                       help="Hessian-vector products: finite differences (works with flash "
                            "attention) or exact double backward")
    sense.add_argument("--trace-batches", type=int, default=2,
                       help="calibration batches used for the traces")
    sense.add_argument("--top", type=int, default=20, help="rows to print")
    sense.add_argument("--out", help="directory for sensitivity.csv/.json "
                                     "(default runs/sense/MODEL)")
    _add_quant_options(sense)
    sense.set_defaults(run=cmd_sense)

    ev = verbs.add_parser("eval", help="full pass@k through the sandbox")
    _add_model_options(ev)
    ev.add_argument("--bench", choices=["mbpp", "humaneval"], required=True)
    ev.add_argument("--plan", help="a bit plan (JSON) to apply first")
    ev.add_argument("--out", help="report file (default runs/eval/MODEL/BENCH-PLAN.json); "
                                  "re-running resumes it")
    _add_eval_options(ev)
    ev.set_defaults(run=cmd_eval)

    fid = verbs.add_parser("fidelity", help="does the proxy rank plans like pass@1?")
    _add_model_options(fid)
    fid.add_argument("--bench", choices=["mbpp", "humaneval"], default="mbpp")
    fid.add_argument("--mixed", type=int, default=3, help="random mixed plans to add")
    fid.add_argument("--plans", nargs="*", default=[], help="more plan files to include")
    fid.add_argument("--proxy-tasks", type=int, default=64)
    fid.add_argument("--out", help="directory (default runs/fidelity/MODEL)")
    _add_eval_options(fid)
    _add_quant_options(fid)
    fid.set_defaults(run=cmd_fidelity)

    demo = verbs.add_parser("demo", help="the whole pipeline offline, pocket-sized")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # bitfront shows its own progress, one bar per stage
    run: Callable | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return run(args)
    except BitfrontError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
