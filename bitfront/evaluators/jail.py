"""The sandbox's inside: runs one untrusted program under limits and reports what happened.

Started by evaluators/sandbox.py as `python -I jail.py SPEC.json` in a fresh temporary
directory, in a new session, with stdin closed and stdout/stderr going to capped files. Uses
only the standard library (it must not import bitfront). Steps:

1. Isolation, as strong as the machine allows: as root, new network, PID and mount
   namespaces (`unshare`) with private, empty /tmp, /var/tmp and /dev/shm (the working
   directory stays visible), then the program runs as an unprivileged user that may read
   files but write only there; otherwise an unprivileged user namespace (network and PID
   isolation) plus the Python-level guard for files; failing both, the guard alone, which
   blocks sockets, signals to other processes, new sessions, starting programs and writes
   outside the working directory.
2. The program runs in a forked child (PID 1 of the new PID namespace, so every process it
   starts dies with it) under rlimits on CPU time, address space, file size, processes and
   core dumps.
3. The child executes the solution, then each test in order, and writes a JSON status (passed
   / failed with the failing test / exited early) to a pipe the program does not know about.
4. On SIGTERM (the sandbox's wall-clock timeout) the jail kills the child and reaps it, so no
   zombie is left behind; the kernel takes the rest of the PID namespace down with it.
"""

import ctypes
import errno
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 1, 8, 38
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
CAP_DAC_READ_SEARCH = 2
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> bool:
    return _libc().unshare(flags) == 0


def _write_map(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _mount(source: str, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> bool:
    args = [s.encode() if s is not None else None for s in (source, target, fstype)]
    return _libc().mount(*args, flags, data.encode() if data else None) == 0


def private_scratch(workdir: str) -> None:
    """In a new mount namespace: an empty tmpfs over each scratch directory, so that nothing
    the program writes there outlives it or reaches other programs; the working directory,
    if it lies below one of them, is bound back in its place."""
    if not _mount("none", "/", None, MS_REC | MS_PRIVATE):
        raise OSError(ctypes.get_errno(), "cannot make the mount namespace private")
    keep = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    for scratch in SCRATCH_DIRS:
        if os.path.isdir(scratch) and not _mount("tmpfs", scratch, "tmpfs",
                                                 MS_NOSUID | MS_NODEV, "mode=1777,size=64m"):
            raise OSError(ctypes.get_errno(), f"cannot mount a tmpfs on {scratch}")
    if not os.path.isdir(workdir):  # hidden by a tmpfs: bind the real one back
        os.makedirs(workdir)
        if not _mount(f"/proc/self/fd/{keep}", workdir, None, MS_BIND):
            raise OSError(ctypes.get_errno(), "cannot bind the working directory")
    os.chdir(workdir)
    os.close(keep)


def isolate(workdir: str) -> str:
    """Enter new namespaces; returns the isolation level reached."""
    if os.geteuid() == 0 and _unshare(CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWNS):
        private_scratch(workdir)
        return "root-namespaces"
    uid, gid = os.geteuid(), os.getegid()
    if _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID):
        try:
            _write_map("/proc/self/setgroups", "deny")
            _write_map("/proc/self/uid_map", f"0 {uid} 1")
            _write_map("/proc/self/gid_map", f"0 {gid} 1")
        except OSError:
            pass
        return "user-namespaces"
    return "python-guard"


def set_limits(spec: dict) -> None:
    cpu = int(spec["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = int(spec["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = int(spec["file_bytes"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    procs = int(spec["processes"])
    resource.setrlimit(resource.RLIMIT_NPROC, (procs, procs))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def drop_privileges(uid: int) -> None:
    """As root, become the pool slot's unprivileged user: no groups, no new privileges, and
    one capability, CAP_DAC_READ_SEARCH, so that the interpreter can still read its standard
    library wherever it is installed (e.g. under a root-only home) while writing nothing."""
    if os.geteuid() != 0:
        return
    libc = _libc()
    libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    if libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def python_guard(workdir: str) -> None:
    """Last-resort containment without namespaces or another user: in-process patches that
    refuse sockets, signals to other processes, starting programs and writes outside the
    working directory. Best effort: code that reaches the OS by other routes (ctypes, file
    descriptors relative to other directories) is not stopped."""
    import builtins
    import io
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    socket.socket = refuse  # type: ignore[assignment, misc]
    socket.create_connection = refuse  # type: ignore[assignment]
    root = os.path.realpath(workdir)

    def inside(path) -> bool:
        try:
            full = os.path.realpath(os.fspath(path))
        except TypeError:
            return True  # file descriptors
        return full == root or full.startswith(root + os.sep)

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"writing outside the sandbox: {file}")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        if flags & writes and not inside(path):
            raise PermissionError(f"writing outside the sandbox: {path}")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open

    def guard_path(fn):
        def wrapped(path, *args, **kwargs):
            if not inside(path):
                raise PermissionError(f"modifying outside the sandbox: {path}")
            return fn(path, *args, **kwargs)
        return wrapped

    for name in ("remove", "unlink", "rmdir", "rename", "replace", "chmod", "truncate"):
        setattr(os, name, guard_path(getattr(os, name)))
    own = os.getpid()

    def guarded_kill(pid, sig):
        if pid not in (own, 0):
            raise PermissionError("signalling other processes is disabled in the sandbox")
        return os.kill.__wrapped__(pid, sig)

    guarded_kill.__wrapped__ = os.kill  # type: ignore[attr-defined]
    os.kill = guarded_kill
    os.killpg = refuse

    def no_sessions(*args, **kwargs):
        raise PermissionError("leaving the sandbox's process group is disabled")

    # A process in another session or group would outlive the timeout's group kill.
    os.setsid = os.setpgid = os.setpgrp = no_sessions
    import subprocess

    def no_processes(*args, **kwargs):
        raise PermissionError("starting programs is disabled in the sandbox")

    subprocess.Popen = no_processes  # type: ignore[assignment, misc]
    for name in dir(os):
        if name.startswith(("exec", "spawn", "posix_spawn")) or name in ("system", "popen"):
            setattr(os, name, no_processes)


# Errors that mean "a resource limit was hit" (memory, recursion, processes, file size),
# which we count as a crash rather than as a wrong answer.
_EXHAUSTION = (MemoryError, RecursionError, BlockingIOError)
_EXHAUSTION_ERRNOS = {errno.EFBIG, errno.EAGAIN, errno.ENOMEM}


def _exhausted(exc: BaseException) -> bool:
    return isinstance(exc, _EXHAUSTION) or (
        isinstance(exc, OSError) and exc.errno in _EXHAUSTION_ERRNOS)


def _failure(exc: BaseException, stage: str, tests: list) -> dict:
    """Status for an exception the program raised: a crash if a limit was hit, else a
    failure naming the failing test and the line that raised."""
    if _exhausted(exc):
        return {"status": "crashed",
                "detail": f"{type(exc).__name__} in {stage} (resource limit): {exc}"[:300]}
    failing = ""
    if stage != "program":
        failing = (tests[int(stage.split()[1])].strip().splitlines() or [""])[0]
    tb = traceback.extract_tb(exc.__traceback__)
    return {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"[:500], "stage": stage,
            "test": failing, "line": (tb[-1].line if tb else "") or ""}


def run_program(spec: dict, status_fd: int) -> None:
    """Inside the child: run solution then tests, report through `status_fd`."""
    owner = os.getpid()

    def report(result: dict) -> None:
        if os.getpid() != owner:  # a process the program forked: only the original reports
            os._exit(1)
        os.write(status_fd, json.dumps(result).encode())
        os.close(status_fd)

    namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    stage = "program"
    try:
        exec(compile(spec["program"], "program.py", "exec"), namespace)
        for i, test in enumerate(spec["tests"]):
            stage = f"test {i}"
            exec(compile(test, f"test_{i}.py", "exec"), namespace)
        status = {"status": "passed", "detail": ""}
    except SystemExit as exc:
        status = {"status": "crashed", "detail": f"SystemExit({exc.code!r}) in {stage} "
                                                   "before the tests finished"}
    except BaseException as exc:  # noqa: BLE001 - the program's own failure
        status = _failure(exc, stage, spec["tests"])
    report(status)
    os._exit(0)


def classify(raw: bytes, wait_status: int) -> dict:
    """The child's own report, or what its exit says when it could not report."""
    if raw:
        try:
            return json.loads(raw)
        except ValueError:
            return {"status": "crashed", "detail": "the program corrupted its status report"}
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        kind = "timeout" if sig == signal.SIGXCPU else "crashed"
        return {"status": kind, "detail": f"killed by {signal.Signals(sig).name}"}
    return {"status": "crashed",
            "detail": f"exited with code {os.WEXITSTATUS(wait_status)} before the tests ran "
                      "(os._exit or a lost status pipe)"}


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    workdir = os.getcwd()
    # Opened before isolating: the result file lies outside the working directory, where a
    # private /tmp would hide it.
    result_file = open(spec["result_path"], "w")  # noqa: SIM115 - closed after the program
    level = isolate(workdir) if spec.get("isolation", "auto") == "auto" else "python-guard"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        result_file.close()
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        set_limits(spec)
        if level == "root-namespaces":
            drop_privileges(int(spec["uid"]))
        else:
            # A user namespace isolates network and processes but not the user's own files
            # (and there is no other user to become): the guard keeps writes inside.
            python_guard(workdir)
        sys.setrecursionlimit(int(spec.get("recursion_limit", 1000)))
        run_program(spec, write_fd)
    os.close(write_fd)

    def stop(signum, frame):  # the sandbox's timeout: end the program, then reap it below
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    _, wait_status = os.waitpid(pid, 0)
    result = classify(b"".join(chunks), wait_status)
    result["isolation"] = level
    with result_file:
        json.dump(result, result_file)


if __name__ == "__main__":
    main()
