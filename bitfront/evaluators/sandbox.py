"""Running untrusted generated code: one process per program, contained and classified.

Each program (a solution plus its tests) runs through `jail.py` in its own fresh temporary
directory (removed afterwards), in a new session, with stdin closed, a scrubbed environment,
stdout/stderr to capped files, rlimits on CPU time, address space, file size and processes, no
network (a network namespace where the OS allows it, sockets blocked otherwise), and, where the
machine allows it, its own PID namespace and an unprivileged user. A wall-clock timeout kills
its whole process group. Outcomes: passed / failed (which test) / timeout / crashed, with the
tail of stderr. A thread pool runs programs in parallel (the work happens in subprocesses).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

JAIL = Path(__file__).with_name("jail.py")
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
_UID_BASE = 61000  # one sandbox uid per pool slot (root only), so process limits are per slot


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # wall clock, seconds
    cpu_seconds: int = 10
    memory_bytes: int = 2 << 30  # address space
    file_bytes: int = 16 << 20  # largest file (stdout/stderr included)
    processes: int = 32
    recursion_limit: int = 1000
    isolation: str = "auto"  # "auto": the strongest the machine allows; "guard": in-process only


@dataclass(frozen=True)
class Program:
    """A solution and its tests; the tests run one by one after the solution."""

    code: str
    tests: tuple[str, ...]


@dataclass
class Outcome:
    status: str  # passed | failed | timeout | crashed
    detail: str = ""
    test: str = ""  # the failing test, for `failed`
    stderr_tail: str = ""
    seconds: float = 0.0
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return {"status": self.status, "detail": self.detail, "test": self.test,
                "stderr_tail": self.stderr_tail, "seconds": round(self.seconds, 3),
                "isolation": self.isolation}


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_program(program: Program, limits: Limits = Limits(), slot: int = 0) -> Outcome:
    """Run one program in the sandbox and classify what happened."""
    start = time.monotonic()
    outside = Path(tempfile.mkdtemp(prefix="bitfront-sandbox-"))
    workdir = outside / "work"
    workdir.mkdir()
    try:
        if os.geteuid() == 0:
            os.chown(workdir, _UID_BASE + slot, _UID_BASE + slot)
        spec = {"program": program.code, "tests": list(program.tests),
                "result_path": str(outside / "result.json"),
                "cpu_seconds": limits.cpu_seconds, "memory_bytes": limits.memory_bytes,
                "file_bytes": limits.file_bytes, "processes": limits.processes,
                "recursion_limit": limits.recursion_limit, "uid": _UID_BASE + slot,
                "isolation": limits.isolation}
        spec_path = outside / "spec.json"
        spec_path.write_text(json.dumps(spec))
        with (outside / "stdout").open("wb") as stdout, (outside / "stderr").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", str(JAIL), str(spec_path)], cwd=workdir,
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=err, env=_ENV,
                start_new_session=True, close_fds=True,
            )
            try:
                proc.wait(timeout=limits.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.terminate()  # the jail kills and reaps the program, then reports
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1.0)
            finally:
                _kill_group(proc)  # whatever is left in its process group, jail included
                proc.wait()
        stderr_tail = _tail(outside / "stderr")
        try:
            result = json.loads((outside / "result.json").read_text())
        except (OSError, json.JSONDecodeError):
            result = {"status": "crashed",
                      "detail": f"sandbox exited with {proc.returncode} without a result"}
        if timed_out:
            result = {**result, "status": "timeout",
                      "detail": f"wall clock exceeded {limits.timeout:g} s"}
        return Outcome(status=result["status"], detail=result.get("detail", ""),
                       test=result.get("test", ""), stderr_tail=stderr_tail,
                       seconds=time.monotonic() - start,
                       isolation=result.get("isolation", ""))
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def run_programs(programs: Iterable[Program], *, limits: Limits = Limits(),
                 workers: int = 2) -> list[Outcome]:
    """Run programs in parallel (at most `workers` at a time); results in input order."""
    programs = list(programs)
    results: list[Outcome | None] = [None] * len(programs)
    free_slots: queue.Queue[int] = queue.Queue()
    for slot in range(workers):
        free_slots.put(slot)

    def work(index: int) -> tuple[int, Outcome]:
        slot = free_slots.get()
        try:
            return index, run_program(programs[index], limits, slot=slot)
        finally:
            free_slots.put(slot)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, i) for i in range(len(programs))]
        for future in as_completed(futures):
            index, outcome = future.result()
            results[index] = outcome
    return results  # type: ignore[return-value]
