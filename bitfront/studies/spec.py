"""Study specs: one TOML file names the question (which models, which knobs) and the runner
answers it. Every key is checked: an unknown key, a wrong type or a bad value is an error that
names the file and the key.

Sections: `models` (label = model name, e.g. diffusion = "pocket-diffusion"), `quantizer`,
`space`, `calibration`, `sensitivity`, `proxy`, `latency`, `search`, `evaluation`, `report`;
see studies/pocket.toml for every key with its default.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from bitfront.errors import BitfrontError


class SpecError(BitfrontError):
    """A study spec that cannot be used as written."""


@dataclass(frozen=True)
class QuantizerSpec:
    bits: list[int] = field(default_factory=lambda: [2, 3, 4, 8])
    group_size: int = 128
    sym: bool = False
    act_order: bool = False
    static_groups: bool = False
    percdamp: float = 0.01


@dataclass(frozen=True)
class SpaceSpec:
    grouping: str = "linear"
    include_head: bool = False
    include_embeddings: bool = False


@dataclass(frozen=True)
class CalibrationSpec:
    samples: int = 64
    seq_len: int = 256
    seed: int = 0
    mask_aware: bool = True


@dataclass(frozen=True)
class SensitivitySpec:
    probes: int = 4
    batches: int = 2
    method: str = "fd"


@dataclass(frozen=True)
class ProxySpec:
    tasks: int = 64
    seed: int = 0


@dataclass(frozen=True)
class LatencySpec:
    prompt_len: int = 128
    answer_len: int = 128
    steps: int = 0  # diffusion steps; 0: one per answer token
    dtype: str = "bfloat16"


@dataclass(frozen=True)
class SearchSpec:
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "memory", "latency"])
    accuracy: str = "top1"
    choices: list[int] = field(default_factory=lambda: [2, 3, 4, 8, 16])
    trials: int = 100
    sampler: str = "nsga2"
    population: int = 16
    seed: int = 0
    ilp_budgets: int = 6
    memory_budget: str = ""  # e.g. "1.2GiB"; empty: none
    latency_budget: str = ""  # e.g. "0.5s"; empty: none
    storage: str = ""  # empty: a SQLite file per model in the run directory


@dataclass(frozen=True)
class EvaluationSpec:
    benches: list[str] = field(default_factory=lambda: ["mbpp", "humaneval"])
    limit: int = 0  # tasks per benchmark; 0: all
    uniform_bits: list[int] = field(default_factory=lambda: [16, 8, 4, 3, 2])
    verify_front: int = 4  # front plans verified with full pass@1
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    timeout: float = 10.0
    diffusion_steps: int = 0  # 0: one per new token
    diffusion_alg: str = "entropy"
    mbpp: str = ""  # MBPP source; empty: $BITFRONT_MBPP or the vendored copy


@dataclass(frozen=True)
class ReportSpec:
    budgets: list[str] = field(default_factory=list)  # memory budgets for the finding


SECTIONS = {"quantizer": QuantizerSpec, "space": SpaceSpec, "calibration": CalibrationSpec,
            "sensitivity": SensitivitySpec, "proxy": ProxySpec, "latency": LatencySpec,
            "search": SearchSpec, "evaluation": EvaluationSpec, "report": ReportSpec}


@dataclass(frozen=True)
class StudySpec:
    name: str
    models: dict[str, str]  # label -> model name
    description: str = ""
    device: str = ""  # empty: cuda if available, else cpu
    quantizer: QuantizerSpec = field(default_factory=QuantizerSpec)
    space: SpaceSpec = field(default_factory=SpaceSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    sensitivity: SensitivitySpec = field(default_factory=SensitivitySpec)
    proxy: ProxySpec = field(default_factory=ProxySpec)
    latency: LatencySpec = field(default_factory=LatencySpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    report: ReportSpec = field(default_factory=ReportSpec)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self, *keys: str, leave_out: tuple[str, ...] = ()) -> str:
        """A hash of the named sections or keys ("search", "evaluation.mbpp"), without the
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


def _fits(value, default) -> bool:
    """Whether a TOML value has the type of a field's default (lists: of its items' type;
    an empty default list takes strings)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        want = (int, float) if isinstance(default, float) else (int,)
        return isinstance(value, want) and not isinstance(value, bool)
    if isinstance(default, list):
        item = default[0] if default else ""
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    return isinstance(value, type(default))


def _typed(section: str, cls, raw: dict, source: str):
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: [{section}] must be a table")
    known = {f.name for f in fields(cls)}
    defaults = cls()
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise SpecError(f"{source}: unknown key {section}.{key} (known: "
                            f"{', '.join(sorted(known))})")
        default = getattr(defaults, key)
        if not _fits(value, default):
            raise SpecError(f"{source}: {section}.{key} should be like {default!r}, "
                            f"got {value!r}")
        values[key] = float(value) if isinstance(default, float) else value
    return cls(**values)


def parse_spec(data: dict, source: str = "spec") -> StudySpec:
    """A `StudySpec` from parsed TOML, every key and value checked."""
    top = {"name", "description", "device", "models", *SECTIONS}
    for key in data:
        if key not in top:
            raise SpecError(f"{source}: unknown key {key} (known: {', '.join(sorted(top))})")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise SpecError(f"{source}: name must be a non-empty string")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise SpecError(f"{source}: models must be a table of label = \"model name\"")
    for label, model in models.items():
        if not isinstance(model, str) or not model:
            raise SpecError(f"{source}: models.{label} must be a model name, got {model!r}")
    spec = StudySpec(name=data["name"], models=dict(models),
                     description=str(data.get("description", "")),
                     device=str(data.get("device", "")),
                     **{s: _typed(s, cls, data.get(s, {}), source)
                        for s, cls in SECTIONS.items()})
    _check_values(spec, source)
    return spec


def _parses(parse, text: str) -> bool:
    try:
        parse(text)
    except BitfrontError:
        return False
    return True


def _check_values(spec: StudySpec, source: str) -> None:
    from bitfront.models.diffusion_sampling import ALGORITHMS
    from bitfront.space.layers import GROUPINGS
    from bitfront.units import parse_bytes, parse_seconds

    positive = {"calibration.samples": spec.calibration.samples,
                "calibration.seq_len": spec.calibration.seq_len,
                "sensitivity.probes": spec.sensitivity.probes,
                "sensitivity.batches": spec.sensitivity.batches,
                "proxy.tasks": spec.proxy.tasks, "latency.prompt_len": spec.latency.prompt_len,
                "latency.answer_len": spec.latency.answer_len,
                "search.trials": spec.search.trials, "search.population": spec.search.population,
                "evaluation.max_new_tokens": spec.evaluation.max_new_tokens,
                "evaluation.batch_size": spec.evaluation.batch_size,
                "evaluation.timeout": spec.evaluation.timeout}
    at_least_zero = {"latency.steps": spec.latency.steps,
                     "search.ilp_budgets": spec.search.ilp_budgets,
                     "evaluation.limit": spec.evaluation.limit,
                     "evaluation.verify_front": spec.evaluation.verify_front,
                     "evaluation.diffusion_steps": spec.evaluation.diffusion_steps,
                     "evaluation.temperature": spec.evaluation.temperature}
    checks = [
        *((key, value > 0, "a positive number") for key, value in positive.items()),
        *((key, value >= 0, "a number ≥ 0") for key, value in at_least_zero.items()),
        ("quantizer.group_size", spec.quantizer.group_size > 0
         or spec.quantizer.group_size == -1, "a positive number, or -1 for one group per row"),
        ("quantizer.percdamp", spec.quantizer.percdamp > 0, "a positive number"),
        ("evaluation.top_p", 0 < spec.evaluation.top_p <= 1, "in (0, 1]"),
        ("device", spec.device in ("", "cpu", "cuda") or spec.device.startswith("cuda:"),
         'empty (automatic), "cpu", "cuda" or "cuda:N"'),
        ("search.memory_budget", not spec.search.memory_budget
         or _parses(parse_bytes, spec.search.memory_budget), 'a size like "1.2GiB"'),
        ("search.latency_budget", not spec.search.latency_budget
         or _parses(parse_seconds, spec.search.latency_budget), 'a duration like "0.5s"'),
        ("report.budgets", all(_parses(parse_bytes, b) for b in spec.report.budgets),
         'sizes like "1.2GiB"'),
        ("quantizer.bits", set(spec.quantizer.bits) <= {2, 3, 4, 8}, "bits from 2, 3, 4, 8"),
        ("search.choices", set(spec.search.choices) <= {2, 3, 4, 8, 16}
         and set(spec.search.choices) - {16} <= set(spec.quantizer.bits),
         "bits among 16 and quantizer.bits"),
        ("evaluation.uniform_bits", set(spec.evaluation.uniform_bits)
         <= set(spec.search.choices) | {16}, "bits among search.choices and 16"),
        ("space.grouping", spec.space.grouping in GROUPINGS, f"one of {GROUPINGS}"),
        ("search.objectives", bool(spec.search.objectives) and set(spec.search.objectives)
         <= {"accuracy", "memory", "latency"}, "from accuracy, memory, latency"),
        ("search.sampler", spec.search.sampler in ("nsga2", "tpe"), "nsga2 or tpe"),
        ("search.accuracy", spec.search.accuracy in ("top1", "likelihood"),
         "top1 or likelihood"),
        ("evaluation.benches", set(spec.evaluation.benches) <= {"mbpp", "humaneval"},
         "from mbpp, humaneval"),
        ("sensitivity.method", spec.sensitivity.method in ("fd", "exact"), "fd or exact"),
        ("latency.dtype", spec.latency.dtype in ("bfloat16", "float16", "float32"),
         "bfloat16, float16 or float32"),
        ("evaluation.diffusion_alg", spec.evaluation.diffusion_alg in ALGORITHMS,
         f"one of {ALGORITHMS}"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise SpecError(f"{source}: {key} must be {expected}")


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
STAGE_FORMAT = 3
SETUP_KEYS = ("device", "quantizer", "space", "calibration", "sensitivity", "proxy", "latency",
              "evaluation.mbpp")
STAGES: dict[str, tuple[str, ...]] = {
    "model": (),
    "sensitivity": (*SETUP_KEYS, "search.ilp_budgets"),
    "uniform": (*SETUP_KEYS, "search", "evaluation"),
    "search": (*SETUP_KEYS, "search"),
    "verified": (*SETUP_KEYS, "search", "evaluation"),
    "exports": (*SETUP_KEYS, "search", "evaluation"),
}


def stage_key(spec: StudySpec, model: str, stage: str) -> str:
    return f"{model}:{spec.digest(*STAGES[stage])}:v{STAGE_FORMAT}"


def finished(spec: StudySpec, root: Path) -> bool:
    """Whether every stage of every model is stored with its current key and the report is
    newer than all of them: then a re-run has nothing to do."""
    run_dir = root / spec.name
    report = run_dir / "report.json"
    if not report.exists():
        return False
    for label, model in spec.models.items():
        for stage in STAGES:
            path = run_dir / label / f"{stage}.json"
            if not path.exists() or path.stat().st_mtime > report.stat().st_mtime:
                return False
            if json.loads(path.read_text()).get("key") != stage_key(spec, model, stage):
                return False
    return True
