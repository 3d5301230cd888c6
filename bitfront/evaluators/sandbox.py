"""Running untrusted generated code: the program lives in a bubblewrap sandbox, a judge decides.

Each program takes two processes, started together and joined by two pipes (what makes one
costs a few tens of milliseconds of CPU, most of it the jail's interpreter start):

- the jail (`jail.py`), under bubblewrap (`bwrap`): new user, PID, network, IPC, UTS and cgroup
  namespaces, and no further namespaces inside (seccomp); no capabilities; a new session; killed
  with its parent. It is the sandbox's PID 1 and only process (`--as-pid-1`: no init of
  bubblewrap's inside), so its own signals cannot end it, and bwrap, which reaps it, reports its
  CPU time to the host. Its root holds only, read-only: the Python runtime (the interpreter, its
  standard library and libpython; the shared libraries of /usr/lib), the code of ours it runs
  (`jail.py` and `wire.py`, compiled once per evaluator: `_compiled`), a fresh /proc, and
  /dev/null, /dev/zero and /dev/urandom; /tmp is an empty tmpfs of `scratch_bytes` and
  `scratch_files` inodes, its working directory and the only writable place (the jail mounts it
  itself, with the two capabilities bubblewrap leaves it for that alone, then drops them:
  bubblewrap 0.8 cannot bound a tmpfs's inodes). No host /run, /tmp, sockets or other devices,
  and nothing of the evaluator's environment: bubblewrap itself is started with the sandbox's
  own few variables. A seccomp filter (`_seccomp_filter`) refuses new processes (threads are
  allowed), SysV IPC objects and memfds, which no rlimit would bound, ptrace and its kin, file
  modes, attributes and times, and file locks. Its threads are capped at `processes` tasks by a
  pids cgroup of its own where this process can make one (`_pids_cgroups`), else by
  RLIMIT_NPROC, which binds every user but root: run by root, bubblewrap maps the sandbox's user
  to root itself (without capabilities), so root without a pids cgroup is warned that threads
  are bounded by memory only. Root also owns the host's device nodes bound in (hence no chmod),
  and may write /proc/sys even so, hence the read-only /proc.
- the judge (`judge.py`), outside, which runs the benchmark's tests and calls the program's
  functions over the pipes with arguments and results as plain data (`wire.py`). The verdict is
  decided there: nothing the program does to its own interpreter reaches it. Each judge is a
  fork of a judge server started once per evaluator (`_Judges`), which runs nothing of any task
  or program itself: every judge starts from that same fresh state, in a session of its own, and
  is killed and reaped when its program is done (or its evaluator has gone).

What one program can take is bounded: one process (seccomp) whose address space, threads
included, is at most `memory_bytes`; files in /tmp of at most `scratch_bytes` in all
(`file_bytes` each); `open_files` descriptors (pipes and sockets: small kernel buffers);
`cpu_seconds` of CPU; `timeout` seconds of wall clock, after which both processes are killed.
bubblewrap is started under the same limits (`prlimit`), but for the process count. The judge
runs under the same CPU and address-space limits. With the defaults, a program in flight holds
at most 2 GiB (jail) + 2 GiB (judge) + 64 MiB (tmpfs) + 16 MiB (the kernel's, for 16k inodes
in /tmp), times `workers`. Every byte read back is capped: requests to the jail
(`wire.MAX_FRAME`), its replies (`wire.MAX_REPLY`, before the judge parses them), stderr (a
pipe of which at most `file_bytes` are read, the last `TAIL_BYTES` kept; past that the
program's writes fail with EPIPE), stdout (/dev/null), the verdict (the judge quotes at most
500 characters).

Outcomes: passed / failed (which test) / timeout / crashed (a limit, an exit, a lost sandbox),
with the tail of stderr. Only the host says timeout: its wall clock, or its CPU limit (set by
prlimit, which the seccomp filter keeps the program from changing) when that limit's SIGKILL
ended the jail (as PID 1 it ignores its own signals) and the jail's CPU time, as the kernel
reports it to the host, agrees. Any failure of ours on one program becomes its outcome. A
thread pool runs programs in parallel (the work happens in subprocesses). `isolation="none"`
runs the jail without bubblewrap (rlimits only, a temporary working directory; the same
judge): unsafe, for machines where bubblewrap cannot run.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import importlib.util
import json
import marshal
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bitfront.errors import BitfrontError

ISOLATIONS = ("bubblewrap", "none")
STATUSES = ("passed", "failed", "timeout", "crashed")
TAIL_BYTES = 2000
_HERE = Path(__file__).parent
_INSIDE = "/bitfront"  # where the jail's files appear in the sandbox
_ENV = {"LANG": "C.UTF-8", "HOME": "/tmp", "PYTHONHASHSEED": "0"}
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")
# The least share of the CPU limit in the CPU time reported for a jail that limit ended: the
# limit reads the tick-sampled clock, which ran up to 5% ahead of the exact one reported.
_CPU_COUNTED = 0.9
_INSTALL = ("apt-get install bubblewrap (version 0.8 or later), or, where it cannot run, opt "
            "out with --unsafe-no-sandbox")


@dataclass(frozen=True)
class Limits:
    """What one program may take (the module's docstring gives the bound they make)."""

    timeout: float = 10.0  # wall clock, seconds, for the jail and the judge together
    cpu_seconds: int = 10  # CPU time of each
    memory_bytes: int = 2 << 30  # address space of each
    file_bytes: int = 16 << 20  # largest file the program writes (stderr included)
    scratch_bytes: int = 64 << 20  # the tmpfs at /tmp, the program's only writable place
    scratch_files: int = 16 << 10  # its files, directories and links (~1 KiB of kernel each)
    open_files: int = 64
    processes: int = 32  # tasks of the sandbox: threads (new processes are refused)
    recursion_limit: int = 1000
    isolation: str = "bubblewrap"  # or "none": no sandbox at all (unsafe)


@dataclass(frozen=True)
class Program:
    """A solution and its tests; the tests run one by one, in the judge, after the solution.
    Of the names the tests use but do not define, only `entry_point` and the names in
    `crosses` (classes the tests build arguments from) are the solution's; built-ins stay the
    judge's own, and the rest come from `context`, the task's own code (a reference solution,
    HumanEval's prompt; trusted: its statements that bind those names run in the judge). The
    entry point may shadow a built-in only where `context` defines it (MBPP's `sum`)."""

    code: str
    tests: tuple[str, ...]
    entry_point: str | None = None
    context: str = ""
    crosses: tuple[str, ...] = ()


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


def require_sandbox(isolation: str) -> None:
    """Refuse, in one line that says how to fix it, where `isolation` cannot run here; warn
    loudly (once per process: one warning location) when there is to be no sandbox, and when
    nothing here can cap a sandbox's threads."""
    if isolation == "none":
        warnings.warn("UNSAFE: generated code runs WITHOUT a sandbox (--unsafe-no-sandbox): it "
                      "can read, change and send anything this user can", RuntimeWarning,
                      stacklevel=1)
        return
    if isolation not in ISOLATIONS:
        raise BitfrontError(f"unknown isolation {isolation!r}; choose from {ISOLATIONS}")
    if shutil.which("bwrap") is None:
        raise BitfrontError(f"running generated code needs bubblewrap (bwrap): {_INSTALL}")
    _probe_bubblewrap()
    if not _pids_cgroups() and not _nproc_binds():
        warnings.warn("the sandbox cannot cap a program's threads here (root, and no pids cgroup "
                      "it may make: cgroup v1 pids, or v2 with pids delegated): they are bounded "
                      "by its memory only", RuntimeWarning, stacklevel=1)


@functools.cache
def _probe_bubblewrap() -> None:
    """One trivial program through the sandbox (once per process, when it works)."""
    outcome = run_program(Program("def f():\n    return 1", ("assert f() == 1",), "f"))
    if not outcome.passed:
        why = (outcome.stderr_tail.strip().splitlines() or [outcome.detail])[-1]
        raise BitfrontError(f"bubblewrap cannot run the sandbox here ({why}): {_INSTALL}")


def run_programs(programs: Iterable[Program], *, limits: Limits = Limits(),
                 workers: int = 2) -> list[Outcome]:
    """Run and judge programs, at most `workers` at a time; outcomes in input order."""
    require_sandbox(limits.isolation)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: run_program(program, limits), programs))


def run_program(program: Program, limits: Limits = Limits()) -> Outcome:
    """Run one program in the sandbox and judge it. Never raises: a failure of ours on it
    (a sandbox that cannot start, say) is its outcome, `crashed`."""
    start = time.monotonic()
    try:
        outcome = _run(program, limits, start + limits.timeout)
    except Exception as exc:  # noqa: BLE001 - one program must not end the evaluation
        outcome = Outcome("crashed", detail=f"sandbox failure: {type(exc).__name__}: {exc}"[:500])
    outcome.seconds = time.monotonic() - start
    outcome.isolation = limits.isolation
    return outcome


def _run(program: Program, limits: Limits, deadline: float) -> Outcome:
    with contextlib.ExitStack() as stack:
        pipes = [*os.pipe(), *os.pipe()]  # to the jail (read, write), from it (read, write)
        stack.callback(_close_all, pipes)
        channel, theirs = socket.socketpair()  # to the judge: the spec, then its verdict
        stack.enter_context(channel)
        with theirs:
            stack.callback(_release, _JUDGES.fork(theirs.fileno(), pipes[1], pipes[2]))
        err_read, err_write = os.pipe()  # the jail's stderr: a pipe, never a host file
        pipes.append(err_write)
        tail = _Tail(err_read, limits.file_bytes)  # ends when every writer has gone
        stack.callback(lambda: (_close_all(pipes), tail.join(5.0)))
        jail = (_Jail if limits.isolation == "bubblewrap" else _Unsandboxed)(
            limits, pipes[0], pipes[3], err_write)
        stack.callback(jail.stop)
        _close_all(pipes)  # the children hold them now
        spec = {"program": program.code, "tests": list(program.tests),
                "entry_point": program.entry_point, "context": program.context,
                "crosses": list(program.crosses),
                "limits": {"RLIMIT_CPU": [limits.cpu_seconds, limits.cpu_seconds + 1],
                           "RLIMIT_AS": [limits.memory_bytes] * 2}}
        try:
            raw = _exchange(channel, json.dumps(spec).encode(), deadline)
        except TimeoutError:
            jail.stop()
            return Outcome("timeout", detail=f"wall clock exceeded {limits.timeout:g} s",
                           stderr_tail=tail.text())
        outcome = _judged(raw)
        if outcome.pop("ended"):  # the jail's process ended: killed by a limit?
            sig, cpu = jail.ended(min(1.0, max(0.0, deadline - time.monotonic())))
            if sig == signal.SIGKILL and cpu >= _CPU_COUNTED * limits.cpu_seconds:
                outcome = {"status": "timeout",
                           "detail": f"CPU time exceeded {limits.cpu_seconds} s"}
            elif sig is not None:
                outcome["detail"] += f" (killed by signal {sig})"
        jail.stop()  # then the tail of its stderr is complete
        return Outcome(**outcome, stderr_tail=tail.text())


def _exchange(channel: socket.socket, spec: bytes, deadline: float) -> bytes:
    """Send the judge its spec and read what it sends back to the end (TimeoutError at
    `deadline`; a judge that went early just sends less)."""
    def left() -> float:
        if (seconds := deadline - time.monotonic()) <= 0:
            raise TimeoutError
        return seconds

    raw = bytearray()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        channel.settimeout(left())
        channel.sendall(spec)
        channel.shutdown(socket.SHUT_WR)
        while True:
            channel.settimeout(left())
            if not (chunk := channel.recv(1 << 16)):
                break
            raw += chunk
    return bytes(raw)


class _Judges:
    """The judges' fork server (`judge.py`), started on first use, with the sandbox's
    environment and none of this process's descriptors but its end of `control`; it ends
    when this process closes that end (at exit, or when it dies)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        atexit.register(self.stop)

    def fork(self, channel: int, to_jail: int, from_jail: int) -> socket.socket:
        """A new judge on these descriptors (its channel to this process, to the jail, from
        the jail); returns its lease, which `_release` ends."""
        lease, theirs = socket.socketpair()
        try:
            with theirs, self.lock:
                if self.process is None or self.process.poll() is not None:
                    self.stop()
                    self._start()
                socket.send_fds(self.control, [b"j"], [channel, to_jail, from_jail,
                                                       theirs.fileno()])
        except BaseException:
            lease.close()
            raise
        return lease

    def _start(self) -> None:
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [_interpreter(), "-S", "-B", str(_HERE / "judge.py"), str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=_ENV, cwd="/", pass_fds=(theirs.fileno(),), start_new_session=True)
        self.control = control

    def stop(self) -> None:
        """End the server (it kills and reaps its judges first) and reap it."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5.0)
            _kill(self.process)
            self.process = None


_JUDGES = _Judges()


def _release(lease: socket.socket) -> None:
    """End a judge's lease: the server kills and reaps the judge, then closes its end."""
    with lease, contextlib.suppress(OSError):
        lease.shutdown(socket.SHUT_WR)
        lease.settimeout(5.0)
        lease.recv(1)


class _Tail(threading.Thread):
    """Drains a pipe, keeping the last TAIL_BYTES of at most `cap` bytes; past the cap it
    closes its end (the writer then gets EPIPE), as it does at the end of the input."""

    def __init__(self, fd: int, cap: int):
        super().__init__(daemon=True)
        self.fd, self.cap, self.data = fd, cap, b""
        self.start()

    def run(self) -> None:
        data, total = bytearray(), 0
        try:
            while total < self.cap:
                chunk = os.read(self.fd, min(1 << 16, self.cap - total))
                if not chunk:
                    break
                total += len(chunk)
                data += chunk
                del data[:-TAIL_BYTES]
                self.data = bytes(data)
        finally:
            os.close(self.fd)

    def text(self) -> str:
        self.join(5.0)
        return self.data[-TAIL_BYTES:].decode("utf-8", "replace")


def _judged(raw: bytes) -> dict:
    """The judge's verdict, read defensively."""
    try:
        verdict = json.loads(raw)
        if verdict.get("status") not in STATUSES:
            raise ValueError(raw)
    except (ValueError, AttributeError):
        return {"status": "crashed", "detail": f"the judge gave no verdict: {raw[:200]!r}",
                "ended": False}
    return {"status": verdict["status"], "detail": str(verdict.get("detail", ""))[:500],
            "test": str(verdict.get("test", ""))[:500], "ended": verdict.get("ended") is True}


class _Unsandboxed:
    """The jail as a plain process (isolation "none"): rlimits and a temporary directory."""

    def __init__(self, limits: Limits, stdin: int, stdout: int, stderr: int):
        self.workdir = tempfile.mkdtemp(prefix="bitfront-sandbox-")
        try:
            self.process = subprocess.Popen(
                [*_own_limits(limits), _interpreter(), "-S", "-B", str(_HERE / "jail.py"),
                 *_jail_limits(limits)],
                stdin=stdin, stdout=stdout, stderr=stderr, cwd=self.workdir, env=_ENV,
                start_new_session=True)
        except BaseException:
            _remove(self.workdir)
            raise

    def ended(self, timeout: float) -> tuple[int | None, float]:
        """The signal that ended the jail, if one did, and the CPU seconds it used (waits up
        to `timeout` for its end)."""
        cpu = _reap(self.process, timeout)
        code = self.process.returncode
        return (-code if code is not None and code < 0 else None), cpu

    def stop(self) -> None:
        _kill(self.process)
        if self.workdir:
            _remove(self.workdir)
            self.workdir = ""


class _Jail:
    """The jail under bubblewrap, in a pids cgroup of its own where one can be made. Stopping
    it kills the jail (the sandbox's PID 1) through a pidfd (so nothing else can be hit), which
    takes its whole PID namespace down, then reaps bwrap and removes the cgroup."""

    def __init__(self, limits: Limits, stdin: int, stdout: int, stderr: int):
        self.child = -1
        self.cgroup = _make_cgroup(_pids_cgroups(), limits.processes)
        enter = [_sh(), "-c", _ENTER, f"{self.cgroup}/cgroup.procs"] if self.cgroup else []
        fds: list[int] = []
        try:
            inputs = {}  # what bwrap reads, each from a pipe it fits in: the filter, the code
            for name, data in {"seccomp": _seccomp_filter(), **_compiled()}.items():
                inputs[name], write = os.pipe()
                fds += [inputs[name], write]
                os.write(write, data)
            info, info_w = os.pipe()
            fds += [info, info_w]
            self.process = subprocess.Popen(  # bwrap's own environment is the sandbox's
                [*enter, *_bwrap_command(limits, inputs, info_w)], stdin=stdin,
                stdout=stdout, stderr=stderr, pass_fds=(*inputs.values(), info_w),
                start_new_session=True, env=_ENV)
            fds.remove(info)
        except BaseException:
            _remove_cgroup(self.cgroup)
            raise
        finally:
            _close_all(fds)
        with os.fdopen(info, "rb") as reader:  # written once the namespaces exist
            report = reader.read(65536)
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):  # bwrap failed
            self.child = os.pidfd_open(json.loads(report)["child-pid"])

    def ended(self, timeout: float) -> tuple[int | None, float]:
        """The signal that ended the jail, if one did, and the CPU seconds it used (waits up to
        `timeout` for its end)."""
        cpu = _reap(self.process, timeout)
        code = self.process.returncode  # bwrap exits with 128 + the signal
        return (code - 128 if code is not None and 128 < code < 128 + signal.NSIG else None), cpu

    def stop(self) -> None:
        if self.child >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.child, signal.SIGKILL)
            os.close(self.child)
            self.child = -1
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5.0)
        _kill(self.process)
        _remove_cgroup(self.cgroup)
        self.cgroup = ""


def _reap(process: subprocess.Popen, timeout: float) -> float:
    """Wait up to `timeout` for `process` to end and reap it; the CPU seconds it and the
    descendants it reaped used, as the kernel counts them (0 if it has not ended)."""
    if process.returncode is not None:
        return 0.0
    pidfd = os.pidfd_open(process.pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            return 0.0
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _kill(process: subprocess.Popen) -> None:
    """Kill a process that has not been reaped, with its process group, and reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        process.wait()


def _close_all(fds: list[int]) -> None:
    """Close the descriptors left in `fds`, once each (the list empties)."""
    while fds:
        os.close(fds.pop())


def _remove(path: str) -> None:
    """Remove a directory tree however deep (rm's traversal is iterative, shutil.rmtree's in
    Python 3.11 recursive), giving back first any permission the program took away."""
    for command in (["chmod", "-R", "u+rwx", "--", path], ["rm", "-rf", "--", path]):
        subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def _jail_limits(limits: Limits, scratch: bool = False) -> list[str]:
    """The jail's rlimits (it sets them on itself, inside its namespaces, so that the
    process count is that of the sandbox's user namespace; not the CPU time, which it has from
    prlimit) and, with `scratch`, the tmpfs it mounts at /tmp, as its command-line arguments."""
    rlimits = {"RLIMIT_AS": limits.memory_bytes, "RLIMIT_FSIZE": limits.file_bytes,
               "RLIMIT_NOFILE": limits.open_files, "RLIMIT_NPROC": limits.processes,
               "RLIMIT_CORE": 0}
    return [*([f"scratch={limits.scratch_bytes},{limits.scratch_files}"] if scratch else []),
            f"recursion={limits.recursion_limit}",
            *(f"{name}={value}" for name, value in rlimits.items())]


def _own_limits(limits: Limits) -> list[str]:
    """prlimit's command line that starts bwrap (or the unsandboxed jail) under the program's
    limits (address space, file size, descriptors, no core; CPU time, soft and hard: the
    hard limit's SIGKILL ends the jail, which as PID 1 ignores the soft limit's SIGXCPU); not
    the process count, which outside the sandbox's user namespace would count every process
    of this user."""
    return [_prlimit(), f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_seconds}",
            f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", "--core=0", "--"]


@functools.cache
def _prlimit() -> str:
    found = shutil.which("prlimit")
    if found is None:
        raise BitfrontError("the sandbox needs prlimit (util-linux): apt-get install util-linux")
    return found


def _bwrap_command(limits: Limits, inputs: dict[str, int], info_fd: int) -> list[str]:
    """bwrap's command line (under prlimit), reading the seccomp filter and the jail's
    compiled code from the descriptors `inputs` names."""
    command = [_bwrap(), "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
               "--unshare-uts", "--unshare-cgroup", "--as-pid-1", "--hostname", "sandbox",
               "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--cap-add",
               "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP", "--clearenv"]  # the jail's scratch
    for name, value in _ENV.items():
        command += ["--setenv", name, value]
    for name in _compiled():
        command += ["--ro-bind-data", str(inputs[name]), f"{_INSIDE}/{name}"]
    return [*_own_limits(limits), *command, *_mounts(), "--dir", "/tmp",
            "--remount-ro", "/", "--chdir", "/tmp", "--seccomp", str(inputs["seccomp"]),
            "--info-fd", str(info_fd), "--", _interpreter(), "-S", "-B",
            f"{_INSIDE}/jail.pyc", *_jail_limits(limits, scratch=True)]


@functools.cache
def _compiled() -> dict[str, bytes]:
    """The jail's two modules as .pyc files (by name; PEP 552's header, with no source to
    check), compiled once: the jail runs from these (so no program pays for compiling them)."""
    return {f"{name}c": importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(
        compile((_HERE / name).read_text(), f"{_INSIDE}/{name}", "exec", dont_inherit=True))
        for name in ("jail.py", "wire.py")}


# Run by sh, which moves itself into the cgroup "$0", then becomes the command that follows.
_ENTER = 'echo 0 > "$0" && exec "$@"'


@functools.cache
def _sh() -> str:
    return shutil.which("sh") or "/bin/sh"


def _nproc_binds() -> bool:
    """Whether RLIMIT_NPROC binds this process's user: every user but the host's root."""
    return os.getuid() != 0 or Path("/proc/self/uid_map").read_text().split()[:2] != ["0", "0"]


@functools.cache
def _pids_cgroups() -> str:
    """Where this process can make a pids cgroup per sandbox and move processes into it: its
    own cgroup in the pids hierarchy (cgroup v1, or v2 with the pids controller enabled below
    it), or "" where there is none."""
    try:
        own = {}  # hierarchy ("pids", "" for cgroup v2) -> this process's cgroup in it
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            own.update(dict.fromkeys(controllers.split(","), path))
        mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except (OSError, ValueError):
        return ""
    for fields in mounts:
        kind, options = fields[fields.index("-") + 1], fields[fields.index("-") + 3]
        if kind == "cgroup2":
            hierarchy = ""
        elif kind == "cgroup" and "pids" in options.split(","):
            hierarchy = "pids"
        else:
            continue
        if hierarchy not in own:
            continue
        relative = os.path.relpath(own[hierarchy], fields[3])  # to the root mounted here
        parent = os.path.normpath(os.path.join(fields[4], relative))
        if not relative.startswith("..") and _usable(parent):
            return parent
    return ""


def _usable(parent: str) -> bool:
    """Whether a pids cgroup can be made under `parent` and a process moved into it; first
    removes the sandboxes' cgroups there of evaluators that were killed."""
    for stale in Path(parent).glob("bitfront-*-*"):
        try:
            os.kill(int(stale.name.split("-")[1]), 0)
        except ProcessLookupError:
            _remove_cgroup(str(stale), wait=False)
        except (OSError, ValueError):
            pass
    try:
        probe = _make_cgroup(parent, 1)
    except OSError:
        return False
    try:
        return subprocess.run([_sh(), "-c", _ENTER, f"{probe}/cgroup.procs", "true"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, check=False).returncode == 0
    finally:
        _remove_cgroup(probe)


def _make_cgroup(parent: str, tasks: int) -> str:
    """A new cgroup under `parent` of at most `tasks` tasks ("" where `parent` is "")."""
    if not parent:
        return ""
    path = tempfile.mkdtemp(prefix=f"bitfront-{os.getpid()}-", dir=parent)
    try:  # the cgroup file system made pids.max: a directory of another kind has none
        fd = os.open(os.path.join(path, "pids.max"), os.O_WRONLY)
        try:
            os.write(fd, str(tasks).encode())
        finally:
            os.close(fd)
    except BaseException:
        _remove_cgroup(path, wait=False)
        raise
    return path


def _remove_cgroup(path: str, wait: bool = True) -> None:
    """Remove a sandbox's cgroup (none where `path` is ""), with `wait` waiting up to a
    second for its last tasks to go."""
    deadline = time.monotonic() + (1.0 if wait else 0.0)
    while path:
        try:
            os.rmdir(path)
        except OSError as exc:
            if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(0.01)
                continue
        return


@functools.cache
def _bwrap() -> str:
    """bwrap's path (it is started with the sandbox's environment, which has no PATH)."""
    return shutil.which("bwrap") or "bwrap"


@functools.cache
def _interpreter() -> str:
    """The real interpreter behind this one (a venv's python is a link to it)."""
    return os.path.realpath(sys.executable)


@functools.cache
def _mounts() -> tuple[str, ...]:
    """bwrap's mounts: the shared libraries, the Python runtime (interpreter, standard
    library, libpython; not the venv), /proc and three devices. Read-only."""
    mounts, bound = [], []
    for path in ("/usr/lib", "/usr/lib64", "/lib", "/lib64"):
        if os.path.islink(path):
            mounts += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            mounts += ["--ro-bind", path, path]
            bound.append(path)
    runtime = {_interpreter(), sysconfig.get_path("stdlib"),
               sysconfig.get_config_var("DESTSHARED")}
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        runtime.add(os.path.join(sysconfig.get_config_var("LIBDIR"),
                                 sysconfig.get_config_var("INSTSONAME")))
    for path in sorted(os.path.realpath(p) for p in runtime if p):
        if not any(path == b or path.startswith(b + "/") for b in bound):
            mounts += ["--ro-bind", path, path]
            bound.append(path)
    mounts += ["--proc", "/proc", "--remount-ro", "/proc"]
    for device in _DEVICES:
        mounts += ["--dev-bind", device, device]
    return tuple(mounts)


class _ArgCmp(ctypes.Structure):  # libseccomp's struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_SCMP_ACT_ALLOW, _SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000
_SCMP_CMP_NE, _SCMP_CMP_EQ, _SCMP_CMP_MASKED_EQ, _CLONE_THREAD = 1, 4, 7, 0x00010000
# System calls newer than some libseccomp releases, by their number (the same on every
# architecture: the kernel's common table).
_NEW_SYSCALLS = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466,
                 "file_setattr": 469}
_F_SETLK, _F_SETLKW, _F_OFD_SETLK, _F_OFD_SETLKW = 6, 7, 37, 38
_REFUSED = (  # EPERM; see _seccomp_filter
    "shmget", "msgget", "semget", "memfd_create",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "perf_event_open", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "unshare", "setns",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
    "file_setattr", "utime", "utimes", "utimensat", "futimesat")


@functools.cache
def _seccomp_filter() -> bytes:
    """bwrap's seccomp program (classic BPF, compiled by libseccomp, which bubblewrap's own
    users such as Flatpak use): refuse fork, vfork and clone without CLONE_THREAD (EAGAIN),
    clone3 (ENOSYS: a filter cannot read its flags, and glibc then makes threads with clone);
    SysV shared memory, message queues, semaphores and memfds, which no rlimit bounds; ptrace,
    process_vm_readv/writev, pidfd_getfd and kcmp, perf events, BPF, userfaultfd, io_uring
    (its requests bypass this filter), kernel keyrings, and unshare and setns: no namespace,
    user namespaces included, is made or entered inside (bubblewrap's --disable-userns would
    also keep the jail from mounting its scratch space); changing its CPU limit (reading it
    is allowed), which the host's verdict of timeout rests on; changing the mode, extended
    attributes (ACLs) or times of files, which the only files the program can reach and owns
    are the host's device nodes when root runs it (EPERM); and file locks, which it could
    hold on host files (ENOLCK)."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise BitfrontError("the sandbox needs libseccomp: apt-get install libseccomp2")
    lib = ctypes.CDLL(name)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not context:
        raise OSError("seccomp_init failed")
    cpu = resource.RLIMIT_CPU
    rules = [("fork", errno.EAGAIN, ()), ("vfork", errno.EAGAIN, ()),
             ("setrlimit", errno.EPERM, (_ArgCmp(0, _SCMP_CMP_EQ, cpu, 0),)),
             ("prlimit64", errno.EPERM, (_ArgCmp(1, _SCMP_CMP_EQ, cpu, 0),
                                         _ArgCmp(2, _SCMP_CMP_NE, 0, 0))),
             ("clone", errno.EAGAIN, (_ArgCmp(0, _SCMP_CMP_MASKED_EQ, _CLONE_THREAD, 0),)),
             ("clone3", errno.ENOSYS, ()), *((call, errno.EPERM, ()) for call in _REFUSED),
             ("flock", errno.ENOLCK, ()),
             *(("fcntl", errno.ENOLCK, (_ArgCmp(1, _SCMP_CMP_EQ, command, 0),))
               for command in (_F_SETLK, _F_SETLKW, _F_OFD_SETLK, _F_OFD_SETLKW))]
    try:
        for call, error, conditions in rules:
            number = lib.seccomp_syscall_resolve_name(call.encode())
            if number < 0:  # unknown to this libseccomp, or not a system call here
                number = _NEW_SYSCALLS.get(call, -1)
                if number < 0:
                    continue
            result = lib.seccomp_rule_add_array(context, _SCMP_ACT_ERRNO | error, number,
                                                len(conditions),
                                                (_ArgCmp * len(conditions))(*conditions))
            if result < 0:
                raise OSError(-result, f"seccomp rule for {call}")
        with tempfile.TemporaryFile() as program:
            if lib.seccomp_export_bpf(context, program.fileno()) < 0:
                raise OSError("seccomp_export_bpf failed")
            program.seek(0)
            return program.read()
    finally:
        lib.seccomp_release(context)
