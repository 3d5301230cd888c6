"""Every use of Optuna's private API, in one place (tests/test_optuna_private.py fails loudly
when an Optuna release changes one of them).

- `compute_hypervolume`: Optuna's exact hypervolume (WFG), not exported publicly;
- a frozen trial's storage id (`_trial_id`) and a study's storage (`_storage`), to mark a
  dead worker's trial failed;
- Optuna's heartbeat thread, for trials run outside `Study.optimize`;
- the parameters an enqueued trial was fixed to (system attribute `fixed_params`);
- `Trial.relative_params`: asking NSGA-II for the relative parameters puts an enqueued trial
  into the sampler's current generation;
- the random states of NSGA-II and TPE (`_rng`, `_random_sampler._rng`), reseeded before each
  trial so that a resumed search draws what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import optuna
from optuna._hypervolume import compute_hypervolume
from optuna.storages._heartbeat import get_heartbeat_thread

__all__ = ["compute_hypervolume", "fixed_params", "heartbeat", "join_generation", "quiet",
           "reseed", "storage_of", "trial_id"]


def trial_id(trial: optuna.trial.FrozenTrial) -> int:
    return trial._trial_id


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def heartbeat(trial: optuna.Trial) -> contextlib.AbstractContextManager:
    """Records the running trial's heartbeat while open (storages with heartbeats only), as
    `Study.optimize` does, so other workers fail it only if this process stops."""
    return get_heartbeat_thread(trial._trial_id, trial.study._storage)


def fixed_params(trial: optuna.trial.FrozenTrial) -> dict:
    """The parameters an enqueued trial was given (else the ones it sampled)."""
    return trial.system_attrs.get("fixed_params", trial.params)


def join_generation(trial: optuna.Trial) -> None:
    """Enqueued seeds fix every parameter, so Optuna would never ask NSGA-II about them and
    they would get no generation; asking puts them in the current one."""
    _ = trial.relative_params


def reseed(sampler: optuna.samplers.BaseSampler, seed: int) -> None:
    """Set the random states of `sampler` (NSGA-II or TPE) and of its random fallback."""
    for owner in (sampler, getattr(sampler, "_random_sampler", None)):
        if owner is not None:
            owner._rng.rng.seed(seed)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's per-trial INFO logs, experimental-feature warnings and its warning that
    heartbeats belong to `Study.optimize` (bitfront runs them itself, `heartbeat`) off, for
    this block only (bitfront shows its own progress); the process's settings are restored
    afterwards."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
            yield
    finally:
        logger.setLevel(level)
