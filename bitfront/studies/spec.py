"""Study specs: one TOML file names the question (which models, which knobs) and the runner
answers it. Every key is checked: an unknown key, a wrong type or a bad value is an error that
names the file and the key.

A spec is a `StudySpec`: a composition of the same config dataclasses the command line and
the Python API build (bitfront/config.py). Sections: `models` (label = model name, e.g.
diffusion = "pocket-diffusion"), `quantizer`, `space`, `calibration`, `sensitivity`, `proxy`,
`latency`, `search`, `evaluation` (with `evaluation.diffusion`), `verify`, `refine`,
`report`; see studies/pocket.toml for every key.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from bitfront.config import Config, ConfigError, setting
from bitfront.errors import BitfrontError
from bitfront.evaluators.harness import BENCHES, EvalConfig
from bitfront.paths import read_cached
from bitfront.planner.pipeline import Setup
from bitfront.planner.refine import RefineConfig
from bitfront.planner.study import SearchConfig
from bitfront.units import parse_bytes


class SpecError(BitfrontError):
    """A study spec that cannot be used as written."""


@dataclass(frozen=True)
class VerifyConfig(Config):
    """Which plans get full pass@1, on which benchmarks."""

    benches: tuple[str, ...] = setting(("mbpp", "humaneval"), "benchmarks for full pass@1 "
                                       "(the first one also for the fidelity table)")
    limits: dict[str, int] = setting(factory=dict, help="tasks per benchmark, where not "
                                                        "evaluation.limit")
    uniform_bits: tuple[int, ...] = setting((16, 8, 4, 3, 2), "uniform plans in the table")
    front: int = setting(4, "front plans verified with full pass@1 (the knee first)")
    mixed: int = setting(8, "random mixed plans over the memory range, verified on the "
                            "first benchmark for the proxy's fidelity table")
    equal_memory_limit: int | None = setting(None, "tasks of the first benchmark for the "
                                                   "mixed-vs-uniform table (default: all)")

    def __post_init__(self):
        self.require(bool(self.benches) and set(self.benches) <= set(BENCHES), "benches",
                     f"from {BENCHES}")
        self.require(set(self.limits) <= set(self.benches)
                     and all(n > 0 for n in self.limits.values()), "limits",
                     "positive task counts of benchmarks in benches")
        self.require(set(self.uniform_bits) <= {2, 3, 4, 8, 16}, "uniform_bits",
                     "bits from 2, 3, 4, 8, 16")
        self.require(self.front >= 0, "front", "a number ≥ 0")
        self.require(self.mixed >= 0, "mixed", "a number ≥ 0")
        self.require(self.equal_memory_limit is None or self.equal_memory_limit > 0,
                     "equal_memory_limit", "a positive task count")


@dataclass(frozen=True)
class ReportConfig(Config):
    budgets: tuple[int, ...] = setting((), "memory budgets for the finding and the "
                                           "mixed-vs-uniform table, each answered by a "
                                           "refinement there (default: the uniform 3-bit size "
                                           "and halfway down to 2-bit)",
                                       parse=parse_bytes)


@dataclass(frozen=True)
class StudySpec(Setup):
    """A whole study: the `Setup` sections (quantizer, space, calibration, sensitivity, proxy,
    latency), the models, the search, and what to verify and report."""

    name: str = setting("", "the study's name (its run directory)")
    models: dict[str, str] = setting(factory=dict, help="label = model name")
    description: str = setting("", "one sentence: the question the study answers")
    device: str = setting("", 'empty (cuda if available, else cpu), "cpu", "cuda" or "cuda:N"')
    mbpp: str = setting("", "MBPP source (empty: $BITFRONT_MBPP or the vendored copy)")
    storage: str = setting("", "Optuna storage URL (empty: a SQLite file per model)")
    search: SearchConfig = setting(factory=SearchConfig)
    evaluation: EvalConfig = setting(factory=EvalConfig)
    verify: VerifyConfig = setting(factory=VerifyConfig)
    refine: RefineConfig = setting(factory=RefineConfig)
    report: ReportConfig = setting(factory=ReportConfig)

    def __post_init__(self):
        self.require(bool(self.name), "name", "a non-empty string")
        self.require(bool(self.models) and all(self.models.values()), "models",
                     'a table of label = "model name"')
        self.require(self.device in ("", "cpu", "cuda") or self.device.startswith("cuda:"),
                     "device", 'empty (automatic), "cpu", "cuda" or "cuda:N"')
        self.require(set(self.search.choices) - {16} <= set(self.quantizer.bits),
                     "search", "choices among 16 and quantizer.bits")
        self.require(set(self.verify.uniform_bits) <= set(self.search.choices) | {16},
                     "verify", "uniform_bits among search.choices and 16")

    @property
    def setup(self) -> Setup:
        """The `Setup` sections alone (a study spec is a `Setup` with more sections)."""
        return Setup(**{f.name: getattr(self, f.name) for f in fields(Setup)})

    def digest(self, *keys: str, leave_out: tuple[str, ...] = ()) -> str:
        """A hash of the named sections or keys ("search", "verify.front"), without the
        `leave_out` keys: stage outputs and run names remember it."""
        data = self.to_dict()
        picked = {}
        for key in keys:
            section, _, name = key.partition(".")
            picked[key] = data[section][name] if name else data[section]
        for key in leave_out:
            section, _, name = key.partition(".")
            picked[section] = {k: v for k, v in picked[section].items() if k != name}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]


def parse_spec(data: dict, source: str = "spec") -> StudySpec:
    """A `StudySpec` from parsed TOML, every key and value checked."""
    try:
        return StudySpec.from_dict(data)
    except ConfigError as exc:
        raise SpecError(f"{source}: {exc}") from None


def bundled_specs() -> dict[str, Path]:
    """The specs shipped with bitfront, by name (file stem)."""
    folder = resources.files("bitfront.studies")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir()
            if str(f).endswith(".toml")}


def load_spec(path_or_name: str | Path) -> StudySpec:
    """A spec from a TOML file, or one of the bundled specs by name (e.g. `pocket`)."""
    path = Path(path_or_name)
    if not path.exists():
        bundled = bundled_specs()
        if str(path_or_name) not in bundled:
            raise SpecError(f"no study spec {str(path_or_name)!r}: give a .toml file or one "
                            f"of {sorted(bundled)}")
        path = bundled[str(path_or_name)]
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from exc
    return parse_spec(data, str(path))


# Stages of a model's run and the spec sections (or keys) each depends on; their outputs are
# keyed by model, these and STAGE_FORMAT, which changes when a stage's output does.
STAGE_FORMAT = 7
SETUP_KEYS = ("device", "mbpp", "quantizer", "space", "calibration", "sensitivity", "proxy",
              "latency")
ANSWERED = (*SETUP_KEYS, "search", "evaluation", "verify", "refine", "report")
STAGES: dict[str, tuple[str, ...]] = {
    "model": (),
    "sensitivity": (*SETUP_KEYS, "search.ilp_budgets"),
    "uniform": (*SETUP_KEYS, "search", "evaluation", "verify"),
    "search": (*SETUP_KEYS, "search"),
    "answers": ANSWERED,  # refinement at the report's budgets (trials join the search)
    "verified": ANSWERED,
    "exports": ANSWERED,
    "mixed": (*SETUP_KEYS, "search.seed", "evaluation", "verify"),
}


def stage_key(spec: StudySpec, model: str, stage: str) -> str:
    return f"{model}:{spec.digest(*STAGES[stage])}:v{STAGE_FORMAT}"


def finished(spec: StudySpec, root: Path) -> bool:
    """Whether every stage of every model is stored with its current key and the report is
    newer than all of them: then a re-run has nothing to do."""
    run_dir = root / spec.name
    report = run_dir / "report.json"
    if read_cached(report, lambda data: data["models"]) is None:  # absent or damaged
        return False
    for label, model in spec.models.items():
        for stage in STAGES:
            path = run_dir / label / f"{stage}.json"
            if not path.exists() or path.stat().st_mtime > report.stat().st_mtime:
                return False
            if read_cached(path, lambda data: data["key"]) != stage_key(spec, model, stage):
                return False
    return True
