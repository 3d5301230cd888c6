"""Running untrusted generated code: the program lives in a bubblewrap sandbox, a judge decides.

Each program takes two processes, started together and joined by two pipes:

- the jail (`jail.py`), under bubblewrap (`bwrap`): new user, PID, network, IPC, UTS and cgroup
  namespaces, and no further user namespaces inside; all capabilities dropped; a new session;
  killed with its parent. Its root holds only, read-only: the Python runtime (the interpreter,
  its standard library and libpython; the shared libraries of /usr/lib), the two files of ours
  it runs, a fresh /proc, and /dev/null, /dev/zero and /dev/urandom; /tmp is an empty tmpfs of
  `scratch_bytes`, its working directory and the only writable place. No host /run, /tmp,
  sockets or other devices, and nothing of the evaluator's environment: bubblewrap itself is
  started with the sandbox's own few variables (its PID 1's /proc/1/environ is readable
  inside). A seccomp filter (`_seccomp_filter`) refuses new processes (threads are allowed),
  SysV IPC objects and memfds, which no rlimit would bound, and ptrace and its kin (PID 1 is
  bubblewrap's), file modes, attributes and times, and file locks. Run by root, bubblewrap
  maps the sandbox's user to root itself (without capabilities): RLIMIT_NPROC does not bind
  root (threads are then bounded by memory only), root owns the host's device nodes bound in
  (hence no chmod), and root may write /proc/sys even so, hence the read-only /proc.
- the judge (`judge.py`), outside, which runs the benchmark's tests and calls the program's
  functions over the pipes with arguments and results as plain data (`wire.py`). The verdict is
  decided there: nothing the program does to its own interpreter reaches it.

What one program can take is bounded: one process (seccomp) whose address space, threads
included, is at most `memory_bytes`; files in /tmp of at most `scratch_bytes` in all
(`file_bytes` each); `open_files` descriptors (pipes and sockets: small kernel buffers);
`cpu_seconds` of CPU; `timeout` seconds of wall clock, after which both processes are killed.
bubblewrap is started under the same limits (`prlimit`), but for the process count, so they
bind the sandbox's PID 1 too. The judge runs under the same CPU and address-space limits.
With the defaults, a program in flight holds at most 2 GiB (jail) + 2 GiB (judge) + 64 MiB
(tmpfs), times `workers`, and the inodes of the files it makes in /tmp (not bounded: bubblewrap
0.8 cannot set a tmpfs's nr_inodes). Every byte read back is capped: requests to the jail
(`wire.MAX_FRAME`), its replies (`wire.MAX_REPLY`, before the judge parses them), stderr (a
pipe of which at most `file_bytes` are read, the last `TAIL_BYTES` kept; past that the
program's writes fail with EPIPE), stdout (/dev/null), the verdict (the judge quotes at most
500 characters).

Outcomes: passed / failed (which test) / timeout / crashed (a limit, an exit, a lost sandbox),
with the tail of stderr. Any failure of ours on one program becomes its outcome. A thread pool
runs programs in parallel (the work happens in subprocesses). `isolation="none"` runs the jail
without bubblewrap (rlimits only, a temporary working directory; the same judge): unsafe, for
machines where bubblewrap cannot run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import shutil
import signal
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
    open_files: int = 64
    processes: int = 32  # tasks of the sandbox's user: threads (new processes are refused)
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
    loudly (once per process: one warning location) when there is to be no sandbox."""
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
        judge = subprocess.Popen(
            [_interpreter(), "-S", "-B", str(_HERE / "judge.py"), str(pipes[1]), str(pipes[2])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_ENV,
            cwd="/", pass_fds=(pipes[1], pipes[2]), start_new_session=True)
        stack.callback(_kill, judge)
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
            raw, _ = judge.communicate(json.dumps(spec).encode(),
                                       timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            jail.stop()
            return Outcome("timeout", detail=f"wall clock exceeded {limits.timeout:g} s",
                           stderr_tail=tail.text())
        outcome = _judged(raw)
        if outcome.pop("ended"):  # the jail's process ended: killed by a limit?
            sig = jail.signal(min(1.0, max(0.0, deadline - time.monotonic())))
            if sig == signal.SIGXCPU:
                outcome = {"status": "timeout",
                           "detail": f"CPU time exceeded {limits.cpu_seconds} s"}
            elif sig is not None:
                outcome["detail"] += f" (killed by signal {sig})"
        jail.stop()  # then the tail of its stderr is complete
        return Outcome(**outcome, stderr_tail=tail.text())


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
                [_interpreter(), "-S", "-B", str(_HERE / "jail.py"), _jail_limits(limits)],
                stdin=stdin, stdout=stdout, stderr=stderr, cwd=self.workdir, env=_ENV,
                start_new_session=True)
        except BaseException:
            _remove(self.workdir)
            raise

    def signal(self, timeout: float) -> int | None:
        """The signal that ended the jail, if one did (waits up to `timeout` for its end)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.process.wait(timeout)
            return -code if code < 0 else None
        return None

    def stop(self) -> None:
        _kill(self.process)
        if self.workdir:
            _remove(self.workdir)
            self.workdir = ""


class _Jail:
    """The jail under bubblewrap. Stopping it kills the sandbox's PID 1 through a pidfd (so
    nothing else can be hit), which takes its whole PID namespace down, then reaps bwrap."""

    def __init__(self, limits: Limits, stdin: int, stdout: int, stderr: int):
        self.child = -1
        fds = [*os.pipe(), *os.pipe()]
        seccomp, seccomp_w, info, info_w = fds
        try:
            os.write(seccomp_w, _seccomp_filter())
            self.process = subprocess.Popen(  # bwrap's own environment is the sandbox's
                _bwrap_command(limits, seccomp, info_w), stdin=stdin, stdout=stdout,
                stderr=stderr, pass_fds=(seccomp, info_w), start_new_session=True, env=_ENV)
            fds.remove(info)
        finally:
            _close_all(fds)
        with os.fdopen(info, "rb") as reader:  # written once the namespaces exist
            report = reader.read(65536)
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):  # bwrap failed
            self.child = os.pidfd_open(json.loads(report)["child-pid"])

    def signal(self, timeout: float) -> int | None:
        """The signal that ended the jail, if one did (waits up to `timeout` for its end)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.process.wait(timeout)  # bwrap exits with 128 + the signal
            return code - 128 if 128 < code < 128 + signal.NSIG else None
        return None

    def stop(self) -> None:
        if self.child >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.child, signal.SIGKILL)
            os.close(self.child)
            self.child = -1
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5.0)
        _kill(self.process)


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


def _jail_limits(limits: Limits) -> str:
    """The jail's rlimits (it sets them on itself, inside its namespaces, so that the
    process count is that of the sandbox's user namespace), as its command-line argument."""
    cpu = limits.cpu_seconds
    return json.dumps({
        "recursion": limits.recursion_limit, "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_AS": [limits.memory_bytes] * 2, "RLIMIT_FSIZE": [limits.file_bytes] * 2,
        "RLIMIT_NOFILE": [limits.open_files] * 2, "RLIMIT_NPROC": [limits.processes] * 2,
        "RLIMIT_CORE": [0, 0]})


def _own_limits(limits: Limits) -> list[str]:
    """prlimit's command line that starts bwrap under the program's limits (address space,
    CPU, file size, descriptors, no core), so that they bind the sandbox's PID 1 too, not
    only the jail; not the process count, which outside the sandbox's user namespace would
    count every process of this user."""
    cpu = limits.cpu_seconds
    return [_prlimit(), f"--as={limits.memory_bytes}", f"--cpu={cpu}:{cpu + 1}",
            f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", "--core=0", "--"]


@functools.cache
def _prlimit() -> str:
    found = shutil.which("prlimit")
    if found is None:
        raise BitfrontError("the sandbox needs prlimit (util-linux): apt-get install util-linux")
    return found


def _bwrap_command(limits: Limits, seccomp_fd: int, info_fd: int) -> list[str]:
    command = [_bwrap(), "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
               "--unshare-uts", "--unshare-cgroup", "--disable-userns", "--hostname", "sandbox",
               "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    for name, value in _ENV.items():
        command += ["--setenv", name, value]
    return [*_own_limits(limits), *command, *_mounts(), "--size", str(limits.scratch_bytes),
            "--tmpfs", "/tmp",
            "--remount-ro", "/", "--chdir", "/tmp", "--seccomp", str(seccomp_fd),
            "--info-fd", str(info_fd), "--", _interpreter(), "-S", "-B",
            f"{_INSIDE}/jail.py", _jail_limits(limits)]


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
    library, libpython; not the venv), our two files, /proc and three devices. Read-only."""
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
    for name in ("jail.py", "wire.py"):
        mounts += ["--ro-bind", str(_HERE / name), f"{_INSIDE}/{name}"]
    mounts += ["--proc", "/proc", "--remount-ro", "/proc"]
    for device in _DEVICES:
        mounts += ["--dev-bind", device, device]
    return tuple(mounts)


class _ArgCmp(ctypes.Structure):  # libseccomp's struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


_SCMP_ACT_ALLOW, _SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000
_SCMP_CMP_EQ, _SCMP_CMP_MASKED_EQ, _CLONE_THREAD = 4, 7, 0x00010000
# System calls newer than some libseccomp releases, by their number (the same on every
# architecture: the kernel's common table).
_NEW_SYSCALLS = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466,
                 "file_setattr": 469}
_F_SETLK, _F_SETLKW, _F_OFD_SETLK, _F_OFD_SETLKW = 6, 7, 37, 38
_REFUSED = (  # EPERM; see _seccomp_filter
    "shmget", "msgget", "semget", "memfd_create",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "perf_event_open", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
    "file_setattr", "utime", "utimes", "utimensat", "futimesat")


@functools.cache
def _seccomp_filter() -> bytes:
    """bwrap's seccomp program (classic BPF, compiled by libseccomp, which bubblewrap's own
    users such as Flatpak use): refuse fork, vfork and clone without CLONE_THREAD (EAGAIN),
    clone3 (ENOSYS: a filter cannot read its flags, and glibc then makes threads with clone);
    SysV shared memory, message queues, semaphores and memfds, which no rlimit bounds; ptrace,
    process_vm_readv/writev, pidfd_getfd and kcmp (the sandbox's PID 1 has none of the
    program's limits), perf events, BPF, userfaultfd, io_uring (its requests bypass this
    filter) and kernel keyrings; changing the mode, extended attributes (ACLs) or times of
    files, which the only files the program can reach and owns are the host's device nodes
    when root runs it (EPERM); and file locks, which it could hold on host files (ENOLCK)."""
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
    rules = [("fork", errno.EAGAIN, ()), ("vfork", errno.EAGAIN, ()),
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
