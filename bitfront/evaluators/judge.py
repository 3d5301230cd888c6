"""The judge: runs a benchmark's tests, outside the sandbox, against a program that lives in it.

Started once by sandbox.py as `python -S -B judge.py CONTROL`, a fork server: for each request
on the socket CONTROL it forks a judge, which reads the spec (`program`, `tests`,
`entry_point`, `context`, `crosses`, `limits`) as JSON from its channel to the evaluator, sets
its own rlimits and writes its verdict there as one JSON object. The server itself runs nothing
of a task's or a program's, so every judge starts from the same state, that of a fresh
interpreter that imported this module, and nothing of one judge reaches another.

A judge trusts only the task: the names the tests read but do not define are built-ins (the
judge's own) or come from the task's own code (`context`: the statements of a reference
solution or of HumanEval's prompt that bind them, such as `poly` or `import sys`, run here),
except the entry point and the classes the tests build arguments from (`crosses`), which alone
are taken from the program; an entry point is never a built-in unless the task's code defines
it (MBPP's `sum`). It sends the program to the jail, asks it for those names, and runs each
test here. A name's value crosses by value if it is plain data; anything else (a function, a
class, an instance) becomes a `Remote`: calling it, reading or setting its attributes are
requests whose arguments and results cross by value (`wire`), and it cannot be compared,
hashed or tested for truth, so no object of the program's ever takes part in an assertion.
The verdict is decided here: passed when every test ran without an exception.
"""

import ast
import builtins
import contextlib
import errno
import json
import os
import resource
import select
import signal
import socket
import sys

import wire

_EXHAUSTION = {"MemoryError", "RecursionError", "BlockingIOError"}
_EXHAUSTION_ERRNOS = {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.EFBIG, errno.ENOSPC,
                      errno.EPIPE}  # EPIPE: its stderr went over the cap; ENOSPC: its /tmp
_CONTROL_FLOW = {"StopIteration", "StopAsyncIteration"}  # would end a test's loop quietly


class SandboxLost(BaseException):  # noqa: N818 - not an Exception: tests must not swallow it
    """The jail ended (`ended`: exit, signal, limit) or broke the protocol."""

    def __init__(self, message: str, ended: bool):
        super().__init__(message)
        self.ended = ended


class CandidateError(Exception):
    """An exception of the program's that is not a built-in exception."""


class Remote:
    """An object of the program's that is not plain data: it stays in the sandbox."""

    __slots__ = ("_channel", "_handle")

    def __init__(self, channel: "Channel", handle: int):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_handle", handle)

    def __call__(self, *args, **kwargs):
        return self._channel.request("call", self._handle, list(args), kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._channel.request("getattr", self._handle, name)

    def __setattr__(self, name: str, value) -> None:
        self._channel.request("setattr", self._handle, name, value)

    def _opaque(self, *args):
        raise TypeError(f"{self!r} is not plain data: it cannot be compared or tested")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = _opaque
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<sandbox object #{self._handle}>"


class Channel:
    """Requests to the jail, one at a time; broken for good after any protocol failure."""

    def __init__(self, to_jail: int, from_jail: int):
        self.to_jail, self.from_jail = to_jail, from_jail
        self.lost: SandboxLost | None = None

    def _handle(self, value) -> int:
        if isinstance(value, Remote) and value._channel is self:
            return value._handle
        raise TypeError(f"a {type(value).__name__} is not plain data and cannot be passed to "
                        "the program")

    def _remote(self, handle: int) -> Remote:
        return Remote(self, handle)

    def request(self, op: str, *args):
        frame = wire.request([op, *(wire.encode(arg, self._handle) for arg in args)])
        if self.lost:
            raise self.lost
        try:
            wire.send(self.to_jail, frame)
            reply = json.loads(wire.receive(self.from_jail, wire.MAX_REPLY))  # capped first
            if reply[0] == "ok" and len(reply) == 2:
                return wire.decode(reply[1], self._remote)
            if reply[0] != "error" or len(reply) != 4:
                raise ValueError("not a reply")
        except (EOFError, BrokenPipeError) as exc:
            self.lost = SandboxLost(f"the program's process ended ({exc})", ended=True)
        except Exception as exc:  # noqa: BLE001 - anything malformed the jail sent
            self.lost = SandboxLost(f"the sandbox sent a malformed reply ({type(exc).__name__}: "
                                    f"{exc})"[:300], ended=False)
        if self.lost:
            raise self.lost
        raise _candidate_error(*reply[1:])


def _candidate_error(name, message, number) -> Exception:
    """The program's exception as a built-in one of the same name where there is one (tests
    may catch it; not StopIteration), else a CandidateError; `candidate_type` keeps the
    original name."""
    name, message = str(name)[:100], str(message)[:500]
    kind = getattr(builtins, name, None)
    exc: Exception
    try:
        if not (isinstance(kind, type) and issubclass(kind, Exception)) or name in _CONTROL_FLOW:
            raise TypeError
        exc = kind(message)
    except Exception:  # noqa: BLE001 - no such built-in, or one with other arguments
        exc = CandidateError(f"{name}: {message}")
    if isinstance(exc, OSError):
        exc.errno = number if type(number) is int else None
    exc.candidate_type = name  # type: ignore[attr-defined]
    return exc


def _free_names(tests: list[str]) -> set[str]:
    """Names the tests read but never bind (built-ins included)."""
    read, bound = set(), set()
    for node in (node for test in tests for node in ast.walk(ast.parse(test))):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg) or isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.arg if isinstance(node, ast.arg) else node.name)
    return {name for name in read - bound if not name.startswith("__")}


def _bindings(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """The top-level statements that bind a name (imports, definitions, simple assignments),
    by the name they bind."""
    found: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                found[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    found[target.id] = node
    return found


def sources(tests: list[str], entry_point: str | None, context: str,
            crosses: list[str]) -> tuple[str, list[str]]:
    """Where each name the tests read but do not bind comes from, as (the task's code to run
    here, the names to take from the program). Only the entry point and the names in
    `crosses` (classes the tests build arguments from) come from the program; the entry point
    only where it is not a built-in, or the task's own code (`context`: a reference solution,
    HumanEval's prompt) defines it. Every other name is a built-in (the judge's own) or comes
    from the statements of `context` that bind it, with those they need in turn; a name none
    of these binds stays unbound."""
    free = _free_names(tests)
    body = ast.parse(context).body
    defined = _bindings(body)
    program = set(crosses) - set(dir(builtins))
    if entry_point and (entry_point not in dir(builtins) or entry_point in defined):
        program.add(entry_point)
    wanted = {name for name in free - program if name in defined}
    stack = list(wanted)
    while stack:
        for sub in ast.walk(defined[stack.pop()]):
            name = sub.id if isinstance(sub, ast.Name) else None
            if name in defined and name not in wanted and name not in program:
                wanted.add(name)
                stack.append(name)
    chosen = [node for node in body if any(node is defined[name] for name in wanted)]
    code = ast.unparse(ast.Module(body=chosen, type_ignores=[])) if chosen else ""
    return code, sorted(program & free)


def _verdict(exc: BaseException, stage: int | None, tests: list[str]) -> dict:
    kind = getattr(exc, "candidate_type", type(exc).__name__)
    where = "the program" if stage is None else f"test {stage}"
    if isinstance(exc, SandboxLost):
        return {"status": "crashed", "detail": f"{exc} during {where}", "ended": exc.ended}
    if kind in _EXHAUSTION or getattr(exc, "errno", None) in _EXHAUSTION_ERRNOS:
        return {"status": "crashed", "detail": f"{kind} in {where} (resource limit): {exc}"[:500]}
    if kind == "SystemExit":
        return {"status": "crashed", "detail": f"SystemExit in {where} before the tests finished"}
    test = "" if stage is None else (tests[stage].strip().splitlines() or [""])[0]
    return {"status": "failed", "detail": f"{kind}: {exc}"[:500], "test": test}


def judge(spec: dict, channel: Channel) -> dict:
    tests = spec["tests"]
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:  # the task's own code first: what it binds, the program cannot replace
        task, wanted = sources(tests, spec["entry_point"], spec.get("context", ""),
                               spec.get("crosses", []))
        exec(compile(task, "task.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - trusted code: a failure of ours
        return {"status": "crashed",
                "detail": f"the task's own code failed: {type(exc).__name__}: {exc}"[:500]}
    try:
        channel.request("load", spec["program"])
        values = channel.request("lookup", wanted)
        namespace.update({name: values[name] for name in wanted if name in values})
    except BaseException as exc:  # noqa: BLE001 - decided below
        return _verdict(exc, None, tests)
    for stage, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{stage}.py", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - decided below
            return _verdict(exc, stage, tests)
    if channel.lost:  # a test swallowed the loss
        return _verdict(channel.lost, len(tests) - 1, tests)
    return {"status": "passed", "detail": ""}


def serve(control: socket.socket) -> None:
    """The fork server. A request on `control` is a message with four descriptors: the
    judge's channel to the evaluator, to the jail and from it, and a lease. Each gets a judge
    of its own, killed with its process group and reaped when the lease ends (the evaluator
    shut its end, or has gone), after which the server closes its end of the lease; every
    judge ends when `control` does."""
    leases: dict[socket.socket, int] = {}
    while True:
        for ready in select.select([control, *leases], [], [])[0]:
            if ready is not control:
                _end(leases.pop(ready))
                ready.close()
                continue
            fds = socket.recv_fds(control, 1, 4)[1]
            if len(fds) != 4:  # the evaluator has gone
                for pid in leases.values():
                    _end(pid)
                return
            pid = os.fork()
            if pid == 0:
                try:
                    for held in (control, *leases):
                        held.close()
                    os.close(fds[3])
                    _judge(*fds[:3])
                finally:
                    os._exit(0)
            for fd in fds[:3]:
                os.close(fd)
            leases[socket.socket(fileno=fds[3])] = pid


def _end(pid: int) -> None:
    """Kill a judge (not reaped yet, so its pid and process group are still its own) and
    reap it."""
    for kill in (os.killpg, os.kill):  # the group from its setsid on
        with contextlib.suppress(ProcessLookupError):
            kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _judge(channel: int, to_jail: int, from_jail: int) -> None:
    """One judge, in a session of its own: the spec to the end of `channel`, the verdict back
    on it. What the tests print goes nowhere (the server's stdout is /dev/null)."""
    os.setsid()
    chunks = []
    while chunk := os.read(channel, 1 << 16):
        chunks.append(chunk)
    spec = json.loads(b"".join(chunks))
    for name, (soft, hard) in spec["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    try:
        verdict = judge(spec, Channel(to_jail, from_jail))
    except BaseException as exc:  # noqa: BLE001 - our own failure, still a verdict
        verdict = {"status": "crashed", "detail": f"judge: {type(exc).__name__}: {exc}"[:500]}
    wire.send(channel, json.dumps(verdict).encode())


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
