"""Latency tables notice contention: each records the conditions it was measured under, one
measured while other work held the CPUs comes with a warning and is measured again once the
machine is quiet, a clean one is cached for good."""

from __future__ import annotations

import json
import warnings

import pytest

from bitfront.models import load_local
from bitfront.objectives import latency
from bitfront.objectives.latency import LatencyWarning, Workload, measure_latency_table
from bitfront.space.layers import layer_space

WORKLOAD = Workload(prompt_len=8, answer_len=4, backend="torch")


def _scheduler(monkeypatch, wait_per_run: float) -> None:
    """Scheduler statistics in which every 1 s on a CPU came with `wait_per_run` s waiting."""
    clock = {"run": 10**9}

    def schedstat():
        clock["run"] += 10**9
        return clock["run"], int(clock["run"] * wait_per_run)

    monkeypatch.setattr(latency, "_schedstat", schedstat)


def _measure(lm, root):
    return measure_latency_table(lm, layer_space(lm), WORKLOAD, bits=(4,), group_size=32,
                                 repeats=1, root=root, show_progress=False)


def test_the_table_records_the_conditions_it_was_measured_under(micro_pair, tmp_path):
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LatencyWarning)  # this machine may well be busy
        table = _measure(lm, tmp_path)
    conditions = table.meta["conditions"]
    assert set(conditions) >= {"cpu_wait", "contended", "cpu_pressure", "load", "cpus",
                               "threads", "measured_at"}
    assert conditions["cpus"] >= 1 and len(conditions["load"]) == 3
    assert conditions["cpu_wait"] is None or conditions["cpu_wait"] >= 0
    (path,) = tmp_path.glob("*.json")
    assert json.loads(path.read_text())["meta"]["conditions"] == conditions


def test_a_contended_table_warns_and_is_measured_again_when_quiet(micro_pair, tmp_path,
                                                                 monkeypatch):
    lm = load_local(micro_pair["pocket-ar-micro"], device="cpu")
    _scheduler(monkeypatch, 1.0)  # another job takes half the CPUs
    with pytest.warns(LatencyWarning, match="competed for the CPUs"):
        busy = _measure(lm, tmp_path)
    assert busy.contended and busy.meta["conditions"]["cpu_wait"] == pytest.approx(1.0)
    monkeypatch.setattr(latency, "_quiet_now", lambda: False)
    assert _measure(lm, tmp_path) == busy  # still busy: no better measurement to be had
    monkeypatch.setattr(latency, "_quiet_now", lambda: True)
    _scheduler(monkeypatch, 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LatencyWarning)
        quiet = _measure(lm, tmp_path)
    assert not quiet.contended and quiet.meta["conditions"]["cpu_wait"] < latency.CONTENDED
    assert quiet.meta["conditions"]["measured_at"] >= busy.meta["conditions"]["measured_at"]
    (path,) = tmp_path.glob("*.json")
    assert json.loads(path.read_text())["meta"]["conditions"]["contended"] is False
    _scheduler(monkeypatch, 5.0)
    assert _measure(lm, tmp_path) == quiet  # a clean table is cached for good
