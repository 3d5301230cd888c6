"""The multi-objective Optuna study over per-group bitwidths.

One categorical parameter per layer group (its bitwidth). A trial = plan → apply cached
candidates in place → proxy accuracy retention → analytic memory → latency from the lookup
table; every metric is recorded on the trial. Objectives: accuracy retention (max), memory
bytes (min), latency seconds per sample (min), each switchable; memory and latency budgets are
constraints (`Trial.set_constraint`, Optuna 5's replacement for the deprecated
`constraints_func`), so samplers and fronts keep to them. The HAWQ seeds (uniform plans and ILP
solutions between each adjacent pair of them) are enqueued first. Samplers: budget-preserving
moves from the current front (`moves`, see moves.py; the default, chosen by
benchmarks/bench_front.py), NSGA-II (its population at least as large as the seed set, so the
seeds form its first generation) and multivariate TPE. Plans evaluated outside the sampler
(answers refined at a budget, refine.py) are recorded as trials too, with their origin.

Storage is any Optuna storage: a SQLite file by default, a PostgreSQL/MySQL URL for many
workers on many machines, or a journal file. The study records its configuration; a worker
whose configuration differs refuses to join. Under one lock per storage (`storage_lock`)
workers create its tables, enqueue the seeds once and claim each trial: no seed or plan runs
twice, and together they stop at exactly the target count. RDB storages run heartbeats, so a
killed worker's running trial is marked FAIL by another worker (or re-run) once its grace
period passes; trials of dead processes on this machine are failed before each trial whatever
the storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from bitfront.config import Config, setting
from bitfront.errors import BitfrontError
from bitfront.models.base import CodeLM
from bitfront.objectives.latency import LatencyTable
from bitfront.objectives.proxy import AccuracyProxy
from bitfront.objectives.sensitivity import Sensitivity
from bitfront.paths import default_storage, run_dir
from bitfront.planner.metrics import TrialMetrics, objective_metric
from bitfront.planner.moves import Moves, MoveSampler
from bitfront.planner.optuna_private import (
    fixed_params,
    heartbeat,
    join_generation,
    quiet,
    reseed,
    storage_of,
    trial_id,
)
from bitfront.planner.seeds import Seed, SeedProblem, hawq_seeds
from bitfront.progress import progress_bar
from bitfront.quant.apply import PlanApplier
from bitfront.quant.candidates import Candidates
from bitfront.space.layers import GROUPINGS, group_layers
from bitfront.space.memory import plan_memory
from bitfront.space.plan import BitPlan
from bitfront.units import parse_bytes, parse_seconds

OBJECTIVES = {"accuracy": "maximize", "memory": "minimize", "latency": "minimize"}
SAMPLERS = ("moves", "nsga2", "tpe")
ACCURACIES = ("top1", "likelihood", "kl")
CONFIG_ATTR = "bitfront_config"
SEEDED_ATTR = "bitfront_seeded"
REQUEUED_ATTR = "bitfront_requeued_seeds"  # seeds run again after their worker died
TABLE_ATTR = "bitfront_latency_table"
REFINEMENT_ATTR = "refinement"  # on trials recorded by a refinement at a budget (refine.py)
SETTINGS_ATTR = "bitfront_settings"  # the versioned JSON of every setting (bitfront/config.py)


class StudyMismatchError(BitfrontError):
    """A worker whose configuration differs from the study it tries to join."""


@dataclass(frozen=True)
class SearchConfig(Config):
    """The search: objectives, space grouping, sampler, seeds and budgets."""

    trials: int = setting(60, "finished trials to reach (all workers together)")
    objectives: tuple[str, ...] = setting(("accuracy", "memory", "latency"),
                                          "objectives, from accuracy, memory, latency")
    accuracy: str = setting("top1", "proxy retention used as the accuracy objective",
                            choices=ACCURACIES)
    choices: tuple[int, ...] = setting((2, 3, 4, 8, 16), "bitwidths to choose from")
    grouping: str = setting("linear", "layers sharing one bitwidth", choices=GROUPINGS)
    sampler: str = setting("moves", "Optuna sampler: budget-preserving moves from the front, "
                                    "NSGA-II or TPE", choices=SAMPLERS)
    population: int = setting(16, "NSGA-II population")
    seed: int = setting(0, "sampler seed")
    ilp_budgets: int = setting(3, "HAWQ ILP seeds at this many memory budgets between each "
                                  "adjacent pair of uniform plans (0: unseeded)")
    seed_budgets: tuple[int, ...] = setting((), "more ILP seeds at these memory budgets, "
                                                "e.g. 2.27MiB", parse=parse_bytes)
    cheap_sensitivity: bool = setting(False, "seed from GPTQ's loss instead of Hessian traces")
    memory_budget: int | None = setting(None, "plans above it are infeasible, e.g. 1.2GiB",
                                        parse=parse_bytes)
    latency_budget: float | None = setting(None, "plans slower than it per generated sample "
                                                 "are infeasible, e.g. 0.5s",
                                           parse=parse_seconds)

    def __post_init__(self):
        self.require(bool(self.objectives) and set(self.objectives) <= set(OBJECTIVES),
                     "objectives", f"from {list(OBJECTIVES)}")
        self.require(self.sampler in SAMPLERS, "sampler", f"one of {SAMPLERS}")
        self.require(self.accuracy in ACCURACIES, "accuracy", f"one of {ACCURACIES}")
        self.require(self.grouping in GROUPINGS, "grouping", f"one of {GROUPINGS}")
        self.require(bool(self.choices) and set(self.choices) <= {2, 3, 4, 8, 16}, "choices",
                     "bits from 2, 3, 4, 8, 16")
        for key in ("trials", "population"):
            self.require(getattr(self, key) > 0, key, "a positive number")
        self.require(self.ilp_budgets >= 0, "ilp_budgets", "a number ≥ 0")
        self.require(all(b > 0 for b in self.seed_budgets), "seed_budgets", "positive sizes")
        for key in ("memory_budget", "latency_budget"):
            self.require(getattr(self, key) is None or getattr(self, key) > 0, key,
                         "a positive size or duration")

    def identity(self) -> dict:
        """What workers sharing a study must agree on: everything but the trial count."""
        return {k: v for k, v in self.to_dict().items() if k != "trials"}


Storage = str | optuna.storages.BaseStorage


def differing_keys(theirs, mine, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between a study's recorded JSON (`theirs`) and
    `mine` (compared as the storage would hold it: tuples as lists)."""
    mine = json.loads(json.dumps(mine))
    if not (isinstance(theirs, dict) and isinstance(mine, dict)):
        return [] if theirs == mine else [prefix.rstrip(".") or "settings"]
    return [d for k in sorted(set(theirs) | set(mine))
            for d in differing_keys(theirs.get(k), mine.get(k), f"{prefix}{k}.")]


def open_storage(url: Storage) -> optuna.storages.BaseStorage:
    """An Optuna storage: a storage object as it is, "memory" (in-memory), RDB URLs
    (sqlite:///..., postgresql://...) with heartbeats, or a journal file for any other path.
    Optuna creates its tables under the storage lock: workers opening a fresh database
    together would otherwise race to create them."""
    if isinstance(url, optuna.storages.BaseStorage):
        return url
    if url == "memory":
        return optuna.storages.InMemoryStorage()
    if "://" in url:
        import sqlalchemy

        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:///") else {}
        try:
            with storage_lock(url), quiet():
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                                  heartbeat_interval=5, grace_period=20)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError) as exc:
            raise _storage_error(url, exc) from exc  # OSError: a SQLite file's directory
    from optuna.storages.journal import JournalFileBackend

    try:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    except OSError as exc:
        raise _storage_error(url, exc) from exc


def _storage_error(url: str, exc: Exception) -> BitfrontError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return BitfrontError(f"cannot open the study storage {_shown(url)}: {reason}; check the "
                         "URL, that the server runs and that its driver is installed (pip "
                         "install 'bitfront[postgres]')")


def _shown(url: str) -> str:
    """The URL without its password."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.split("@")[-1]


@contextlib.contextmanager
def storage_lock(url: Storage) -> Iterator[None]:
    """Exclusive across the workers of one storage (creating its tables, enqueuing the seeds,
    claiming trials): a PostgreSQL advisory lock, or a file lock beside a SQLite database or
    journal file (workers on one machine). Storage objects and other RDB URLs get no lock;
    `enqueue_trial(skip_if_exists=True)` still keeps most duplicates out."""
    if not isinstance(url, str) or url == "memory":
        yield
        return
    if url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        key = int(hashlib.sha256(b"bitfront-seeding").hexdigest()[:15], 16)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
        return
    if url.startswith("sqlite:///"):
        lock_path = Path(url.removeprefix("sqlite:///") + ".lock")
    elif "://" not in url:
        lock_path = Path(url + ".bitfront.lock")  # Optuna's journal lock is url + ".lock"
    else:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fail_dead_local_trials(study: optuna.Study) -> int:
    """Mark FAIL the running trials of processes of this machine that no longer exist."""
    host, failed, storage = socket.gethostname(), 0, storage_of(study)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or _alive(int(worker.get("pid", 0))):
            continue
        try:
            storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # Optuna's own heartbeat check got there first
        failed += 1
    return failed


def recover_dead_workers(study: optuna.Study) -> int:
    """Fail the trials of dead workers (this machine's by process id, other machines' by
    heartbeat) and enqueue again the seeds they held; run under the storage lock, when a
    worker joins and before each of its trials, so the survivors evaluate every seed. Returns
    the seeds enqueued again."""
    optuna.storages.fail_stale_trials(study)
    fail_dead_local_trials(study)
    return requeue_failed_seeds(study)


def requeue_failed_seeds(study: optuna.Study) -> int:
    """Enqueue again each seed whose only trials failed (its worker died mid-trial), so that
    every seed is evaluated whatever happens to the process that drew it."""
    seeds = set(study.user_attrs.get(SEEDED_ATTR, []))
    trials = study.get_trials(deepcopy=False)
    alive = {t.user_attrs.get("origin") for t in trials if t.state != TrialState.FAIL}
    again: dict[str, dict] = {}
    for trial in trials:
        origin = trial.user_attrs.get("origin")
        if trial.state == TrialState.FAIL and origin in seeds and origin not in alive:
            again.setdefault(origin, fixed_params(trial))
    for origin, params in again.items():
        study.enqueue_trial(params, user_attrs={"origin": origin})
    if again:
        # Optuna runs waiting trials in order, so a seed run again comes after the seeds its
        # dead worker had not reached: NSGA-II's first generation, and what follows, differ
        # from an uninterrupted search's. Recorded, and reported (SearchResult.requeued).
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        study.set_user_attr(REQUEUED_ATTR, [*study.user_attrs.get(REQUEUED_ATTR, []),
                                            *({"origin": o, "after_completed": done}
                                              for o in again)])
    return len(again)


@contextlib.contextmanager
def _failing(trial: optuna.Trial) -> Iterator[None]:
    """Marks the trial FAIL if the block raises, unless another worker has finished it
    meanwhile (failed it when its heartbeat stopped): that trial is left as it is."""
    try:
        yield
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    except BaseException:
        trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PlanSearch:
    """Everything a trial needs, and the study around it."""

    def __init__(self, lm: CodeLM, candidates: Candidates, proxy: AccuracyProxy,
                 table: LatencyTable | None, sensitivity: Sensitivity | None,
                 config: SearchConfig, settings: dict | None = None, mbpp_source=None):
        self.lm, self.candidates, self.proxy = lm, candidates, proxy
        self.mbpp_source = mbpp_source
        self._screens: dict[int, AccuracyProxy] = {}
        self.settings = settings
        self.table, self.sensitivity, self.config = table, sensitivity, config
        self.space = candidates.space
        self.groups = group_layers(self.space, config.grouping)
        missing = [b for b in config.choices if b not in candidates.bits]
        if missing:
            raise BitfrontError(f"no candidates at {missing} bits (cached: {candidates.bits})")
        needs_latency = "latency" in config.objectives or config.latency_budget is not None
        if needs_latency and table is None:
            raise BitfrontError("latency needs a latency table")
        self.seed_problem().check(config.memory_budget, config.latency_budget)
        self.applier = PlanApplier(lm, candidates)

    # --- configuration -------------------------------------------------------------------

    def study_config(self) -> dict:
        """What must be identical for workers to share a study."""
        return {
            "model": self.lm.fingerprint(), "model_name": self.lm.name,
            "family": self.lm.family, "candidates": self.candidates.key,
            "choices": list(self.config.choices), "grouping": self.config.grouping,
            "groups": self.groups, "proxy": self.proxy.fingerprint(),
            "objectives": list(self.config.objectives), "accuracy": self.config.accuracy,
            "search": self.config.identity(),
            "workload": asdict(self.table.workload) if self.table else None,
            "memory_budget": self.config.memory_budget,
            "latency_budget": self.config.latency_budget,
            "group_size": self.candidates.settings.group_size,
            "sym": self.candidates.settings.sym,
            "quantizer": self.candidates.settings.to_dict(),
            "calibration": self.candidates.calibration,
            "reference": self.reference_point(),
        }

    def reference_point(self) -> dict:
        """The hypervolume reference (see search/front.py): the all-16-bit plan's memory and
        the slowest possible plan's latency."""
        full = self.plan(dict.fromkeys(self.groups, 16))
        reference = {"memory": plan_memory(self.space, full).total_bytes, "latency": None}
        if self.table is not None:
            slowest = {g: max(self.config.choices, key=lambda b, g=g: self._group_latency(g, b))
                       for g in self.groups}
            reference["latency"] = self.table.predict(self.space, self.plan(slowest))["seconds"]
        return reference

    def _group_latency(self, group: str, bits: int) -> float:
        return sum(self.table.layer_seconds(self.space[name], bits)
                   for name in self.groups[group])

    def plan(self, group_bits: dict[str, int], **meta) -> BitPlan:
        bits = {name: group_bits[g] for g, members in self.groups.items() for name in members}
        settings = self.candidates.settings
        return BitPlan.from_bits(self.lm.fingerprint(), bits, settings.group_size, settings.sym,
                                 candidates=self.candidates.key,
                                 quantizer=settings.to_dict(), **meta)

    # --- seeds ---------------------------------------------------------------------------

    def seed_problem(self) -> SeedProblem:
        """Bytes, latency and (once computed) sensitivity of every group at every bitwidth."""
        settings = self.candidates.settings
        has_table = self.table is not None
        return SeedProblem.build(
            self.space, self.groups, list(self.config.choices),
            self.sensitivity.omega if self.sensitivity is not None else None,
            group_size=settings.group_size, sym=settings.sym,
            layer_latency=self.table.layer_seconds if has_table else None,
            fixed_latency=self.table.rest if has_table else 0.0)

    def moves(self, memory_cap: float | None = None, latency_cap: float | None = None
              ) -> Moves:
        """Budget-preserving moves within the search's budgets (and the caps given)."""
        def tighter(a, b):
            return b if a is None else a if b is None else min(a, b)
        return Moves(self.seed_problem(),
                     memory_cap=tighter(memory_cap, self.config.memory_budget),
                     latency_cap=tighter(latency_cap, self.config.latency_budget))

    def seeds(self) -> list[Seed]:
        if self.config.ilp_budgets <= 0:
            return []
        if self.sensitivity is None:
            raise BitfrontError("HAWQ seeds need the sensitivity table")
        uniform = [b for b in (2, 3, 4, 8) if b in self.config.choices]
        return hawq_seeds(self.seed_problem(), per_gap=self.config.ilp_budgets,
                          uniform=uniform, latency_cap=self.config.latency_budget,
                          memory_budget=self.config.memory_budget,
                          budgets=self.config.seed_budgets)

    # --- one trial -----------------------------------------------------------------------

    def evaluate(self, plan: BitPlan) -> TrialMetrics:
        """All metrics of one plan (the model is left restored)."""
        with self.applier.applied(plan):
            score = self.proxy()
        memory = plan_memory(self.space, plan)
        latency = {}
        if self.table is not None:
            predicted = self.table.predict(self.space, plan)
            latency = {"latency_s": predicted["seconds"], "per_token": predicted.get("per_token"),
                       "per_step": predicted.get("per_step"), "rest": predicted.get("rest")}
        return TrialMetrics(retention=score.retention, logprob_retention=score.logprob_retention,
                            top1=score.top1, logprob=score.logprob,
                            memory_bytes=memory.total_bytes, avg_bits=memory.avg_bits,
                            nominal_bits=memory.nominal_bits, retention_low=score.retention_low,
                            retention_high=score.retention_high, kl=score.kl,
                            kl_retention=score.kl_retention,
                            kl_retention_low=score.kl_retention_low,
                            kl_retention_high=score.kl_retention_high, **latency)

    def screen_proxy(self, tasks: int) -> AccuracyProxy:
        """The proxy on `tasks` of its validation tasks, to screen many plans cheaply (built,
        with its baseline, on first use: the model must be unquantized then)."""
        if tasks not in self._screens:
            self._screens[tasks] = AccuracyProxy(self.lm, self.proxy.config.replace(tasks=tasks),
                                                 mbpp_source=self.mbpp_source)
        return self._screens[tasks]

    def accuracy(self, score) -> float:
        """The accuracy the study optimises, from a `ProxyScore` or `TrialMetrics`."""
        return float(getattr(score, objective_metric("accuracy", self.config.accuracy)))

    def objective_values(self, metrics: TrialMetrics) -> list[float]:
        return [metrics.value(o, self.config.accuracy) for o in self.config.objectives]

    def constraints(self, metrics: TrialMetrics) -> dict[str, float]:
        """≤ 0 when feasible (Optuna's convention)."""
        out = {}
        if self.config.memory_budget is not None:
            out["memory"] = metrics.memory_bytes - self.config.memory_budget
        if self.config.latency_budget is not None:
            out["latency"] = metrics.latency_s - self.config.latency_budget
        return out

    def search_trial(self, study: optuna.Study, storage_url: Storage, n_trials: int,
                     worker: int = 0) -> optuna.Trial | None:
        """Claim, evaluate and record one trial of the search; None once the study's completed
        and running search trials reach `n_trials`. The claim and the draw of its plan happen
        under the storage lock, after dead workers' trials are failed: workers never take the
        same waiting seed, never propose the same plan (moves skip the plans the study holds)
        and together stop at exactly `n_trials`. The trial's heartbeat runs from its claim."""
        with contextlib.ExitStack() as running:
            with storage_lock(storage_url):
                recover_dead_workers(study)
                if searched(study, (TrialState.COMPLETE, TrialState.RUNNING)) >= n_trials:
                    return None
                trial = study.ask()
                trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
                running.enter_context(heartbeat(trial))
                running.enter_context(_failing(trial))
                self.draw(trial, worker)
            metrics = self.evaluate(self.plan(trial.params))
            for key, value in metrics.to_dict().items():
                trial.set_user_attr(key, value)
            for key, value in self.constraints(metrics).items():
                trial.set_constraint(key, value)
            if "origin" not in trial.user_attrs:
                trial.set_user_attr("origin", self.config.sampler)
            study.tell(trial, self.objective_values(metrics), skip_if_finished=True)
        return trial

    def draw(self, trial: optuna.Trial, worker: int = 0) -> None:
        """The trial's plan, from the sampler (or the seed it was enqueued with). The draws
        depend only on the configured seed, the worker and the trials completed so far (not on
        the process's history), so a killed and resumed search proposes what an uninterrupted
        one would."""
        sampler = trial.study.sampler
        done = len(trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        mixed = int(hashlib.sha256(f"{self.config.seed}-{worker}-{done}".encode())
                    .hexdigest()[:8], 16)
        if isinstance(sampler, MoveSampler):
            sampler.reseed(mixed)
        else:
            reseed(sampler, mixed)
        if isinstance(sampler, optuna.samplers.NSGAIISampler):
            # The seeds join the first generation: the population is at least as large as
            # the seed set.
            join_generation(trial)
        for group in self.groups:
            trial.suggest_categorical(group, list(self.config.choices))

    def record(self, study: optuna.Study, bits: dict[str, int], metrics: TrialMetrics,
               origin: str) -> optuna.trial.FrozenTrial:
        """Write a plan a refinement evaluated into the study as a completed trial, with the
        values, metrics and constraints a sampled trial gets (marked, see `searched`)."""
        distribution = CategoricalDistribution(list(self.config.choices))
        study.add_trial(optuna.trial.create_trial(
            params={g: bits[g] for g in self.groups},
            distributions=dict.fromkeys(self.groups, distribution),
            values=self.objective_values(metrics),
            user_attrs={**metrics.to_dict(), "origin": origin, REFINEMENT_ATTR: True},
            constraints=self.constraints(metrics) or None))
        return next(t for t in reversed(study.get_trials(deepcopy=False))
                    if t.params == bits and t.user_attrs.get("origin") == origin)

    # --- the study -----------------------------------------------------------------------

    def sampler(self, n_seeds: int, seed: int) -> optuna.samplers.BaseSampler:
        if self.config.sampler == "moves":
            return MoveSampler(self.moves(), seed=seed)
        if self.config.sampler == "tpe":
            return optuna.samplers.TPESampler(multivariate=True, seed=seed)
        return optuna.samplers.NSGAIISampler(
            population_size=max(self.config.population, n_seeds), seed=seed)

    def open(self, storage_url: Storage, study_name: str) -> optuna.Study:
        """Create or join the study (refusing a different configuration) and enqueue the
        seeds exactly once. The sampler is reseeded before each trial (`draw`) from the
        configured seed, the worker index and the trials completed so far, so parallel workers
        do not replay each other's proposals and a resumed run continues the same sequence."""
        storage = open_storage(storage_url)
        with storage_lock(storage_url), quiet():
            study = optuna.create_study(
                storage=storage, study_name=study_name, load_if_exists=True,
                directions=[OBJECTIVES[o] for o in self.config.objectives])
            # One latency table per study, measured by its first worker: latencies stay
            # comparable when workers run on other machines.
            if self.table is not None and TABLE_ATTR in study.user_attrs:
                shared = LatencyTable.from_dict(study.user_attrs[TABLE_ATTR])
                if shared.workload != self.table.workload:
                    raise StudyMismatchError(
                        f"study {study_name!r} measures latency for {shared.workload}, "
                        f"this worker for {self.table.workload}; use the same workload")
                self.table = shared
            mine = self.study_config()
            theirs = study.user_attrs.get(CONFIG_ATTR)
            if theirs is not None and (differ := differing_keys(theirs, mine)):
                raise StudyMismatchError(
                    f"study {study_name!r} in {storage_url} was made with another "
                    f"configuration (differs in: {', '.join(differ)}); use another "
                    "study name or the same settings")
            # Only a worker that fits the study writes to it.
            if self.table is not None and TABLE_ATTR not in study.user_attrs:
                study.set_user_attr(TABLE_ATTR, self.table.to_dict())
            if theirs is None:
                study.set_user_attr(CONFIG_ATTR, mine)
                if self.settings is not None:
                    study.set_user_attr(SETTINGS_ATTR, self.settings)
            if not study.user_attrs.get(SEEDED_ATTR):
                seeds = self.seeds()
                for seed in seeds:
                    study.enqueue_trial({g: seed.bits[g] for g in self.groups},
                                        user_attrs={"origin": seed.origin},
                                        skip_if_exists=True)
                study.set_user_attr(SEEDED_ATTR, [s.origin for s in seeds])
            recover_dead_workers(study)
        n_seeds = len(study.user_attrs.get(SEEDED_ATTR, []))
        study.sampler = self.sampler(n_seeds, self.config.seed)
        return study

    def run(self, storage_url: Storage, study_name: str, n_trials: int, *, worker: int = 0,
            show_progress: bool = True) -> optuna.Study:
        """Work on the study until it holds exactly `n_trials` completed search trials
        (resumable; several workers may run this at once, each with its own `worker` index)."""
        with quiet():
            return self._run(storage_url, study_name, n_trials, worker, show_progress)

    def _run(self, storage_url, study_name, n_trials, worker, show_progress) -> optuna.Study:
        study = self.open(storage_url, study_name)
        with progress_bar(show=show_progress) as bar:
            task = bar.add_task(f"search {study_name}", total=n_trials,
                                completed=min(searched(study), n_trials), info="")
            while (trial := self.search_trial(study, storage_url, n_trials, worker)) is not None:
                bar.update(task, completed=min(searched(study), n_trials),
                           info=f"trial {trial.number} ({trial.user_attrs.get('origin', '')})")
        return study


def searched(study: optuna.Study, states: tuple[TrialState, ...] = (TrialState.COMPLETE,)
             ) -> int:
    """Trials of the search itself in `states` (seeds and sampled plans; plans recorded by a
    refinement at a budget do not count towards `trials`)."""
    return sum(REFINEMENT_ATTR not in t.user_attrs
               for t in study.get_trials(deepcopy=False, states=states))


POINTER = "study.json"


def write_pointer(run_dir: Path, storage: str, study_name: str, model: str) -> Path:
    """`run_dir/study.json`: where a study lives, so later commands find it by directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / POINTER
    path.write_text(json.dumps({"storage": storage, "study_name": study_name,
                                "model": model}, indent=2) + "\n")
    return path


def resolve_study(study: str, storage: str | None = None) -> tuple[str, str]:
    """(storage URL, study name) for a study named by its run directory (with `study.json`, or
    a study run's `search.db` holding one study), or by name (with `storage`, else the default
    storage of that name)."""
    pointer = Path(study) / POINTER
    if pointer.exists():
        info = json.loads(pointer.read_text())
        return storage or info["storage"], info["study_name"]
    database = Path(study) / "search.db"
    if storage is None and database.exists():
        url = f"sqlite:///{database.resolve()}"
        names = optuna.get_all_study_names(open_storage(url))
        if len(names) != 1:
            raise BitfrontError(f"{database} holds {len(names)} studies "
                                f"({', '.join(names) or 'none'}): name one, e.g. bitfront best "
                                f"{names[0] if names else 'NAME'} --storage {url}")
        return url, names[0]
    if storage is None:
        if not (run_dir("search", study) / "study.db").exists():
            raise BitfrontError(f"no study {study!r}: give its run directory (with {POINTER}) "
                                "or --storage URL")
        storage = default_storage(study)
    return storage, study


def locate_study(study: str, storage: str | None = None) -> tuple[optuna.Study, str]:
    """The study a user names (see `resolve_study`) and its storage URL."""
    url, name = resolve_study(study, storage)
    opened = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=opened), url
    except KeyError as exc:
        held = optuna.get_all_study_names(opened)
        raise BitfrontError(f"no study named {name!r} in {_shown(url)}; it holds "
                            + (", ".join(held) if held else "no study")) from exc
