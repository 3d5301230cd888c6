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
from bitfront.export.formats import FORMATS

# Stable exit codes for batch use.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_PLAN = 0, 1, 2, 3

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


def _quiet_transformers() -> None:
    """bitfront shows its own progress, one bar per stage: no per-file bars from transformers
    (imported here, when a command loads models, not at start-up)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _load(args):
    from bitfront.models import load_model

    _quiet_transformers()
    return load_model(args.model, device=args.device, dtype=_dtype(args.dtype), attn=args.attn)


# --- verbs -------------------------------------------------------------------------------

def cmd_pocket_train(args) -> int:
    from bitfront.paths import cache_dir
    from bitfront.pocket.store import cached_dir, is_current
    from bitfront.pocket.train import SIZES, train_pair

    _quiet_transformers()
    size = SIZES[args.size]
    names = size.names()
    if not args.force and all(is_current(cached_dir(n), size) for n in names):
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
    from bitfront.quant.calibration import CalibrationConfig, calibration_set
    from bitfront.quant.candidates import QuantizerSettings, build_candidates
    from bitfront.space.layers import layer_space

    space = layer_space(lm, include_head=args.include_head,
                        include_embeddings=args.include_embeddings)
    settings = QuantizerSettings(bits=_bits_list(args.candidate_bits),
                                 group_size=args.group_size, sym=args.sym,
                                 act_order=args.act_order, static_groups=args.static_groups,
                                 percdamp=args.percdamp)
    calibration = calibration_set(lm, CalibrationConfig(
        n_samples=args.calib_samples, seq_len=args.calib_seq_len, seed=args.calib_seed,
        mask_aware=not args.no_mask_aware, mbpp=getattr(args, "mbpp", None) or ""))
    return build_candidates(lm, space, calibration, settings=settings), calibration


def _run_dir(kind: str, model: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(model).name)
    return Path("runs") / kind / safe


def cmd_quantize(args) -> int:
    from bitfront.space.memory import plan_memory
    from bitfront.space.plan import BitPlan
    from bitfront.units import format_bytes

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
              f"{format_bytes(mem.total_bytes)}, {mem.avg_bits:.2f} bits per weight "
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
    from bitfront.objectives.fidelity import plan_model_key
    from bitfront.quant.apply import PlanApplier, candidates_for_plan
    from bitfront.space.plan import BitPlan

    lm = _load(args)
    config = _eval_config(args, args.bench)
    key, tag = lm.fingerprint(), "16bit"
    plan = BitPlan.load(Path(args.plan)) if args.plan else None
    if plan is not None:
        tag = plan.meta.get("name") or Path(args.plan).stem
        candidates = candidates_for_plan(lm, plan)
        key = plan_model_key(lm, plan, candidates)
        PlanApplier(lm, candidates).apply(plan)
    out_path = Path(args.out) if args.out else _run_dir("eval", args.model) / (
        f"{args.bench}-{tag}.json")
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

    from bitfront.objectives.fidelity import measure_fidelity, sample_plans
    from bitfront.objectives.proxy import AccuracyProxy, ProxyConfig
    from bitfront.space.plan import BitPlan

    lm = _load(args)
    candidates, _ = _candidates(args, lm)
    proxy = AccuracyProxy(lm, ProxyConfig(n_tasks=args.proxy_tasks), mbpp_source=args.mbpp)
    plans = sample_plans(candidates, lm.fingerprint(), mixed=args.mixed, seed=args.seed)
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


def _setup(args):
    from bitfront.objectives.latency import Workload
    from bitfront.objectives.proxy import ProxyConfig
    from bitfront.quant.calibration import CalibrationConfig
    from bitfront.quant.candidates import QuantizerSettings
    from bitfront.search.pipeline import Setup

    return Setup(
        quantizer=QuantizerSettings(bits=_bits_list(args.candidate_bits),
                                    group_size=args.group_size, sym=args.sym,
                                    act_order=args.act_order,
                                    static_groups=args.static_groups, percdamp=args.percdamp),
        calibration=CalibrationConfig(n_samples=args.calib_samples, seq_len=args.calib_seq_len,
                                      seed=args.calib_seed, mask_aware=not args.no_mask_aware,
                                      mbpp=getattr(args, "mbpp", None) or ""),
        proxy=ProxyConfig(n_tasks=args.proxy_tasks),
        workload=Workload(prompt_len=args.prompt_len, answer_len=args.answer_len,
                          steps=args.steps),
        include_head=args.include_head, include_embeddings=args.include_embeddings)


def _search_config(args):
    from bitfront.search.study import SearchConfig
    from bitfront.units import parse_bytes, parse_seconds

    return SearchConfig(
        objectives=tuple(args.objectives.split(",")), accuracy=args.accuracy,
        choices=_bits_list(args.choices), grouping=args.grouping, sampler=args.sampler,
        population=args.population, seed=args.seed, ilp_budgets=args.ilp_budgets,
        cheap_sensitivity=args.cheap_sensitivity,
        memory_budget=parse_bytes(args.memory_budget) if args.memory_budget else None,
        latency_budget=parse_seconds(args.latency_budget) if args.latency_budget else None)


def _front_summary(study) -> dict:
    from bitfront.search.front import (
        hypervolume,
        knee,
        pareto_front,
        points,
        reference_point,
        study_config,
        trial_metrics,
    )

    config = study_config(study)
    pts = points(study)
    front = pareto_front(pts, config["objectives"])
    best = knee(front, config["objectives"])
    return {"study": study.study_name, "trials": len(pts),
            "feasible": sum(p.feasible for p in pts),
            "objectives": config["objectives"], "reference": reference_point(config),
            "hypervolume": hypervolume(pts, config["objectives"], reference_point(config)),
            "knee": best.number if best else None,
            "front": [{"trial": p.number, "origin": p.origin, **trial_metrics(p.metrics)}
                      for p in front]}


def _print_front(summary: dict) -> None:
    from rich.table import Table

    from bitfront.units import format_bytes

    table = Table(title=f"Pareto front of {summary['study']} ({summary['trials']} trials, "
                        f"{summary['feasible']} feasible)")
    for col in ("trial", "origin", "retention", "memory", "avg bits", "latency s", ""):
        table.add_column(col, justify="left" if col in ("origin", "") else "right")
    for row in summary["front"]:
        table.add_row(str(row["trial"]), row["origin"], f"{row['retention']:.4f}",
                      format_bytes(row["memory_bytes"]), f"{row['avg_bits']:.2f}",
                      f"{row['latency_s']:.4g}" if "latency_s" in row else "-",
                      "knee" if row["trial"] == summary["knee"] else "")
    out.print(table)
    out.print(f"hypervolume {summary['hypervolume']:.4f} (normalised; reference: retention 0, "
              f"memory {format_bytes(summary['reference']['memory'])}"
              + (f", latency {summary['reference']['latency']:.4g} s)"
                 if summary["reference"]["latency"] else ")"))


def cmd_search(args) -> int:
    import json

    from bitfront.search.pipeline import build_search
    from bitfront.search.study import default_run_dir, default_storage, write_pointer

    lm = _load(args)
    name = args.study_name or _run_dir("search", args.model).name
    storage = args.storage or default_storage(name)
    search = build_search(lm, _search_config(args), _setup(args), mbpp_source=args.mbpp,
                          show_progress=not args.json)
    study = search.run(storage, name, args.trials, worker=args.worker,
                       show_progress=not args.json)
    run_dir = default_run_dir(name)
    write_pointer(run_dir, storage, name, lm.name)
    summary = _front_summary(study)
    (run_dir / "front.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_front(summary)
        out.print(f"study {name!r} in {storage}; front written to {run_dir / 'front.json'}",
                  soft_wrap=True)
    return EXIT_OK


def _chosen_point(args, study):
    from bitfront.search.front import accuracy_metric, best_under, points, study_config
    from bitfront.units import parse_bytes, parse_seconds

    pts = points(study)
    if getattr(args, "trial", None) is not None:
        for p in pts:
            if p.number == args.trial:
                return p
        raise BitfrontError(f"trial {args.trial} is not a completed trial of the study")
    memory = parse_bytes(args.memory) if args.memory else None
    latency = parse_seconds(args.latency) if args.latency else None
    return best_under(pts, memory=memory, latency=latency,
                      accuracy=accuracy_metric(study_config(study)))


def cmd_best(args) -> int:
    import json

    from bitfront.search.front import NoPlanError, plan_of, study_config, trial_metrics
    from bitfront.search.study import locate_study
    from bitfront.units import format_bytes

    study = locate_study(args.study, args.storage)
    try:
        point = _chosen_point(args, study)
    except NoPlanError as exc:
        if args.json:
            sys.stdout.write(json.dumps({"found": False, "message": str(exc)}) + "\n")
        else:
            out.print(str(exc))
        return EXIT_NO_PLAN
    plan = plan_of(point, study_config(study))
    result = {"found": True, "trial": point.number, "origin": point.origin,
              "metrics": trial_metrics(point.metrics), "plan": plan.to_dict()}
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return EXIT_OK
    m = result["metrics"]
    out.print(f"trial {point.number} ({point.origin}): retention {m['retention']:.4f}, "
              f"memory {format_bytes(m['memory_bytes'])} ({m['avg_bits']:.2f} bits/weight)"
              + (f", latency {m['latency_s']:.4g} s/sample" if "latency_s" in m else ""))
    counts: dict[int, int] = {}
    for bits in plan.bits().values():
        counts[bits] = counts.get(bits, 0) + 1
    out.print("layers by bitwidth: " + ", ".join(f"{b}-bit {n}" for b, n in sorted(
        counts.items())))
    return EXIT_OK


def cmd_export(args) -> int:
    import json

    import bitfront as package
    from bitfront.export.formats import export_json, gptqmodel_config, llama_cpp_args
    from bitfront.search.front import NoPlanError, plan_of, study_config, trial_metrics
    from bitfront.search.study import locate_study

    study = locate_study(args.study, args.storage)
    args.memory, args.latency = args.best_under, None
    if args.trial is None and args.best_under is None:
        raise BitfrontError("choose the plan: --trial N or --best-under SIZE")
    try:
        point = _chosen_point(args, study)
    except NoPlanError as exc:
        err.print(str(exc))
        return EXIT_NO_PLAN
    config = study_config(study)
    plan = plan_of(point, config)
    if args.format == "json":
        provenance = {"study": study.study_name, "trial": point.number, "origin": point.origin,
                      "candidates": config["candidates"], "bitfront": package.__version__}
        payload = json.dumps(export_json(plan, trial_metrics(point.metrics), provenance),
                             indent=2)
    elif args.format == "gptqmodel":
        payload = json.dumps(gptqmodel_config(plan, act_order=config["quantizer"]["act_order"],
                                              damp=config["quantizer"]["percdamp"]), indent=2)
    else:
        payload = " ".join(llama_cpp_args(plan))
    if args.out:
        Path(args.out).write_text(payload + "\n")
    if args.checkpoint:
        from bitfront.export.gptq import write_gptq_checkpoint
        from bitfront.quant.apply import candidates_for_plan

        lm = _load(argparse.Namespace(model=args.model or config["model_name"],
                                      device=args.device, dtype=args.dtype, attn=None))
        write_gptq_checkpoint(lm, plan, candidates_for_plan(lm, plan), Path(args.checkpoint))
    if args.json:
        sys.stdout.write(json.dumps({"trial": point.number, "format": args.format,
                                     "out": args.out, "checkpoint": args.checkpoint,
                                     "content": payload if not args.out else None}) + "\n")
    elif args.out:
        out.print(f"wrote {args.format} export of trial {point.number} to {args.out}",
                  soft_wrap=True)
    else:
        sys.stdout.write(payload + "\n")
    if args.checkpoint and not args.json:
        out.print(f"wrote GPTQ checkpoint to {args.checkpoint}", soft_wrap=True)
    return EXIT_OK


def cmd_dashboard(args) -> int:
    from bitfront.search.study import open_storage, resolve_study

    url, name = resolve_study(args.study, args.storage)
    try:
        from optuna_dashboard import run_server
    except ImportError as exc:
        raise BitfrontError("the dashboard needs optuna-dashboard: pip install "
                            "'bitfront[dashboard]'") from exc
    out.print(f"serving study {name!r} of {url} on http://{args.host}:{args.port}",
              soft_wrap=True)
    run_server(open_storage(url), host=args.host, port=args.port)
    return EXIT_OK


def _study_summary(run_dir: Path) -> None:
    import json

    from rich.table import Table

    from bitfront.units import format_bytes

    report = json.loads((run_dir / "report.json").read_text())
    table = Table(title=f"study {report['study']}")
    for col in ("model", "family", "16-bit → 4-bit → 2-bit retention", "front", "hypervolume",
                "knee"):
        table.add_column(col)
    for label, m in report["models"].items():
        uniform = {u["bits"]: u for u in m["uniform"]}
        chain = " → ".join(f"{uniform[b]['retention']:.3f}" for b in (16, 4, 2) if b in uniform)
        knee = next((v for v in m["verified"] if v["trial"] == m["knee"]), None)
        table.add_row(label, m["model"]["family"], chain, f"{len(m['front'])} plans",
                      f"{m['hypervolume']:.4f}",
                      "-" if knee is None else f"{knee['retention']:.3f} at "
                      f"{format_bytes(knee['memory_bytes'])}")
    out.print(table)
    for sentence in report["findings"]:
        out.print(sentence, soft_wrap=True)
    out.print(f"report: {run_dir / 'report.md'}", soft_wrap=True)


def _run_study(spec_name: str, runs: str) -> int:
    from bitfront.studies.spec import finished, load_spec

    spec = load_spec(spec_name)
    if not finished(spec, Path(runs)):  # a finished study is only summarised, instantly
        from bitfront.studies.runner import run_study

        _quiet_transformers()
        run_study(spec, Path(runs))
    _study_summary(Path(runs) / spec.name)
    return EXIT_OK


def cmd_study_run(args) -> int:
    return _run_study(args.spec, args.runs)


def cmd_compare(args) -> int:
    import json

    from rich.table import Table

    from bitfront.studies import plots
    from bitfront.studies.compare import compare_runs, load_front
    from bitfront.units import format_bytes, parse_bytes

    a, b = load_front(Path(args.run_a)), load_front(Path(args.run_b))
    if a.label == b.label:
        a.label, b.label = f"{a.label} (A)", f"{b.label} (B)"
    budgets = [parse_bytes(x) for x in args.budgets.split(",")] if args.budgets else []
    result = compare_runs(a, b, budgets)
    directory = Path(args.out) if args.out else Path("runs") / "compare" / (
        f"{Path(args.run_a).name}-vs-{Path(args.run_b).name}")
    directory.mkdir(parents=True, exist_ok=True)
    figures = {"memory_bytes": "fronts_memory.png", "avg_bits": "fronts_bits.png"}
    if "latency" in a.objectives:
        figures["latency_s"] = "fronts_latency.png"
    result["plots"] = [str(plots.fronts([a, b], x, directory / name, f"{a.label} vs {b.label}"))
                       for x, name in figures.items()]
    (directory / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return EXIT_OK
    table = Table(title=f"{a.label} vs {b.label}")
    for col in ("run", "trials", "front", "hypervolume", "knee",
                *(f"best ≤ {format_bytes(x)}" for x in budgets)):
        table.add_column(col)
    for run in (a, b):
        r = result[run.label]
        knee = r["knee"]
        table.add_row(run.label, str(r["trials"]), str(r["front_size"]),
                      f"{r['hypervolume']:.4f}",
                      "-" if knee is None else f"{knee[run.accuracy_key]:.3f} at "
                      f"{format_bytes(knee['memory_bytes'])}",
                      *("-" if v is None else f"{v:.4f}" for v in r["best_at"].values()))
    out.print(table)
    gap = result["retention_gap_memory"]
    if gap["mean_gap"] is not None:
        out.print(f"mean retention gap {a.label} − {b.label} over the common memory range: "
                  f"{gap['mean_gap']:+.4f} (absolute {gap['mean_abs_gap']:.4f})")
    out.print(f"wrote {directory / 'compare.json'} and plots", soft_wrap=True)
    return EXIT_OK


def cmd_demo(args) -> int:
    return _run_study("pocket", args.runs)


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

    srch = verbs.add_parser("search", help="the Pareto front of bit plans")
    _add_model_options(srch)
    srch.add_argument("--trials", type=int, default=60, help="finished trials to reach "
                                                             "(all workers together)")
    srch.add_argument("--memory-budget", help="e.g. 1.2GiB: plans above it are infeasible")
    srch.add_argument("--latency-budget", help="e.g. 0.5s per generated sample")
    srch.add_argument("--storage", help="Optuna storage: sqlite:///..., postgresql://..., or "
                                        "a journal file (default runs/search/NAME/study.db)")
    srch.add_argument("--study-name", help="default: the model's name")
    srch.add_argument("--objectives", default="accuracy,memory,latency")
    srch.add_argument("--accuracy", choices=["top1", "likelihood"], default="top1",
                      help="proxy retention used as the accuracy objective")
    srch.add_argument("--choices", default="2,3,4,8,16", help="bitwidths to choose from")
    srch.add_argument("--grouping", choices=["linear", "block", "type"], default="linear")
    srch.add_argument("--sampler", choices=["nsga2", "tpe"], default="nsga2")
    srch.add_argument("--population", type=int, default=16, help="NSGA-II population")
    srch.add_argument("--seed", type=int, default=0)
    srch.add_argument("--worker", type=int, default=0,
                      help="index of this worker when several share one study")
    srch.add_argument("--ilp-budgets", type=int, default=6,
                      help="HAWQ ILP seeds at this many memory budgets (0: unseeded)")
    srch.add_argument("--cheap-sensitivity", action="store_true",
                      help="seed from GPTQ's loss instead of Hessian traces")
    srch.add_argument("--proxy-tasks", type=int, default=64)
    srch.add_argument("--prompt-len", type=int, default=128, help="latency workload")
    srch.add_argument("--answer-len", type=int, default=128, help="latency workload")
    srch.add_argument("--steps", type=int, help="diffusion steps (default: answer length)")
    srch.add_argument("--mbpp", help="MBPP directory or file")
    srch.add_argument("--json", action="store_true", help="print the front as one JSON line")
    _add_quant_options(srch)
    srch.set_defaults(run=cmd_search)

    def study_arg(p):
        p.add_argument("study", help="a search run directory (runs/search/NAME) or a study "
                                     "name (with --storage)")
        p.add_argument("--storage", help="the study's Optuna storage URL or journal file")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    best = verbs.add_parser("best", help="the best plan under my budget")
    study_arg(best)
    best.add_argument("--memory", help="e.g. 1.2GiB")
    best.add_argument("--latency", help="e.g. 0.5s")
    best.set_defaults(run=cmd_best)

    exp = verbs.add_parser("export", help="files for deployment")
    study_arg(exp)
    exp.add_argument("--trial", type=int)
    exp.add_argument("--best-under", help="the best plan under this memory, e.g. 1.2GiB")
    exp.add_argument("--format", choices=list(FORMATS), default="json")
    exp.add_argument("--out", help="file to write (default: stdout)")
    exp.add_argument("--checkpoint", help="also write a quantized checkpoint (GPTQ layout) "
                                          "to this directory")
    exp.add_argument("--model", help="model to quantize for --checkpoint (default: the "
                                     "study's)")
    exp.add_argument("--device")
    exp.add_argument("--dtype")
    exp.set_defaults(run=cmd_export)

    dash = verbs.add_parser("dashboard", help="optuna-dashboard on a study's storage")
    study_arg(dash)
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8080)
    dash.set_defaults(run=cmd_dashboard)

    study = verbs.add_parser("study", help="ready-made studies and their reports")
    study_verbs = study.add_subparsers(dest="study_verb", metavar="ACTION", required=True)
    srun = study_verbs.add_parser("run", help="run (or resume) a study spec")
    srun.add_argument("spec", help="a study TOML file, or a bundled one: pocket, "
                                   "coda-vs-qwen3")
    srun.add_argument("--runs", default="runs", help="where run directories go")
    srun.set_defaults(run=cmd_study_run)

    cmp = verbs.add_parser("compare", help="frontier shapes of two runs")
    cmp.add_argument("run_a", help="runs/STUDY/MODEL or runs/search/NAME")
    cmp.add_argument("run_b")
    cmp.add_argument("--budgets", help="memory budgets, e.g. 2.5MiB,3MiB")
    cmp.add_argument("--out", help="directory for compare.json and plots")
    cmp.add_argument("--json", action="store_true")
    cmp.set_defaults(run=cmd_compare)

    demo = verbs.add_parser("demo", help="the whole pipeline offline, pocket-sized")
    demo.add_argument("--runs", default="runs", help="where run directories go")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
