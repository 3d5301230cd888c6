"""The `bitfront` argument parser: one subcommand per verb of cli.py. Settings flags are made
from the config dataclasses (bitfront/flags.py); only flags that are not settings (model,
paths, output switches) are written here."""

from __future__ import annotations

import argparse

import bitfront
from bitfront.flags import add_config_flags, config_from_flags

MODEL_HELP = ("qwen3-1.7b, coda-1.7b, pocket-ar, pocket-diffusion (-micro), a local directory, "
              "a .gguf file or a hub id")
MBPP_HELP = ("MBPP directory or file (default: $BITFRONT_MBPP, else the vendored copy; 'hub' "
             "for the Hugging Face dataset)")


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: bf16 on CUDA)")
    p.add_argument("--attn", choices=["flash", "sdpa", "eager"],
                   help="attention backend (default flash: flash-attn or SDPA flash on CUDA, "
                        "SDPA on CPU)")


def setup_flags() -> dict:
    """The parts of `search.pipeline.Setup`: field -> (config, flag prefix, group title).
    (Imported here, when a verb that has settings is parsed: `bitfront --help` stays fast.)"""
    from bitfront.objectives.latency import Workload
    from bitfront.objectives.proxy import ProxyConfig
    from bitfront.objectives.sensitivity import SensitivityConfig
    from bitfront.quant.calibration import CalibrationConfig
    from bitfront.quant.candidates import QuantizerSettings
    from bitfront.space.layers import SpaceConfig

    candidates = "candidates (GPTQ at every bitwidth, cached)"
    return {"quantizer": (QuantizerSettings, "", candidates),
            "space": (SpaceConfig, "", candidates),
            "calibration": (CalibrationConfig, "calib-", "calibration"),
            "sensitivity": (SensitivityConfig, "", "sensitivity (HAWQ traces)"),
            "proxy": (ProxyConfig, "proxy-", "accuracy proxy"),
            "latency": (Workload, "", "latency table")}


class _Parser(argparse.ArgumentParser):
    """Usage errors (a flag's value that cannot be read, "12XB" as a size) in one line, exit
    code 2; `--help` lists the flags."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Unused(argparse.ArgumentParser):
    """Collects the flags of a verb that is not being parsed (no settings imported)."""


def _setup(p: argparse.ArgumentParser, *parts: str) -> None:
    """Flags for candidates and calibration, and for the other `Setup` parts a verb uses."""
    if isinstance(p, _Unused):
        return
    table = setup_flags()
    for part in ("quantizer", "space", "calibration", *parts):
        cls, prefix, title = table[part]
        add_config_flags(p, cls, prefix=prefix, title=title)
    p.add_argument("--mbpp", help=MBPP_HELP)


def setup_from_flags(args: argparse.Namespace):
    """The `Setup` the flags describe (parts a verb has no flags for keep their defaults)."""
    from bitfront.planner.pipeline import Setup

    return Setup(**{part: config_from_flags(cls, args, prefix=prefix)
                    for part, (cls, prefix, _) in setup_flags().items()})


def _evaluation(p: argparse.ArgumentParser, **bench) -> None:
    if isinstance(p, _Unused):
        return
    from bitfront.evaluators.harness import BENCHES, EvalConfig

    p.add_argument("--bench", choices=BENCHES, **bench)
    add_config_flags(p, EvalConfig, skip=("bench",), title="evaluation")


def _study(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="a search run directory (runs/search/NAME, runs/STUDY/MODEL) "
                                 "or a study name (with --storage)")
    p.add_argument("--storage", help="the study's Optuna storage URL or journal file")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _refine(p: argparse.ArgumentParser) -> None:
    """Flags of the refinement that answers a budget question."""
    if isinstance(p, _Unused):
        return
    from bitfront.planner.refine import RefineConfig

    add_config_flags(p, RefineConfig, prefix="refine-",
                     title="refinement at the budget (searched there, recorded in the study)")


def _refining(p: argparse.ArgumentParser) -> None:
    """What a verb that answers a budget question needs to search at the budget."""
    p.add_argument("--device", help="device the study's model runs on while refining")
    p.add_argument("--mbpp", help=MBPP_HELP)
    _refine(p)


def build(cli, argv: list[str]) -> argparse.ArgumentParser:
    """The parser; each verb's `run` is the matching `cmd_*` function of module `cli`. Only
    the verb named in `argv` gets its settings flags (they import torch)."""
    named = next((a for a in argv if not a.startswith("-")), None)
    parser = _Parser(
        prog="bitfront", description="Pareto-optimal per-layer bit plans for diffusion and "
                                     "autoregressive code LLMs.")
    parser.add_argument("--version", action="version", version=f"bitfront {bitfront.__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, help: str, run, parent=verbs) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help)
        p.set_defaults(run=run)
        return p if name == named or parent is not verbs else _Unused()

    pocket = verbs.add_parser("pocket", help="the offline pocket pair")
    actions = pocket.add_subparsers(dest="pocket_verb", metavar="ACTION", required=True)
    p = verb("train", "train the pocket AR + diffusion pair", cli.cmd_pocket_train, actions)
    p.add_argument("--size", choices=["default", "micro"], default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--mbpp", help=MBPP_HELP)

    p = verb("generate", "does this model load and write code?", cli.cmd_generate)
    _model(p)
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat", action="store_true", help="never apply a chat template")
    p.add_argument("--echo", action="store_true", help="print the prompt before the answer")
    if named == "generate":
        from bitfront.models.diffusion_sampling import DiffusionOptions

        add_config_flags(p, DiffusionOptions, title="diffusion sampling")

    p = verb("quantize", "uniform GPTQ plan + candidate cache", cli.cmd_quantize)
    _model(p)
    p.add_argument("--bits", type=int, required=True, help="the plan's uniform bitwidth")
    p.add_argument("--out", help="plan file (default runs/quantize/MODEL/plan-Bbit.json)")
    _setup(p)

    p = verb("sense", "which layers are sensitive (HAWQ table)?", cli.cmd_sense)
    _model(p)
    p.add_argument("--top", type=int, default=20, help="rows to print")
    p.add_argument("--out", help="directory for sensitivity.csv/.json (default runs/sense/MODEL)")
    _setup(p, "sensitivity")

    p = verb("eval", "full pass@k through the sandbox", cli.cmd_eval)
    _model(p)
    p.add_argument("--plan", help="a bit plan (JSON) to apply first")
    p.add_argument("--out", help="report file (default runs/eval/MODEL/BENCH-PLAN.json); "
                                 "re-running resumes it")
    p.add_argument("--mbpp", help=MBPP_HELP)
    if named == "eval":
        from bitfront.runtimes.llama_lm import EVAL_RUNTIMES

        p.add_argument("--runtime", choices=EVAL_RUNTIMES, default="torch",
                       help="what writes the answers: torch (bitfront's model), or llama.cpp "
                            "(a .gguf file as llama.cpp runs it; needs bitfront[llama])")
    _evaluation(p, required=True)

    p = verb("fidelity", "does the proxy rank plans like pass@1?", cli.cmd_fidelity)
    _model(p)
    p.add_argument("--mixed", type=int, default=3, help="random mixed plans to add")
    p.add_argument("--plans", nargs="*", default=[], help="more plan files to include")
    p.add_argument("--out", help="directory (default runs/fidelity/MODEL)")
    _evaluation(p, default="mbpp")
    _setup(p, "proxy")

    p = verb("search", "the Pareto front of bit plans", cli.cmd_search)
    _model(p)
    p.add_argument("--storage", help="Optuna storage: sqlite:///..., postgresql://..., or a "
                                     "journal file (default runs/search/NAME/study.db)")
    p.add_argument("--study-name", help="default: the model's name")
    p.add_argument("--worker", type=int, default=0,
                   help="index of this worker when several share one study")
    p.add_argument("--json", action="store_true", help="print the front as one JSON line")
    if named == "search":
        from bitfront.planner.study import SearchConfig

        add_config_flags(p, SearchConfig, title="search")
    _setup(p, "sensitivity", "proxy", "latency")
    _refine(p)

    p = verb("best", "the best plan under my budget", cli.cmd_best)
    _study(p)
    p.add_argument("--memory", help="e.g. 1.2GiB")
    p.add_argument("--latency", help="e.g. 0.5s")
    _refining(p)

    p = verb("export", "files for deployment", cli.cmd_export)
    _study(p)
    p.add_argument("--trial", type=int)
    p.add_argument("--best-under", help="the best plan under this memory, e.g. 1.2GiB")
    if named == "export":
        from bitfront.exports.files import FORMATS

        p.add_argument("--format", choices=FORMATS, default="json")
    p.add_argument("--out", help="file (or, for compressed-tensors, model directory) to write "
                                 "(default: stdout); gguf also writes OUT.json, what llama.cpp "
                                 "wrote")
    p.add_argument("--checkpoint", help="also write a quantized checkpoint (GPTQ layout) to "
                                        "this directory")
    p.add_argument("--model", help="model to quantize for --checkpoint (default: the study's)")
    p.add_argument("--dtype")
    _refining(p)

    p = verb("dashboard", "optuna-dashboard on a study's storage", cli.cmd_dashboard)
    _study(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)

    study = verbs.add_parser("study", help="ready-made studies and their reports")
    actions = study.add_subparsers(dest="study_verb", metavar="ACTION", required=True)
    p = verb("run", "run (or resume) a study spec", cli.cmd_study_run, actions)
    p.add_argument("spec", help="a study TOML file, or a bundled one: pocket, coda-vs-qwen3")
    p.add_argument("--runs", default="runs", help="where run directories go")

    p = verb("compare", "frontier shapes of two runs", cli.cmd_compare)
    p.add_argument("run_a", help="runs/STUDY/MODEL or runs/search/NAME")
    p.add_argument("run_b")
    p.add_argument("--budgets", help="memory budgets, e.g. 2.5MiB,3MiB")
    p.add_argument("--out", help="directory for compare.json and plots")
    p.add_argument("--json", action="store_true")

    p = verb("demo", "the whole pipeline offline, pocket-sized", cli.cmd_demo)
    p.add_argument("--runs", default="runs", help="where run directories go")
    return parser
