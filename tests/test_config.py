"""One schema: configs from plain data, flags and JSON; packages without import cycles;
Optuna's private API where bitfront uses it."""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path

import optuna
import pytest

from bitfront.config import ConfigError
from bitfront.planner.pipeline import Setup
from bitfront.quant.candidates import QuantizerSettings
from bitfront.studies.spec import StudySpec

PACKAGE = Path(__file__).resolve().parent.parent / "bitfront"
# DESIGN.md's data flow, bottom to top; a package may import only from its own rank or below.
LAYERS = [{"errors", "config", "units", "paths", "progress", "stats"},
          {"kernels", "models", "space"}, {"data"}, {"quant"}, {"evaluators", "pocket"},
          {"objectives", "exports", "runtimes"}, {"planner"}, {"studies"}, {"api"},
          {"flags", "cli_parser", "cli", "__init__", "__main__"}]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def package_imports() -> dict[str, set[str]]:
    """Top-level bitfront package or module -> the ones it imports (at any depth)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        owner = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("bitfront."):
                    target = name.split(".")[1]
                    if target != owner:
                        graph.setdefault(owner, set()).add(target)
    return graph


def test_packages_import_down_the_data_flow_only():
    graph = package_imports()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if RANK[b] > RANK[a])
    assert not upward, upward
    # No cycles, also within a rank (e.g. evaluators <-> pocket).
    def reaches(start, goal, seen=()):
        return any(t == goal or (t not in seen and reaches(t, goal, (*seen, t)))
                   for t in graph.get(start, ()))
    assert not [p for p in graph if reaches(p, p)]


def test_spec_from_dict_names_the_bad_key_and_round_trips_as_json():
    good = {"name": "x", "models": {"ar": "pocket-ar-micro"},
            "quantizer": {"bits": [2, 4], "group_size": 64},
            "search": {"memory_budget": "2MiB", "choices": [2, 4, 16]},
            "evaluation": {"diffusion": {"steps": 8}}, "verify": {"uniform_bits": [16, 2]}}
    spec = StudySpec.from_dict(good)
    assert spec.quantizer.bits == (2, 4) and spec.search.memory_budget == 2 * 2**20
    assert spec.evaluation.diffusion.steps == 8
    assert StudySpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match=r"unknown key quantizer\.bitz"):
        StudySpec.from_dict({**good, "quantizer": {"bitz": [2]}})
    with pytest.raises(ConfigError, match=r"quantizer\.group_size must be"):
        StudySpec.from_dict({**good, "quantizer": {"group_size": 0}})
    with pytest.raises(ConfigError, match="not a schema-1 Setup"):
        Setup.from_json(spec.to_json())


def test_every_quantizer_option_is_a_flag_and_a_spec_key():
    """Adding a field to QuantizerSettings is all it takes to get its flag and spec key."""
    import bitfront.cli as cli
    from bitfront.cli import main
    from bitfront.cli_parser import build, setup_from_flags

    parser = build(cli, ["quantize"])
    flags = {a.dest: a for a in parser._subparsers._group_actions[0].choices["quantize"]._actions}
    for field in dataclasses.fields(QuantizerSettings):
        assert any(d.endswith(f"_{field.name}") and "QuantizerSettings" in d for d in flags)
        value = getattr(QuantizerSettings(), field.name)
        assert QuantizerSettings.from_dict({field.name: value}) == QuantizerSettings()
    args = parser.parse_args(["quantize", "m", "--bits", "4", "--candidate-bits", "2,4",
                              "--act-order", "--calib-samples", "8", "--no-mask-aware"])
    setup = setup_from_flags(args)
    assert setup.quantizer == QuantizerSettings(bits=(2, 4), act_order=True)
    assert setup.calibration.samples == 8 and not setup.calibration.mask_aware
    assert setup.sensitivity == Setup().sensitivity  # no flags: the dataclass default
    # A bad value is refused before any model loads, naming the flag.
    assert main(["quantize", "no-such-model", "--bits", "4", "--group-size", "0"]) == 1


def test_optuna_private_api_still_works():
    """Fails loudly when an Optuna upgrade moves what search/optuna_private.py uses."""
    import numpy as np

    from bitfront.planner import optuna_private as private

    ref = np.array([1.0, 1.0])
    points = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert private.compute_hypervolume(points, ref, assume_pareto=False) == pytest.approx(0.3125)
    study = optuna.create_study(directions=["minimize"],
                                sampler=optuna.samplers.NSGAIISampler(population_size=2, seed=0))
    study.enqueue_trial({"x": 3})

    def objective(trial):
        private.join_generation(trial)
        return trial.suggest_int("x", 0, 5)

    with private.quiet():
        study.optimize(objective, n_trials=1)
    frozen = study.trials[0]
    assert private.fixed_params(frozen) == {"x": 3}
    storage = study._storage
    assert storage.get_trial(private.trial_id(frozen)).number == frozen.number
    with private.heartbeat(study.ask()):  # a storage without heartbeats: nothing recorded
        pass
    logger = logging.getLogger("optuna")
    before = logger.level
    with private.quiet():
        assert logger.level == logging.WARNING
    assert logger.level == before


def test_mse_option_shrinks_ranges_to_lower_error():
    """The quantizer option added through the one schema: a field of QuantizerSettings
    (flag --mse and spec key quantizer.mse come with it), implemented in the kernel."""
    import torch

    from bitfront.kernels.quant import MSE_NORM, quant_params, quantize_codes

    w = torch.distributions.StudentT(2.0).sample((64, 128))  # heavy tails: outliers
    errors = {}
    for mse in (False, True):
        scale, zero = quant_params(w, 3, False, mse)
        q = scale * (quantize_codes(w, scale, zero, 7) - zero)
        errors[mse] = float((q - w).abs().pow(MSE_NORM).sum())
    assert errors[True] < errors[False]
    assert QuantizerSettings.from_dict({"mse": True}).mse
