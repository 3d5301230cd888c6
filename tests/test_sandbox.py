"""The sandbox against hostile programs, and the harness check on reference solutions."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from bitfront.evaluators.sandbox import Limits, Program, run_program, run_programs

LEAK = f"bitfront-leak-{os.getpid()}"
LIMITS = Limits(timeout=3.0, cpu_seconds=3, memory_bytes=1 << 30, file_bytes=4 << 20,
                processes=16)


@pytest.fixture
def victim(tmp_path):
    """Files outside the sandbox that hostile programs go after."""
    directory = tmp_path / "victim"
    directory.mkdir()
    (directory / "keep.txt").write_text("precious")
    directory.chmod(0o755)
    return directory


@pytest.fixture
def listener():
    """A TCP server on this machine's loopback, counting connections it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def snapshot(directory: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


def sandbox_processes() -> list[int]:
    """Processes (zombies included) of a sandbox user or children of this test process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields["Uid"].split()[0])
        if 61000 <= uid < 62000 or int(fields["PPid"]) == os.getpid():
            found.append(int(entry.name))
    return found


def hostile_programs(victim: Path, port: int) -> dict[str, tuple[str, set[str]]]:
    target = victim / "keep.txt"
    return {
        # Allowed into a private /tmp (root namespaces) or refused (guard); never left behind.
        "write /tmp": (f"open('/tmp/{LEAK}', 'w').write('x')", {"passed", "failed"}),
        "infinite loop": ("while True:\n    pass", {"timeout"}),
        "sleep forever": ("import time\ntime.sleep(10**6)", {"timeout"}),
        "fork bomb": ("import os\nwhile True:\n    os.fork()", {"crashed", "timeout"}),
        "memory bomb": ("blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 28))",
                        {"crashed"}),
        "1 GB to stdout": ("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n"
                           "    sys.stdout.write(chunk)\nsys.stdout.flush()", {"crashed"}),
        "write outside": (f"open({str(victim / 'new.txt')!r}, 'w').write('pwned')",
                          {"failed"}),
        "overwrite outside": (f"open({str(target)!r}, 'w').write('pwned')", {"failed"}),
        "delete outside": (f"import os\nos.remove({str(target)!r})", {"failed"}),
        "network": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), "
                    "timeout=2)", {"failed"}),
        # The jail survives (it reports the result): the signal is refused, or, as PID 1 of
        # its namespace, the program cannot even reach it and simply goes on.
        "kill parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
                        {"passed", "failed"}),
        "kill evaluator": (f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)",
                           {"failed"}),
        "unbounded recursion": ("def f(n):\n    return f(n + 1)\nf(0)", {"crashed"}),
        "sys.exit(0) first": ("import sys\nsys.exit(0)", {"crashed"}),
        "read stdin": ("data = input()", {"failed"}),
        "os._exit(0)": ("import os\nos._exit(0)", {"crashed"}),
    }


def test_hostile_programs_are_contained_and_classified(victim, listener):
    port, accepted = listener
    before = snapshot(victim)
    programs = hostile_programs(victim, port)
    leftovers_before = set(Path("/tmp").glob("bitfront-sandbox-*"))
    processes_before = set(sandbox_processes())
    start = time.monotonic()
    outcomes = run_programs([Program(code, ("assert True",)) for code, _ in programs.values()],
                            limits=LIMITS, workers=2)
    elapsed = time.monotonic() - start
    for (name, (_, expected)), outcome in zip(programs.items(), outcomes, strict=True):
        assert outcome.status in expected, (name, outcome)
        assert outcome.seconds <= LIMITS.timeout + 2, (name, outcome.seconds)
    assert elapsed < len(programs) * (LIMITS.timeout + 2) / 2 + 5
    assert snapshot(victim) == before
    assert accepted == []
    assert set(sandbox_processes()) - processes_before == set()
    assert set(Path("/tmp").glob("bitfront-sandbox-*")) == leftovers_before
    assert not (Path("/tmp") / LEAK).exists()
    assert outcomes[0].isolation in ("root-namespaces", "user-namespaces", "python-guard")


def test_outcomes_name_the_failing_test_and_keep_stderr():
    code = "import sys\ndef add(a, b):\n    print('debug', file=sys.stderr)\n    return a - b"
    tests = ("assert add(2, 2) in (0, 4)", "assert add(2, 3) == 5", "assert add(0, 0) == 0")
    outcome = run_program(Program(code, tests), LIMITS)
    assert outcome.status == "failed"
    assert outcome.test == "assert add(2, 3) == 5"
    assert "debug" in outcome.stderr_tail
    assert run_program(Program("def add(a, b):\n    return a + b", tests), LIMITS).passed


def test_python_guard_fallback_blocks_the_obvious(victim, listener):
    """What a machine without namespaces or root gets: the in-process guard."""
    from dataclasses import replace

    port, accepted = listener
    before = snapshot(victim)
    target = victim / "keep.txt"
    attacks = {
        "open": f"open({str(victim / 'x.txt')!r}, 'w')",
        "pathlib": f"import pathlib\npathlib.Path({str(target)!r}).write_text('pwned')",
        "remove": f"import os\nos.remove({str(target)!r})",
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
        "kill": f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)",
        "subprocess": f"import subprocess\nsubprocess.run(['rm', {str(target)!r}])",
        "system": f"import os\nos.system('rm {target}')",
        "new session": "import os\nos.setsid()",
    }
    guard = replace(LIMITS, isolation="guard")
    outcomes = run_programs([Program(code, ("assert True",)) for code in attacks.values()],
                            limits=guard)
    for name, outcome in zip(attacks, outcomes, strict=True):
        assert outcome.status == "failed" and "PermissionError" in outcome.detail, (name,
                                                                                    outcome)
        assert outcome.isolation == "python-guard"
    assert snapshot(victim) == before and accepted == []
    inside = run_program(Program("open('out.txt', 'w').write('ok')", ("assert True",)), guard)
    assert inside.passed
