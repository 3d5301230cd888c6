"""The sandbox against hostile programs: containment, verdicts no program can forge, an
evaluation no answer can crash or stall; values crossing by value; the unsafe opt-out. The
hostile suite runs as the user running the tests and, when that is root (as in CI), as nobody
too (`user`)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from bitfront.errors import BitfrontError
from bitfront.evaluators import sandbox, wire
from bitfront.evaluators.harness import EvalConfig, bench_tasks, evaluate, program_for
from bitfront.evaluators.sandbox import TAIL_BYTES, Limits, Program, run_program, run_programs

LEAK = f"bitfront-leak-{os.getpid()}"
# The address-space limit doubles as a marker: it appears on every jail's command line.
LIMITS = Limits(timeout=3.0, cpu_seconds=3, memory_bytes=(512 << 20) + os.getpid(),
                file_bytes=4 << 20, scratch_bytes=16 << 20)
SHADOW_ROOT = "root:"  # how /etc/shadow's first line starts
REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
# Runs programs as nobody: the spec (limits, programs) on stdin, the outcomes on stdout.
DRIVER = ("import json, sys\nfrom bitfront.evaluators.sandbox import Limits, Program, "
          "run_programs\nspec = json.load(sys.stdin)\noutcomes = run_programs([Program(**p) "
          "for p in spec['programs']], limits=Limits(**spec['limits']))\n"
          "json.dump([o.to_dict() for o in outcomes], sys.stdout)")


@functools.cache
def as_nobody() -> tuple[tuple[str, ...], str]:
    """The command that runs Python with bitfront's sandbox as nobody (setpriv, and an
    interpreter of at least 3.11 that nobody can run and bind into the sandbox: this one, else
    the system's), or () and why there is none."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return (), "setpriv (util-linux) is missing"
    drop = (setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")
    check = ("import sys\nassert sys.version_info >= (3, 11)\n"
             "from bitfront.evaluators.sandbox import require_sandbox\n"
             "require_sandbox('bubblewrap')")
    tried = []
    for python in dict.fromkeys((sys.executable,
                                 shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"))):
        if python is None:
            continue
        command = (*drop, python, "-S", "-B")
        found = subprocess.run([*command, "-c", check], env=nobody_env(), cwd="/",
                               capture_output=True, text=True, check=False)
        if found.returncode == 0:
            return command, ""
        tried.append(f"{python}: {(found.stderr.strip().splitlines() or ['?'])[-1]}")
    return (), f"nobody can run no Python >= 3.11 with bitfront here ({'; '.join(tried)})"


def nobody_env() -> dict[str, str]:
    """The few variables nobody's Python gets: bitfront from this checkout."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
            "LANG": "C.UTF-8"}


@pytest.fixture(params=["this user", "nobody"])
def user(request) -> str:
    """Who runs the sandbox: the user running the tests, or nobody where that is root."""
    if request.param == "nobody":
        if os.getuid() != 0:
            pytest.skip("the tests run as an unprivileged user already")
        if not as_nobody()[0]:
            pytest.skip(as_nobody()[1])
    return request.param


def run_as(user: str, programs: list[Program], limits: Limits) -> list[sandbox.Outcome]:
    """run_programs, in this process or, for nobody, in a Python of nobody's (DRIVER)."""
    if user == "this user":
        return run_programs(programs, limits=limits)
    spec = json.dumps({"limits": asdict(limits), "programs": [asdict(p) for p in programs]})
    done = subprocess.run([*as_nobody()[0], "-c", DRIVER], input=spec, env=nobody_env(),
                          cwd="/", capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [sandbox.Outcome(**outcome) for outcome in json.loads(done.stdout)]


def capped(user: str) -> bool:
    """Whether a sandbox's threads are capped when `user` runs it."""
    return user == "nobody" or bool(sandbox._pids_cgroups()) or sandbox._nproc_binds()


@pytest.fixture
def victim(tmp_path):
    """Files outside the sandbox that hostile programs go after."""
    directory = tmp_path / "victim"
    directory.mkdir()
    (directory / "keep.txt").write_text("precious")
    directory.chmod(0o755)
    return directory


@pytest.fixture
def secret():
    """A 0600 file in this user's home directory (/root in CI)."""
    marker = f"bitfront-secret-{os.urandom(8).hex()}"
    with tempfile.NamedTemporaryFile("w", dir=Path.home(), prefix=".bitfront-") as fh:
        fh.write(marker)
        fh.flush()
        yield Path(fh.name), marker


def _serve(server: socket.socket, accepted: list, stop: threading.Event) -> None:
    server.settimeout(0.2)
    while not stop.is_set():
        with contextlib.suppress(OSError):
            accepted.append(server.accept()[0])


@pytest.fixture
def listeners(tmp_path):
    """A TCP server on loopback, a pathname unix socket (like PostgreSQL's) and an abstract
    one, all counting the connections they accept."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    unix, abstract = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    path = tmp_path / ".s.PGSQL.5432"
    unix.bind(str(path))
    abstract.bind(f"\0{LEAK}")
    accepted: list = []
    stop = threading.Event()
    threads = []
    for server in (tcp, unix, abstract):
        server.listen()
        threads.append(threading.Thread(target=_serve, args=(server, accepted, stop)))
        threads[-1].start()
    yield {"port": tcp.getsockname()[1], "unix": str(path), "abstract": f"\\0{LEAK}"}, accepted
    stop.set()
    for thread, server in zip(threads, (tcp, unix, abstract), strict=True):
        thread.join()
        server.close()


def snapshot(directory: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


def sandbox_processes() -> set[int]:
    """Live or zombie processes of this suite's sandboxes: jails and bwraps (their command
    lines carry LIMITS' marker) and the judges (children of this process's judge server)."""
    server = sandbox._JUDGES.process.pid if sandbox._JUDGES.process else None
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if str(LIMITS.memory_bytes).encode() in cmdline or int(parent) == server:
                found.add(int(entry.name))
    return found


def sysv_ipc() -> set[tuple[str, str, str]]:
    """The System V IPC objects that exist (kind, key, id); their use counters are
    left out, since other tenants of the machine (CI's PostgreSQL) touch theirs."""
    return {(kind, *line.split()[:2]) for kind in ("shm", "msg", "sem")
            for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]}


def leftovers() -> set[Path]:
    """Temporary directories, files the programs tried to leave, this process's cgroups."""
    cgroups = sandbox._pids_cgroups()
    return {*Path(tempfile.gettempdir()).glob("bitfront-sandbox-*"),
            *(p for d in ("/tmp", "/run/lock", "/var/lock") for p in Path(d).glob(f"{LEAK}*")),
            *(Path(cgroups).glob(f"bitfront-{os.getpid()}-*") if cgroups else ())}


_LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
THREAD_BOMB = ("import threading, time\nwhile True:\n"
               "    threading.Thread(target=time.sleep, args=(60,)).start()")
FILES = "for i in range(100000):\n    open(f'f{i}', 'w').close()"


def device_modes() -> dict[str, int]:
    return {d: os.stat(d).st_mode for d in sandbox._DEVICES}


def hostile_programs(victim: Path, secret: Path, sockets: dict) -> dict[str, tuple]:
    """name: (program, the outcomes it may have, text its detail must contain)."""
    target = victim / "keep.txt"
    old = {  # the suite of the home-made jail
        "write /tmp": (f"open('/tmp/{LEAK}', 'w').write('x')", {"passed"}, ""),
        "infinite loop": ("while True:\n    pass", {"timeout"}, ""),
        "sleep forever": ("import time\ntime.sleep(10**6)", {"timeout"}, ""),
        "fork bomb": ("import os\nwhile True:\n    os.fork()", {"crashed"}, "BlockingIOError"),
        "memory bomb": ("blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 28))",
                        {"crashed"}, "MemoryError"),
        "1 GB to stdout": ("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n"
                           "    sys.stdout.write(chunk)\nsys.stdout.flush()", {"passed"}, ""),
        "write outside": (f"open({str(victim / 'new.txt')!r}, 'w').write('pwned')",
                          {"failed"}, "FileNotFoundError"),
        "overwrite outside": (f"open({str(target)!r}, 'w').write('pwned')", {"failed"}, ""),
        "delete outside": (f"import os\nos.remove({str(target)!r})", {"failed"}, ""),
        "network": (f"import socket\nsocket.create_connection(('127.0.0.1', "
                    f"{sockets['port']}), timeout=2)", {"failed"}, "Errno"),
        # It is the sandbox's PID 1: its parent is outside (getppid() is 0, and kill(0, ...)
        # signals its own group), and its own signals do not end it.
        "kill parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", {"passed"},
                        ""),
        "kill evaluator": (f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)",
                           {"failed"}, "ProcessLookupError"),
        "unbounded recursion": ("def f(n):\n    return f(n + 1)\nf(0)", {"crashed"}, ""),
        "sys.exit(0) first": ("import sys\nsys.exit(0)", {"crashed"}, "SystemExit"),
        "read stdin": ("data = input()", {"failed"}, "EOFError"),
        "os._exit(0)": ("import os\nos._exit(0)", {"crashed"}, "ended"),
    }
    scan = "import os, struct\nfor fd in range(3, 64):\n    try:\n        os.write(fd, {})\n" \
           "    except OSError:\n        pass\n"
    return old | {
        "read /etc/shadow": ("import sys\nprint(open('/etc/shadow').read(), file=sys.stderr)",
                             {"failed"}, "FileNotFoundError"),
        "read a 0600 file in ~": (f"import sys\nprint(open({str(secret)!r}).read(), "
                                  "file=sys.stderr)", {"failed"}, "FileNotFoundError"),
        "write /run/lock": (f"open('/run/lock/{LEAK}', 'w')", {"failed"}, ""),
        "write /var/lock": (f"open('/var/lock/{LEAK}', 'w')", {"failed"}, ""),
        "write /proc/sys": ("path = '/proc/sys/kernel/pid_max'\n"
                            "open(path, 'w').write(open(path).read())", {"failed"},
                            "Read-only file system"),
        "write the root": ("open('/x', 'w')", {"failed"}, "Read-only file system"),
        "open_by_handle_at": (
            "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "class Handle(ctypes.Structure):\n"
            "    _fields_ = [('size', ctypes.c_uint), ('type', ctypes.c_int),\n"
            "                ('data', ctypes.c_uint32 * 2)]\n"
            "root = Handle(8, 1, (ctypes.c_uint32 * 2)(2, 0))  # an ext4 root: inode 2\n"
            "mount = os.open('/usr/lib', os.O_RDONLY)\n"
            "if libc.open_by_handle_at(mount, ctypes.byref(root), os.O_RDONLY) < 0:\n"
            "    raise OSError(ctypes.get_errno(), 'open_by_handle_at')", {"failed"},
            "PermissionError"),
        "unix socket": (f"import socket\nsocket.socket(socket.AF_UNIX).connect("
                        f"{sockets['unix']!r})", {"failed"}, "FileNotFoundError"),
        "abstract socket": (f"import socket\nsocket.socket(socket.AF_UNIX).connect("
                            f"'{sockets['abstract']}')", {"failed"}, "ConnectionRefusedError"),
        "SysV shm": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                     "if libc.shmget(0, 1 << 20, 0o1600) < 0:\n"
                     "    raise OSError(ctypes.get_errno(), 'shmget')", {"failed"},
                     "PermissionError"),
        "threads are allowed": ("import threading\nt = threading.Thread(target=print)\n"
                                "t.start()\nt.join()", {"passed"}, ""),
        "fd exhaustion": ("files = [open('/dev/null') for _ in range(100000)]", {"crashed"},
                          "Too many open files"),
        "1 GB to stderr": ("import sys\nchunk = 'e' * (1 << 20)\nfor _ in range(1024):\n"
                           "    sys.stderr.write(chunk)\nsys.stderr.flush()", {"crashed"},
                           "Broken pipe"),
    } | {  # the round of issue 22
        "chmod the device nodes": ("import os\nfor d in ('/dev/null', '/dev/zero', "
                                   "'/dev/urandom'):\n    os.chmod(d, os.stat(d).st_mode & "
                                   "0o7777)", {"failed"}, "PermissionError"),
        "ACL on a device node": ("import os\nos.setxattr('/dev/null', "
                                 "'system.posix_acl_access', b'\\x02\\0\\0\\0')",
                                 {"failed"}, "PermissionError"),
        "touch a device node": ("import os\nos.utime('/dev/null')", {"failed"},
                                "PermissionError"),
        "the devices still work": ("open('/dev/null', 'w').write('x')\n"
                                   "assert len(open('/dev/zero', 'rb').read(4)) == 4\n"
                                   "assert len(open('/dev/urandom', 'rb').read(4)) == 4",
                                   {"passed"}, ""),
        "ptrace PID 1": (_LIBC + "if libc.ptrace(16, 1, 0, 0) < 0:  # PTRACE_ATTACH\n"
                         "    raise OSError(ctypes.get_errno(), 'ptrace')", {"failed"},
                         "PermissionError"),
        "process_vm_readv PID 1": (
            _LIBC + "buf = ctypes.create_string_buffer(8)\n"
            "class IOVec(ctypes.Structure):\n"
            "    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
            "local, remote = IOVec(ctypes.addressof(buf), 8), IOVec(0x400000, 8)\n"
            "if libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, "
            "0) < 0:\n    raise OSError(ctypes.get_errno(), 'process_vm_readv')", {"failed"},
            "PermissionError"),
        "pidfd_getfd PID 1": (_LIBC + "import os\npidfd = os.pidfd_open(1)\n"
                              "if libc.syscall(438, pidfd, 0, 0) < 0:\n"
                              "    raise OSError(ctypes.get_errno(), 'pidfd_getfd')",
                              {"failed"}, "PermissionError"),
        "flock a host file": ("import fcntl, os\nfcntl.flock(open(os.__file__), "
                              "fcntl.LOCK_EX)", {"failed"}, "No locks available"),
        "lockf a host file": ("import fcntl, os\nfcntl.lockf(open(os.__file__), "
                              "fcntl.LOCK_SH)", {"failed"}, "No locks available"),
        "fallocate stderr": ("import os\nos.posix_fallocate(2, 0, 64 << 20)", {"failed"},
                             "Illegal seek"),
        "huge status": (scan.format("b'x' * (64 << 20)"), {"crashed"}, "malformed"),
        "status without status": ("m = b'{\"detail\": \"forged\"}'\n"
                                  + scan.format("struct.pack('!I', len(m)) + m")
                                  + "os._exit(0)", {"crashed"}, "malformed"),
        "3000-deep directory tree": ("import os\nfor _ in range(3000):\n    os.mkdir('d')\n"
                                     "    os.chdir('d')", {"passed"}, ""),
        "thread bomb": (THREAD_BOMB, {"failed"}, "can't start new thread"),
        "100k empty files": (FILES, {"crashed"}, "No space left on device"),
        "100k hard links": ("import os\nopen('f', 'w').close()\nfor i in range(100000):\n"
                            "    os.link('f', f'l{i}')", {"crashed"}, "No space left on device"),
        "remount /tmp unbounded": (_LIBC + "if libc.mount(None, b'/tmp', None, 32, "
                                   "b'nr_inodes=0,size=0') < 0:  # MS_REMOUNT\n"
                                   "    raise OSError(ctypes.get_errno(), 'mount')",
                                   {"failed"}, "PermissionError"),
        "a user namespace": (_LIBC + "if libc.unshare(0x10000000) < 0:  # CLONE_NEWUSER\n"
                             "    raise OSError(ctypes.get_errno(), 'unshare')", {"failed"},
                             "PermissionError"),
        "SIGXCPU itself": ("import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)", {"passed"},
                           ""),
    }


def test_hostile_programs_are_contained_and_classified(victim, secret, listeners, user):
    """Every attack, as this user; as nobody, all but those that only run out the clock."""
    sockets, accepted = listeners
    secret_path, marker = secret
    before, ipc, left, modes = snapshot(victim), sysv_ipc(), leftovers(), device_modes()
    programs = {name: entry for name, entry in hostile_programs(victim, secret_path,
                                                                 sockets).items()
                if user == "this user" or entry[1] != {"timeout"}}
    processes_before = sandbox_processes()
    start = time.monotonic()
    outcomes = run_as(user, [Program(code, ("assert True",)) for code, _, _ in
                             programs.values()], LIMITS)
    elapsed = time.monotonic() - start
    for (name, (_, expected, text)), outcome in zip(programs.items(), outcomes, strict=True):
        assert outcome.status in expected and text in outcome.detail, (name, outcome)
        assert outcome.seconds <= LIMITS.timeout + 2, (name, outcome.seconds)
        assert len(outcome.stderr_tail) <= TAIL_BYTES and len(outcome.detail) <= 500
        for leaked in (marker, SHADOW_ROOT):
            assert leaked not in outcome.stderr_tail + outcome.detail, (name, leaked)
        assert outcome.isolation == "bubblewrap"
    assert elapsed < len(programs) * (LIMITS.timeout + 2) / 2 + 5
    assert snapshot(victim) == before and accepted == []
    assert sysv_ipc() == ipc and leftovers() == left and device_modes() == modes
    assert sandbox_processes() - processes_before == set()


def test_inside_the_sandbox():
    """A fresh /proc with one process (the jail, PID 1), no capabilities, a private hostname,
    no host files but the runtime, /tmp a tmpfs bounded in bytes and in inodes."""
    code = ("import os, socket\npids = sorted(p for p in os.listdir('/proc') if p.isdigit())\n"
            "status = open('/proc/self/status').read()\nhost = socket.gethostname()\n"
            "top = sorted(os.listdir('/'))\netc = os.path.exists('/etc/passwd')\n"
            "tmp = [line.split(' - ')[1] for line in open('/proc/self/mountinfo') "
            "if line.split()[4] == '/tmp']")
    tests = ("assert pids == ['1']", "assert 'CapEff:\\t0000000000000000' in status",
             "assert 'CapPrm:\\t0000000000000000' in status",
             "assert 'CapBnd:\\t0000000000000000' in status", "assert host == 'sandbox'",
             f"assert tmp[-1].startswith('tmpfs tmpfs rw,size={LIMITS.scratch_bytes >> 10}k,"
             f"nr_inodes={LIMITS.scratch_files},'), tmp",
             "assert set(top) <= {'bitfront', 'dev', 'lib', 'lib64', 'proc', 'root', 'tmp', "
             "'usr'}",
             "assert not etc")
    outcome = run_program(Program(code, tests, crosses=("pids", "status", "host", "top",
                                                        "etc", "tmp")), LIMITS)
    assert outcome.passed, outcome


ATTACKS = {  # the six ways an old program decided its own verdict, as model answers
    "__eq__ always True": "class Anything:\n    def __eq__(self, other):\n        return True\n\n"
                          "def {f}(*args):\n    return Anything()\n",
    "replace exec": "import builtins\n\n"
                    "def {f}(*args, _=setattr(builtins, 'exec', lambda *a, **k: None)):\n"
                    "    return None\n",
    "replace compile": "import builtins\n\ndef {f}(*args, _=setattr(builtins, 'compile', (lambda "
                       "c: lambda *a, **k: c('pass', 't', 'exec'))(compile))):\n"
                       "    return None\n",
    "status pipe from the caller's frame": (
        "import os\nimport sys\n\ndef _forge():\n    frame = sys._getframe(1)\n"
        "    while frame is not None:\n        for value in list(frame.f_locals.values()):\n"
        "            if type(value) is int and 2 < value < 1024:\n                try:\n"
        "                    os.write(value, b'{{\"status\": \"passed\"}}')\n"
        "                except OSError:\n                    pass\n"
        "        frame = frame.f_back\n    os._exit(0)\n\n"
        "def {f}(*args, _=_forge()):\n    return None\n"),
    "status pipe by scanning fds": (
        "import os\n\ndef _forge():\n    for fd in range(3, 1024):\n        try:\n"
        "            os.write(fd, b'{{\"status\": \"passed\"}}')\n        except OSError:\n"
        "            pass\n    os._exit(0)\n\ndef {f}(*args, _=_forge()):\n    return None\n"),
    "patch json.dumps": "import json\n\ndef {f}(*args, _=setattr(json, 'dumps', lambda *a, **k: "
                        "'{{\"status\": \"passed\"}}')):\n    return None\n",
}
CRASHERS = {  # answers that once ended the whole evaluation
    "330 nested not": "def {f}(*args):\n    return " + "not " * 330 + "args\n",
    "3000-deep tree": "import os\n\ndef {f}(*args, _=[(os.mkdir('d'), os.chdir('d')) "
                      "for _ in range(3000)]):\n    return None\n",
    "os._exit": "import os\n\ndef {f}(*args, _=os._exit(0)):\n    return None\n",
}


def test_the_six_fake_passes_fail_through_the_evaluators_path():
    task = bench_tasks("mbpp", style="instruct", limit=1)[0]
    answers = [a.format(f=task.entry_point) for a in ATTACKS.values()] + [task.reference]
    outcomes = run_programs([program_for(task, a) for a in answers], limits=LIMITS)
    # The jail writes its replies without json: a patched json.dumps changes nothing.
    assert [o.status for o in outcomes[:-1]] == ["failed"] * 3 + ["crashed"] * 2 + ["failed"], \
        outcomes
    assert "not plain data" in outcomes[0].detail and outcomes[-1].passed


class ScriptedLM:
    """A stand-in model whose answers are given per task (by the entry point its prompt's
    asserts call)."""

    name, family, use_chat = "scripted", "autoregressive", True

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def fingerprint(self) -> str:
        return "scripted-" + json.dumps(self.answers, sort_keys=True)[:32]

    def generate(self, prompts, options, **sampler) -> list[str]:
        return [next(a for f, a in self.answers.items() if f"assert {f}(" in p.user)
                for p in prompts]


def test_evaluate_survives_hostile_answers_and_resumes(tmp_path):
    """No correct answer: pass@1 is 0 (it was 0.75 when programs judged themselves); answers
    that crashed the evaluation are outcomes; a resume after them works."""
    answers = [*ATTACKS.values(), *CRASHERS.values()]
    tasks = bench_tasks("mbpp", style="instruct", limit=len(answers))
    lm = ScriptedLM({t.entry_point: a.format(f=t.entry_point)
                     for t, a in zip(tasks, answers, strict=True)})
    config = EvalConfig(limit=len(answers), timeout=LIMITS.timeout)
    out = tmp_path / "mbpp.json"
    report = evaluate(lm, config, out, show_progress=False)
    assert report["pass@1"] == 0.0 and sum(report["outcomes"].values()) == len(answers)
    journal = out.with_name(out.name + ".partial.jsonl")
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])  # killed mid-write
    again = evaluate(lm, config, out, show_progress=False)
    assert again["pass@1"] == 0.0 and again["tasks"] == len(answers)


def test_outcomes_name_the_failing_test_and_keep_stderr():
    code = "import sys\ndef add(a, b):\n    print('debug', file=sys.stderr)\n    return a - b"
    tests = ("assert add(2, 2) in (0, 4)", "assert add(2, 3) == 5", "assert add(0, 0) == 0")
    outcome = run_program(Program(code, tests, "add"), LIMITS)
    assert outcome.status == "failed"
    assert outcome.test == "assert add(2, 3) == 5"
    assert "debug" in outcome.stderr_tail
    assert run_program(Program("def add(a, b):\n    return a + b", tests, "add"), LIMITS).passed


def test_values_cross_by_value():
    """Plain data of every kind round-trips exactly; objects stay in the sandbox (usable as
    handles: called, passed back, attributes read and set) but take part in no assertion;
    the program's exceptions are the tests' to catch (not StopIteration, which would end a
    loop quietly); a lambda cannot be passed."""
    value = ("[None, True, 2**200, -7, 1.5, float('inf'), 2j, 'é\\udc80', b'\\x00', "
             "bytearray(b'a'), (1, (2,)), {1, 2}, frozenset({3}), {(1, 2): {'k': [1]}}]")
    code = (f"def same(x):\n    return x\n\ndef make():\n    return {value}\n\n"
            "class Node:\n    def __init__(self, v):\n        self.v, self.next = v, None\n\n"
            "def length(node):\n    return 0 if node is None else 1 + length(node.next)\n\n"
            "def mutate(items):\n    items.append(1)\n    return len(items)\n\n"
            "def fail(kind):\n    raise {'v': ValueError, 'k': KeyError}[kind]('no')\n\n"
            "def opaque():\n    return object()\n\ndef stop(x):\n    raise StopIteration\n\n"
            "LIMIT = 3\n")
    tests = (
        f"expected = {value}",
        "assert make() == expected and same(expected) == expected",
        "assert [type(x) for x in make()] == [type(x) for x in expected]",
        "assert math.isnan(same(float('nan')))",
        "head = Node(1)\nhead.next = Node(2)\nassert length(head) == 2 and head.next.v == 2",
        "items = []\nassert mutate(items) == 1 and items == []",  # by value: a copy
        "try:\n    fail('v')\nexcept ValueError as exc:\n    assert str(exc) == 'no'",
        "try:\n    fail('k')\nexcept KeyError:\n    pass",
        "assert LIMIT == 3",
    )
    names = ("same", "make", "Node", "length", "mutate", "fail", "opaque", "stop", "LIMIT")
    assert run_program(Program(code, ("import math", *tests), crosses=names), LIMITS).passed
    refused = {"assert opaque() == opaque()": "not plain data",
               "assert opaque()": "not plain data",
               "assert same(lambda: 1) == 1": "cannot be passed",
               "assert {opaque(): 1}": "unhashable",
               "assert all(map(stop, [1]))": "StopIteration"}  # not a quiet end of map()
    outcomes = run_programs([Program(code, (t,), crosses=names) for t in refused],
                            limits=LIMITS)
    for (test, text), outcome in zip(refused.items(), outcomes, strict=True):
        assert outcome.status == "failed" and text in outcome.detail, (test, outcome)


def test_the_wire_refuses_malformed_values():
    for data in ({"t": 1}, {"d": [[1]]}, {"x": []}, {"t": [], "s": []}, {"i": 5}, {"h": "0"},
                 {"s": [[1]]}, {"c": [1]}):
        with pytest.raises((TypeError, ValueError)):
            wire.decode(data, lambda n: n)
    assert wire.decode(wire.encode({"a": (1, {2})}, id), None) == {"a": (1, {2})}


def test_a_entry_point_may_shadow_a_builtin_but_nothing_else_does():
    """Where the task's own code defines it (MBPP's `sum`)."""
    code = "def sum(a, b):\n    return a * b\n\ndef sorted(x):\n    return 0\n"
    tests = ("assert sum(2, 3) == 6", "assert sorted([2, 1]) == [1, 2]")
    task = "def sum(a, b):\n    return a * b\n"
    assert run_program(Program(code, tests, entry_point="sum", context=task), LIMITS).passed


def test_missing_bubblewrap_refuses_in_one_line(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(BitfrontError, match="apt-get install bubblewrap") as info:
        run_programs([Program("x = 1", ())])
    assert "\n" not in str(info.value)


def test_unsafe_opt_out_still_judges_and_cleans_up(tmp_path):
    """Without bubblewrap: a loud warning, the same judge (no fake pass), rlimits, and the
    temporary directory removed however deep the program made it; evaluate() honours
    EvalConfig.unsafe_no_sandbox."""
    task = bench_tasks("mbpp", style="instruct", limit=1)[0]
    unsafe = replace(LIMITS, isolation="none")
    programs = [program_for(task, a.format(f=task.entry_point)) for a in ATTACKS.values()]
    programs += [program_for(task, CRASHERS["3000-deep tree"].format(f=task.entry_point)),
                 program_for(task, task.reference)]
    before = set(Path(tempfile.gettempdir()).glob("bitfront-sandbox-*"))
    with pytest.warns(RuntimeWarning, match="UNSAFE"):
        outcomes = run_programs(programs, limits=unsafe)
    assert [o.passed for o in outcomes] == [False] * (len(programs) - 1) + [True], outcomes
    assert {o.isolation for o in outcomes} == {"none"}
    assert set(Path(tempfile.gettempdir()).glob("bitfront-sandbox-*")) == before
    tasks = bench_tasks("mbpp", style="instruct", limit=2)
    lm = ScriptedLM({t.entry_point: ATTACKS["__eq__ always True"].format(f=t.entry_point)
                     for t in tasks})
    config = EvalConfig(limit=2, timeout=LIMITS.timeout, unsafe_no_sandbox=True)
    with pytest.warns(RuntimeWarning, match="UNSAFE"):
        report = evaluate(lm, config, tmp_path / "unsafe.json", show_progress=False)
    assert report["pass@1"] == 0.0
    assert {r["samples"][0]["isolation"] for r in report["results"]} == {"none"}


def test_nothing_of_the_evaluators_environment_is_inside(monkeypatch):
    """A canary in the evaluator's environment is in no process's environment inside, and
    reaches neither the verdict nor stderr; inside there is only the
    sandbox's own minimal environment."""
    canary = f"bitfront-canary-{os.urandom(8).hex()}"
    monkeypatch.setenv("BITFRONT_CANARY", canary)
    code = ("import os, sys\nenvs = []\nfor pid in os.listdir('/proc'):\n"
            "    if pid.isdigit() or pid == 'self':\n        try:\n"
            "            envs.append(open(f'/proc/{pid}/environ', 'rb').read().decode('latin-1'))\n"
            "        except OSError as exc:\n            envs.append(repr(exc))\n"
            "print(envs, os.environ, file=sys.stderr)\n")
    tests = (f"assert not [e for e in envs if {canary!r} in e], [e for e in envs if "
             f"{canary!r} in e]",
             "assert len(envs) == 2 and all(set(e.split('\\0')) - {''} <= {'LANG=C.UTF-8', "
             "'HOME=/tmp', 'PYTHONHASHSEED=0', 'PWD=/tmp'} for e in envs), envs")
    outcome = run_program(Program(code, tests, crosses=("envs",)), LIMITS)
    assert canary not in outcome.detail + outcome.stderr_tail
    assert outcome.passed, outcome


def test_limits_bind_the_sandboxs_pid_1_and_replies_are_capped_before_parsing():
    """The sandbox's PID 1 (the jail, started by a bwrap under the same limits) runs under the
    program's address-space and descriptor limits; a reply over wire.MAX_REPLY is refused
    unread."""
    code = ("def limits():\n    return open('/proc/1/limits').read()\n\n"
            "def big():\n    return 'x' * (2 << 20)\n")
    memory = LIMITS.memory_bytes
    tests = (f"text = limits()\nassert [line.split()[-3:-1] for line in text.splitlines() "
             f"if line.startswith(('Max address space', 'Max open files'))] == "
             f"[['{LIMITS.open_files}', '{LIMITS.open_files}'], ['{memory}', '{memory}']], "
             "text",)
    outcomes = run_programs([Program(code, tests, crosses=("limits",)),
                             Program(code, ("assert len(big()) == 2 << 20",), "big")],
                            limits=LIMITS)
    assert outcomes[0].passed, outcomes[0]
    assert outcomes[1].status == "crashed" and "byte limit" in outcomes[1].detail, outcomes[1]


COUNTED_THREADS = ("import _thread, threading, time\nthreading.stack_size(1 << 16)\nn = 0\n"
                   "try:\n    while n < 1000:  # its own bound, should the cap not hold\n"
                   "        _thread.start_new_thread(time.sleep, (60,))\n        n += 1\n"
                   "except RuntimeError:\n    pass\n")


def test_threads_stop_at_the_cap_whoever_runs_the_sandbox(user):
    """Raw threads stop at `processes` tasks in all, for root too (a pids cgroup per sandbox);
    a thread bomb fails; the evaluation goes on; nothing of them is left on the host."""
    if not capped(user):
        pytest.skip("root without a pids cgroup: threads are bounded by memory only (warned)")
    left, processes = leftovers(), sandbox_processes()
    programs = [Program(COUNTED_THREADS, (f"assert 0 < n < {LIMITS.processes}, n",),
                        crosses=("n",)),
                Program(THREAD_BOMB, ("assert True",)),
                Program("def f():\n    return 1", ("assert f() == 1",), "f")]
    counted, bombed, after = run_as(user, programs, LIMITS)
    assert counted.passed, counted
    assert bombed.status == "failed" and "can't start new thread" in bombed.detail, bombed
    assert after.passed, after
    assert leftovers() == left and sandbox_processes() - processes == set()


def test_scratch_space_is_bounded_in_files_and_bytes(user):
    """100k empty files stop at `scratch_files` (each costs the kernel memory however small),
    /tmp stops at `scratch_bytes`; both end as a resource limit, and the evaluation goes on."""
    limits = replace(LIMITS, scratch_files=4096)
    counted = ("n, error = 0, ''\ntry:\n    while n < 100000:\n"
               "        open(f'f{n}', 'w').close()\n        n += 1\n"
               "except OSError as exc:\n    error = str(exc)\n")
    programs = [Program(counted, ("assert 4000 < n < 4096 and 'No space left' in error, "
                                  "(n, error)",), crosses=("n", "error")),
                Program(FILES, ("assert True",)),
                Program("for i in range(8):\n    open(f'b{i}', 'wb').write(b'x' * (3 << 20))",
                        ("assert True",)),
                Program("def f():\n    return 1", ("assert f() == 1",), "f")]
    counted, files_out, bytes_out, after = run_as(user, programs, limits)
    assert counted.passed, counted
    for outcome in (files_out, bytes_out):
        assert outcome.status == "crashed" and "No space left on device" in outcome.detail, outcome
        assert "resource limit" in outcome.detail
    assert after.passed, after


def test_only_the_host_says_timeout():
    """A program cannot make its outcome a timeout: the signals a CPU limit sends, sent by
    itself, do not end it (it is the sandbox's PID 1), and it cannot set a CPU limit of its
    own; a timeout is the host's CPU limit, on the CPU time the kernel counted (or the host's
    wall clock)."""
    limits = replace(LIMITS, cpu_seconds=2, timeout=30.0)
    programs = {
        "spin": ("while True:\n    pass", "timeout", "CPU time exceeded 2 s"),
        "SIGXCPU itself": ("import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)", "passed",
                           ""),
        "SIGKILL itself": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "passed",
                           ""),
        "spin a little, then SIGXCPU": ("import os, signal, time\nwhile time.process_time() < "
                                        "0.5:\n    pass\nos.kill(os.getpid(), signal.SIGXCPU)",
                                        "passed", ""),
        "a CPU limit of its own": ("import resource\nassert resource.getrlimit("
                                   "resource.RLIMIT_CPU) == (2, 2)\nresource.setrlimit("
                                   "resource.RLIMIT_CPU, (1, 1))\nwhile True:\n    pass",
                                   "failed", "not allowed"),  # lowering it: EPERM
    }
    outcomes = run_programs([Program(code, ("assert True",)) for code, _, _ in
                             programs.values()], limits=limits)
    for (name, (_, status, text)), outcome in zip(programs.items(), outcomes, strict=True):
        assert outcome.status == status and text in outcome.detail, (name, outcome)


@pytest.mark.skipif(os.getuid() != 0, reason="only root is exempt from RLIMIT_NPROC")
def test_root_without_a_pids_cgroup_is_told_threads_are_uncapped():
    """Where root can make no pids cgroup (here: a private mount namespace without the cgroup
    file systems), the sandbox still runs and says so in one line."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is missing")
    code = ("import json, warnings\nfrom bitfront.evaluators import sandbox\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n    sandbox.require_sandbox('bubblewrap')\n"
            "print(json.dumps([sandbox._pids_cgroups(), [str(w.message) for w in caught]]))")
    done = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c",
                           'umount -R /sys/fs/cgroup; exec "$0" -c "$1"', sys.executable, code],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    cgroups, messages = json.loads(done.stdout)
    assert cgroups == "" and len(messages) == 1 and "\n" not in messages[0], messages
    assert "bounded by its memory only" in messages[0]


def populated(cgroups) -> bool:
    """Whether any of these cgroups (which may go meanwhile) holds a task."""
    for cgroup in cgroups:
        with contextlib.suppress(FileNotFoundError):
            if (cgroup / "cgroup.procs").read_text().strip():
                return True
    return False


def test_a_killed_evaluators_judges_end_and_its_cgroups_are_removed_by_the_next():
    """A killed evaluator's judge server and judges end with it; it leaves its sandbox's
    cgroup behind, emptied as the sandbox dies with it, and the next evaluator removes it."""
    parent = sandbox._pids_cgroups()
    if not parent:
        pytest.skip("no pids cgroup can be made here")
    code = ("from bitfront.evaluators.sandbox import Program, run_program\n"
            "run_program(Program('import time\\ntime.sleep(60)', ('assert True',)))")
    evaluator = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    mine, deadline = f"bitfront-{evaluator.pid}-*", time.monotonic() + 30
    servers: set[int] = set()
    judges: set[int] = set()
    while not (populated(Path(parent).glob(mine)) and judges):
        assert time.monotonic() < deadline and evaluator.poll() is None
        time.sleep(0.05)
        servers = children(evaluator.pid, b"judge.py")
        judges = {pid for server in servers for pid in children(server)}
    assert len(servers) == 1 and len(judges) == 1, (servers, judges)
    evaluator.kill()
    evaluator.wait()
    left = list(Path(parent).glob(mine))
    while populated(left) or any(map(alive, servers | judges)):  # they die with the evaluator
        assert time.monotonic() < deadline
        time.sleep(0.05)
    subprocess.run([sys.executable, "-c", "from bitfront.evaluators import sandbox\n"
                    "sandbox._pids_cgroups()"], cwd=REPO, check=True)
    assert left and not any(d.exists() for d in left)


def children(pid: int, marker: bytes = b"") -> set[int]:
    """The processes whose parent is `pid`, with `marker` in their command line."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == pid and marker in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (exists, and is no zombie)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except FileNotFoundError:
        return False
