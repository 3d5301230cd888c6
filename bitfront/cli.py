"""The `bitfront` command: one verb per user question. Flags become the same config objects
the Python API takes (bitfront/flags.py), the API answers, and this module prints tables or
JSON. User errors (`BitfrontError`) become one line on stderr and exit code 1 (3 when no plan
meets the budget); anything else is a bug: its traceback, and exit code 4."""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

import bitfront
from bitfront.errors import BitfrontError

# Stable exit codes for batch use: 1 is the user's error, 4 a bug in bitfront.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_PLAN, EXIT_BUG = 0, 1, 2, 3, 4

# Logs and pipes get a wide console so tables are not truncated; terminals use their width.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _load(args, model: str | None = None):
    """The model the flags name, with transformers' own progress bars off (bitfront shows
    one bar per stage)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return bitfront.load_model(model or args.model, device=args.device,
                               dtype=args.dtype, attn=getattr(args, "attn", None))


def _table(title: str, columns, rows, left=()) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _setup(args):
    from bitfront.cli_parser import setup_from_flags

    return setup_from_flags(args)


def _mbpp(args) -> str | None:
    return getattr(args, "mbpp", None)


# --- verbs -------------------------------------------------------------------------------

def cmd_pocket_train(args) -> int:
    from bitfront.paths import cache_dir
    from bitfront.pocket.store import cached_dir, is_current
    from bitfront.pocket.train import SIZES, train_pair

    size = SIZES[args.size]
    names = size.names()
    if not args.force and all(is_current(cached_dir(n), size) for n in names):
        out.print(f"pocket pair {', '.join(names)} already trained in "
                  f"{cache_dir() / 'pocket'} (use --force to retrain)")
        return EXIT_OK
    paths = train_pair(size, cache_dir() / "pocket", seed=args.seed, mbpp_source=args.mbpp)
    rows = []
    for name, path in paths.items():
        rec = json.loads((path / "training.json").read_text())
        m = rec["metrics"]
        rows.append([name, f"{rec['parameters'] / 1e6:.2f}M", f"{rec['tokens_seen'] / 1e6:.2f}M",
                     f"{rec['train_seconds']:.0f}", f"{m['heldout_loss']:.3f}",
                     f"{m['mbpp_test_top1']:.1%}", f"{m['pocket_validation_top1']:.1%}"])
    _table("pocket pair", ("model", "params", "tokens", "train s", "val loss", "MBPP top-1",
                           "pocket top-1"), rows, left=("model",))
    for name, path in paths.items():
        out.print(f"{name}: {path}", soft_wrap=True)
    return EXIT_OK


def cmd_generate(args) -> int:
    from bitfront.flags import config_from_flags
    from bitfront.models.diffusion_sampling import DiffusionOptions

    lm = _load(args)
    if args.no_chat:
        lm.use_chat = False
    gen = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
           "top_p": args.top_p, "top_k": args.top_k, "stop": args.stop, "seed": args.seed}
    if lm.family == "diffusion":
        gen["diffusion"] = config_from_flags(DiffusionOptions, args)
    text = lm.generate([args.prompt], **gen)[0]
    sys.stdout.write((args.prompt if args.echo else "") + text + "\n")
    return EXIT_OK


def cmd_quantize(args) -> int:
    from bitfront.paths import check_writable, run_dir
    from bitfront.space.memory import plan_memory
    from bitfront.space.plan import BitPlan
    from bitfront.units import format_bytes

    setup = _setup(args)  # bad flags fail before the model loads
    if args.bits not in (*setup.quantizer.bits, 16):
        raise BitfrontError(f"--bits {args.bits} is not among the candidate bits "
                            f"{setup.quantizer.bits} (--candidate-bits)")
    path = Path(args.out) if args.out else run_dir("quantize", args.model) / (
        f"plan-{args.bits}bit.json")
    check_writable(path.parent)
    lm = _load(args)
    candidates = bitfront.build_candidates(lm, setup, mbpp=_mbpp(args))
    q = setup.quantizer
    plan = BitPlan.uniform(candidates.space, lm.fingerprint(), args.bits, q.group_size, q.sym,
                           name=f"uniform-{args.bits}bit", model_name=lm.name,
                           candidates=candidates.key, quantizer=q.to_dict(),
                           calibration=setup.calibration.to_dict())
    plan.save(path)
    mem = plan_memory(candidates.space, plan)
    out.print(f"candidates: {candidates.directory}", soft_wrap=True)
    out.print(f"plan: {path}", soft_wrap=True)
    out.print(f"{len(plan.specs)} layers at {args.bits} bits: weights "
              f"{format_bytes(mem.total_bytes)}, {mem.avg_bits:.2f} bits per weight "
              f"in quantized layers (overheads included)")
    return EXIT_OK


def cmd_sense(args) -> int:
    from bitfront.paths import check_writable, run_dir

    setup = _setup(args)  # bad flags fail before the model loads
    directory = Path(args.out) if args.out else run_dir("sense", args.model)
    check_writable(directory)
    lm = _load(args)
    sens = bitfront.sensitivity(lm, setup, mbpp=_mbpp(args))
    json_path, csv_path = sens.save(directory)
    bits = sorted(setup.quantizer.bits)
    rows = [[str(rank), "-" if row.block is None else str(row.block), row.kind,
             f"{row.trace:.3g}", *(f"{sens.omega(row.layer, b):.2g}" for b in bits),
             f"{row.gptq_loss:.2g}"] for rank, row in enumerate(sens.ranked(bits[0])[:args.top], 1)]
    _table(f"HAWQ sensitivity of {lm.name}, ranked by Ω at {bits[0]} bits",
           ("#", "block", "layer", "Tr(H)", *(f"Ω@{b}" for b in bits), f"GPTQ@{bits[0]}"), rows,
           left=("layer",))
    out.print(f"wrote {csv_path} and {json_path}", soft_wrap=True)
    return EXIT_OK


def _eval_config(args):
    from bitfront.evaluators.harness import EvalConfig
    from bitfront.flags import config_from_flags

    return config_from_flags(EvalConfig, args, bench=args.bench)


def cmd_eval(args) -> int:
    from bitfront.paths import run_dir
    from bitfront.space.plan import BitPlan

    config = _eval_config(args)
    llama = args.runtime == "llama.cpp"
    if llama and (given := [f"--{f}" for f in ("device", "dtype", "attn") if getattr(args, f)]):
        raise BitfrontError(f"{', '.join(given)}: torch settings; llama.cpp runs the GGUF's "
                            "own tensor types on the CPU")
    lm = args.model if llama else _load(args)  # llama.cpp loads the file itself
    plan = BitPlan.load(Path(args.plan)) if args.plan else None
    tag = (plan.meta.get("name") or Path(args.plan).stem) if plan else (
        "llama.cpp" if llama else "16bit")
    out_path = Path(args.out) if args.out else run_dir("eval", args.model) / (
        f"{args.bench}-{tag}.json")
    report = bitfront.evaluate(lm, config, plan=plan, out=out_path, mbpp=_mbpp(args),
                               runtime=args.runtime)
    scores = ", ".join(f"{k} {report[k]:.1%} [{report[k + '_interval'][0]:.1%}, "
                       f"{report[k + '_interval'][1]:.1%}]" for k in report
                       if k.startswith("pass@") and not k.endswith("_interval"))
    out.print(f"{report['model']} on {args.bench} ({report['tasks']} tasks, "
              f"{report['style']} prompts{', plan ' + tag if plan else ''}): {scores}")
    out.print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(report["outcomes"].items())))
    out.print(f"wrote {out_path}", soft_wrap=True)
    return EXIT_OK


def cmd_fidelity(args) -> int:
    from bitfront.objectives.fidelity import measure_fidelity, sample_plans
    from bitfront.objectives.proxy import AccuracyProxy
    from bitfront.paths import run_dir
    from bitfront.space.plan import BitPlan

    setup = _setup(args)  # bad flags fail before the model loads
    lm = _load(args)
    candidates = bitfront.build_candidates(lm, setup, mbpp=_mbpp(args))
    proxy = AccuracyProxy(lm, setup.proxy, mbpp_source=_mbpp(args))
    config = _eval_config(args)
    plans = sample_plans(candidates, lm.fingerprint(), mixed=args.mixed, seed=config.seed)
    plans += [BitPlan.load(Path(p)) for p in args.plans]
    directory = Path(args.out) if args.out else run_dir("fidelity", args.model)
    result = measure_fidelity(lm, candidates, plans, proxy, config, directory,
                              mbpp_source=_mbpp(args))
    _table(f"proxy fidelity of {lm.name} on {args.bench}",
           ("plan", "avg bits", "top-1 retention", "likelihood retention", "KL retention",
            "pass@1"),
           [[r["plan"], f"{r['avg_bits']:.2f}", f"{r['proxy_retention']:.3f}",
             f"{r['logprob_retention']:.3f}", f"{r['kl_retention']:.3f}",
             f"{r['pass@1']:.1%}"] for r in result.rows],
           left=("plan",))
    _table(f"rank correlation with pass@1 (95% bootstrap intervals over {len(result.rows)} "
           "plans)", ("proxy", "Kendall τ", "Spearman ρ", "note"),
           [[name, str(c.kendall_tau or "-"), str(c.spearman_rho or "-"), c.note]
            for name, c in result.proxies.items()], left=("proxy", "note"))
    if best := result.best():
        out.print(f"ranks plans best: {best} (the highest Kendall τ)")
    path = directory / "fidelity.json"
    path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    out.print(f"wrote {path}", soft_wrap=True)
    return EXIT_OK


def _print_front(summary: dict) -> None:
    from bitfront.units import format_bytes

    rows = [[str(r["trial"]), r["origin"], f"{r['retention']:.4f}" + (
                 f" [{r['retention_low']:.3f}, {r['retention_high']:.3f}]"
                 if "retention_low" in r else ""),
             format_bytes(r["memory_bytes"]), f"{r['avg_bits']:.2f}",
             f"{r['latency_s']:.4g}" if "latency_s" in r else "-",
             "knee" if r["trial"] == summary["knee"] else ""] for r in summary["front"]]
    _table(f"Pareto front of {summary['study']} ({summary['trials']} trials, "
           f"{summary['feasible']} feasible)",
           ("trial", "origin", "retention [95% CI]", "memory", "avg bits", "latency s", ""), rows,
           left=("origin", ""))
    for requeued in summary["requeued_seeds"]:
        out.print(f"note: seed {requeued['origin']} ran again after its worker died (after "
                  f"{requeued['after_completed']} completed trials); the front can differ "
                  "from an uninterrupted search's")
    if summary["unfinished_trials"]:
        out.print(f"note: trial(s) {', '.join(map(str, summary['unfinished_trials']))} did not "
                  "finish (a killed worker's, or failed) and are not part of the front")
    ref = summary["reference"]
    out.print(f"hypervolume {summary['hypervolume']:.4f} (normalised; reference: retention 0, "
              f"memory {format_bytes(ref['memory'])}"
              + (f", latency {ref['latency']:.4g} s)" if ref["latency"] else ")"))


def cmd_search(args) -> int:
    from bitfront.flags import config_from_flags
    from bitfront.paths import default_storage, run_dir
    from bitfront.planner.refine import RefineConfig
    from bitfront.planner.study import SearchConfig

    config, setup = config_from_flags(SearchConfig, args), _setup(args)
    refine = config_from_flags(RefineConfig, args, prefix="refine-")
    lm = _load(args)
    name = args.study_name or run_dir("search", args.model).name
    storage = args.storage or default_storage(name)
    result = bitfront.search(lm, config, setup,
                             storage=storage, study_name=name, worker=args.worker,
                             mbpp=_mbpp(args), record=run_dir("search", name), refine=refine,
                             show_progress=not args.json)
    summary = result.summary()
    if config.memory_budget is not None or config.latency_budget is not None:
        best = bitfront.best_under(result, memory=config.memory_budget,
                                   latency=config.latency_budget, refine=refine, lm=lm,
                                   show_progress=not args.json)
        summary["best_under_budget"] = {"trial": best.point.number, **best.to_dict()}
    path = run_dir("search", name) / "front.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_front(summary)
        if best_note := summary.get("best_under_budget"):
            out.print(f"best under the budget: trial {best_note['trial']} ({best_note['how']}: "
                      f"{best_note['note']})")
        out.print(f"study {name!r} in {storage}; front written to {path}", soft_wrap=True)
    return EXIT_OK


def _answer(args, result, memory: str | None, latency: str | None):
    """The best plan under the budgets, searched at them (planner/refine.py)."""
    from bitfront.flags import config_from_flags
    from bitfront.planner.refine import RefineConfig

    refine = config_from_flags(RefineConfig, args, prefix="refine-")
    return bitfront.best_under(result, memory=memory, latency=latency, refine=refine,
                               device=args.device, mbpp=_mbpp(args),
                               show_progress=not args.json)


def _result(args):
    from bitfront.planner.front import SearchResult
    from bitfront.planner.study import locate_study

    return SearchResult.of(*locate_study(args.study, args.storage))


def cmd_best(args) -> int:
    from bitfront.units import format_bytes

    result = _result(args)
    try:
        answer = _answer(args, result, args.memory, args.latency)
    except bitfront.NoPlanError as exc:
        if args.json:
            sys.stdout.write(json.dumps({"found": False, "message": str(exc)}) + "\n")
        else:
            out.print(str(exc))
        return EXIT_NO_PLAN
    point = answer.point
    plan, m = result.plan(point), point.metrics
    if args.json:
        sys.stdout.write(json.dumps({"found": True, "trial": point.number,
                                     "origin": point.origin, "answer": answer.to_dict(),
                                     "metrics": m.to_dict(), "plan": plan.to_dict()}) + "\n")
        return EXIT_OK
    interval = (f" [{m.retention_low:.3f}, {m.retention_high:.3f}]"
                if m.retention_low is not None else "")
    out.print(f"trial {point.number} ({point.origin}): retention {m.retention:.4f}{interval}, "
              f"memory {format_bytes(m.memory_bytes)} ({m.avg_bits:.2f} bits/weight)"
              + (f", latency {m.latency_s:.4g} s/sample" if m.latency_s is not None else ""))
    out.print(f"{answer.how}: {answer.note}")
    counts: dict[int, int] = {}
    for bits in plan.bits().values():
        counts[bits] = counts.get(bits, 0) + 1
    out.print("layers by bitwidth: " + ", ".join(f"{b}-bit {n}" for b, n in sorted(
        counts.items())))
    return EXIT_OK


def cmd_export(args) -> int:
    import tempfile

    from bitfront.exports.files import MODEL_FORMATS, check_target

    result = _result(args)
    if args.trial is None and args.best_under is None:
        raise BitfrontError("choose the plan: --trial N or --best-under SIZE")
    for target in (args.out, args.checkpoint):  # before any work, not after it
        if target:
            check_target(Path(target))
    if args.trial is not None:
        point = next((p for p in result.points if p.number == args.trial), None)
        if point is None:
            raise BitfrontError(f"trial {args.trial} is not a completed trial of the study")
    else:
        try:
            answer = _answer(args, result, args.best_under, None)
        except bitfront.NoPlanError as exc:
            err.print(str(exc))
            return EXIT_NO_PLAN
        point = answer.point
        err.print(f"trial {point.number} ({point.origin}), {answer.how}: {answer.note}")
    model_files = args.format in MODEL_FORMATS
    if model_files and not args.out:
        raise BitfrontError(f"--format {args.format} writes model files: give --out PATH")
    lm = None
    if model_files or args.checkpoint:
        lm = _load(args, args.model or result.config["model_name"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.out) if args.out else Path(tmp) / "export"
        bitfront.export((result, point), args.format, path, lm=lm)
        payload = None if model_files else path.read_text().rstrip("\n")
    if args.checkpoint:
        from bitfront.exports.gptq import write_gptq_checkpoint
        from bitfront.quant.apply import candidates_for_plan

        plan = result.plan(point)
        write_gptq_checkpoint(lm, plan, candidates_for_plan(lm, plan), Path(args.checkpoint))
    if args.json:
        sys.stdout.write(json.dumps({"trial": point.number, "format": args.format,
                                     "out": args.out, "checkpoint": args.checkpoint,
                                     "content": payload if not args.out else None}) + "\n")
        return EXIT_OK
    if args.out:
        out.print(f"wrote {args.format} export of trial {point.number} to {args.out}",
                  soft_wrap=True)
        if args.format == "gguf":
            from bitfront.exports.gguf import summary

            for line in summary(Path(args.out)):
                out.print(line, soft_wrap=True)
    else:
        sys.stdout.write(payload + "\n")
    if args.checkpoint:
        out.print(f"wrote GPTQ checkpoint to {args.checkpoint}", soft_wrap=True)
    return EXIT_OK


def cmd_dashboard(args) -> int:
    from bitfront.planner.study import open_storage, resolve_study

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
    from bitfront.units import format_bytes

    report = json.loads((run_dir / "report.json").read_text())
    rows = []
    for label, m in report["models"].items():
        uniform = {u["bits"]: u for u in m["uniform"]}
        chain = " → ".join(f"{uniform[b]['retention']:.3f}" for b in (16, 4, 2) if b in uniform)
        knee = next((v for v in m["verified"] if v["trial"] == m["knee"]), None)
        rows.append([label, m["model"]["family"], chain, f"{len(m['front'])} plans",
                     f"{m['hypervolume']:.4f}", "-" if knee is None else
                     f"{knee['retention']:.3f} at {format_bytes(knee['memory_bytes'])}"])
    _table(f"study {report['study']}", ("model", "family", "16-bit → 4-bit → 2-bit retention",
                                        "front", "hypervolume", "knee"), rows,
           left=("model", "family"))
    for sentence in report["findings"]:
        out.print(sentence, soft_wrap=True)
    out.print(f"report: {run_dir / 'report.md'}", soft_wrap=True)


def cmd_study_run(args) -> int:
    from bitfront.studies.spec import finished, load_spec

    spec = load_spec(args.spec)
    if not finished(spec, Path(args.runs)):  # a finished study is only summarised, instantly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        bitfront.run_study(spec, args.runs)
    _study_summary(Path(args.runs) / spec.name)
    return EXIT_OK


def cmd_compare(args) -> int:
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
    rows = []
    for run in (a, b):
        r, knee = result[run.label], result[run.label]["knee"]
        rows.append([run.label, str(r["trials"]), str(r["front_size"]),
                     f"{r['hypervolume']:.4f}", "-" if knee is None else
                     f"{knee[run.accuracy_key]:.3f} at {format_bytes(knee['memory_bytes'])}",
                     *("-" if v is None else f"{v:.4f}" for v in r["best_at"].values())])
    _table(f"{a.label} vs {b.label}", ("run", "trials", "front", "hypervolume", "knee",
                                       *(f"best ≤ {format_bytes(x)}" for x in budgets)),
           rows, left=("run",))
    gap = result["retention_gap_memory"]
    if gap["mean_gap"] is not None:
        out.print(f"mean retention gap {a.label} − {b.label} over the common memory range: "
                  f"{gap['mean_gap']:+.4f} (absolute {gap['mean_abs_gap']:.4f})")
    out.print(f"wrote {directory / 'compare.json'} and plots", soft_wrap=True)
    return EXIT_OK


def cmd_demo(args) -> int:
    args.spec = "pocket"
    return cmd_study_run(args)


# --- parser ------------------------------------------------------------------------------

def _return_large_frees() -> None:
    """glibc: serve allocations of 4 MiB and more by mmap, so that freeing them returns the
    memory (in `sense` on SmolLM2-135M its default heap held 0.6 GiB above the live tensors),
    at the price of page faults on each. A process setting, so only the command line makes
    it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)  # -3: M_MMAP_THRESHOLD


def main(argv: list[str] | None = None) -> int:
    from bitfront.cli_parser import build

    argv = sys.argv[1:] if argv is None else argv
    parser = build(sys.modules[__name__], argv)
    args = parser.parse_args(argv)
    run: Callable | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return EXIT_USAGE
    _return_large_frees()
    try:
        return run(args)
    except BitfrontError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_NO_PLAN if isinstance(exc, bitfront.NoPlanError) else EXIT_ERROR
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception:  # a bug in bitfront, not the user's input
        traceback.print_exc()
        err.print(f"this is a bug in bitfront {bitfront.__version__}; please report it with "
                  "the traceback above", markup=False, highlight=False, soft_wrap=True)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
