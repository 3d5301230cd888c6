"""bitfront: Pareto-optimal per-layer bit plans for code LLMs (diffusion vs autoregressive).

The Python API (bitfront/api.py) and the config dataclasses are imported on first use, so
that `import bitfront` and `bitfront --help` stay fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    **dict.fromkeys(("load_model", "build_candidates", "sensitivity", "search", "best_under",
                     "quantize", "export", "evaluate", "run_study", "NoPlanError"), "api"),
    "Setup": "planner.pipeline", "SearchConfig": "planner.study",
    "QuantizerSettings": "quant.candidates", "CalibrationConfig": "quant.calibration",
    "SpaceConfig": "space.layers", "SensitivityConfig": "objectives.sensitivity",
    "ProxyConfig": "objectives.proxy", "Workload": "objectives.latency",
    "EvalConfig": "evaluators.harness", "DiffusionOptions": "models.diffusion_sampling",
    "StudySpec": "studies.spec", "SearchResult": "planner.front", "Point": "planner.front",
    "TrialMetrics": "planner.metrics", "RefineConfig": "planner.refine",
    "Answer": "planner.refine", "BitPlan": "space.plan", "BitfrontError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"bitfront.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'bitfront' has no attribute {name!r}")
