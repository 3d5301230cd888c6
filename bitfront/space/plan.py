"""`QuantSpec` and `BitPlan`: the per-layer choice the search makes, as JSON with a schema."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bitfront.errors import PlanError
from bitfront.space.layers import LayerSpace

SCHEMA = 1
PLAN_BITS = (2, 3, 4, 8, 16)  # 16 = left in 16-bit


@dataclass(frozen=True)
class QuantSpec:
    """How one layer is stored: `bits` ∈ {2, 3, 4, 8, 16}, group size (-1 = per output
    channel) and symmetric or asymmetric (default) quantization."""

    bits: int
    group_size: int = 128
    sym: bool = False

    def __post_init__(self):
        if self.bits not in PLAN_BITS:
            raise PlanError(f"unsupported bitwidth {self.bits}; choose from {PLAN_BITS}")
        if self.group_size != -1 and self.group_size <= 0:
            raise PlanError(f"group size must be positive or -1, got {self.group_size}")

    @property
    def quantized(self) -> bool:
        return self.bits != 16


@dataclass
class BitPlan:
    """A bitwidth for every quantizable layer of one model (identified by its fingerprint)."""

    model: str  # model fingerprint
    specs: dict[str, QuantSpec]
    meta: dict = field(default_factory=dict)  # free-form provenance (origin, trial, ...)

    @classmethod
    def uniform(cls, space: LayerSpace, model: str, bits: int, group_size: int = 128,
                sym: bool = False, **meta) -> BitPlan:
        spec = QuantSpec(bits, group_size, sym)
        return cls(model=model, specs=dict.fromkeys(space.names(), spec), meta=meta)

    @classmethod
    def from_bits(cls, model: str, bits: dict[str, int], group_size: int = 128,
                  sym: bool = False, **meta) -> BitPlan:
        return cls(model=model, specs={n: QuantSpec(b, group_size, sym) for n, b in bits.items()},
                   meta=meta)

    def bits(self) -> dict[str, int]:
        return {name: spec.bits for name, spec in self.specs.items()}

    def validate(self, space: LayerSpace, model: str | None = None) -> None:
        """Raise `PlanError` unless the plan covers exactly the layers of `space` (and, when
        given, was made for model fingerprint `model`)."""
        names = set(space.names())
        unknown = [n for n in self.specs if n not in names]
        missing = [n for n in space.names() if n not in self.specs]
        if unknown:
            raise PlanError(f"plan names {len(unknown)} layers the model does not have, e.g. "
                            f"{unknown[0]!r}")
        if missing:
            raise PlanError(f"plan leaves {len(missing)} quantizable layers without a spec, "
                            f"e.g. {missing[0]!r}")
        if model is not None and self.model != model:
            raise PlanError(f"plan was made for model {self.model}, this model is {model} "
                            "(another checkpoint, or the same one loaded in another dtype: "
                            "see --dtype)")

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "meta": self.meta,
                "layers": {name: asdict(spec) for name, spec in self.specs.items()}}

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> BitPlan:
        if not isinstance(data, dict):
            raise PlanError(f"{source}: a plan is a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise PlanError(f"{source}: unsupported plan schema {data.get('schema')!r} "
                            f"(this bitfront reads schema {SCHEMA})")
        specs = {}
        try:
            for name, spec in data["layers"].items():
                try:
                    specs[name] = QuantSpec(**spec)
                except PlanError as exc:
                    raise PlanError(f"{source}: layer {name}: {exc}") from exc
            return cls(model=data["model"], specs=specs, meta=data.get("meta", {}))
        except (AttributeError, KeyError, TypeError) as exc:
            raise PlanError(f"{source}: malformed plan ({exc})") from exc

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> BitPlan:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise PlanError(f"plan file not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise PlanError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
        return cls.from_dict(data, str(path))
