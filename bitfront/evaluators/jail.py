"""Inside the sandbox: holds the candidate's program and objects and answers the judge.

Started by sandbox.py as `python -S -B jail.py NAME=VALUE...` (its limits; under bubblewrap from
its compiled code, `jail.pyc`), with stdin and stdout the channel from and to the judge and
stderr a capped pipe. Under bubblewrap it first mounts its scratch space, a tmpfs bounded in
bytes and in files, at /tmp (bubblewrap 0.8 cannot bound a tmpfs's inodes) and drops the two
capabilities bubblewrap left it for that, for good. It sets its rlimits, moves the channel off
fds 0 and 1 (stdin then reads, and print() writes, /dev/null), and serves:
`["load", code]` runs the program; `["lookup", names]` gives the values those names have in
it; `["call", h, args, kwargs]`, `["getattr", h, name]` and `["setattr", h, name, value]` use
the object handle h names. Replies are `["ok", value]` or `["error", type, message, errno]`.
Values cross by value (`wire`); what is not plain data stays here and crosses as a handle.
Nothing here decides a verdict: the program may take this process over entirely and can only
ever change the values the judge receives. Standard library only, and no more of it than it
needs: every program pays for the jail's start.
"""

import builtins
import ctypes
import marshal
import os
import resource
import sys

import wire

_MS_NOSUID, _MS_NODEV = 2, 4
_PR_CAPBSET_READ, _PR_CAPBSET_DROP = 23, 24
_CAPABILITY_VERSION_3 = 0x20080522


def scratch(size: int, files: int) -> None:
    """Mount a fresh tmpfs of `size` bytes and at most `files` inodes at /tmp and make it the
    working directory, then drop every capability: the bounding set (CAP_SETPCAP), then the
    effective, permitted and inheritable sets (the ambient set follows). No new privileges
    (bubblewrap's) keeps them from coming back through exec."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result < 0:
            raise OSError(ctypes.get_errno(), f"the jail could not {what}")

    options = f"size={size},nr_inodes={files},mode=0755".encode()
    check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", _MS_NOSUID | _MS_NODEV, options), "mount /tmp")
    os.chdir("/tmp")
    cap = 0
    while libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) >= 0:  # up to the last one there is
        check(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), "drop its bounding set")
        cap += 1
    header, sets = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0), (ctypes.c_uint32 * 6)()
    check(libc.capset(header, sets), "drop its capabilities")


def _describe(exc: BaseException) -> list:
    try:
        message = str(exc)[:500]
    except Exception:  # noqa: BLE001 - a hostile __str__
        message = "(unprintable)"
    number = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else None
    return ["error", type(exc).__name__, message, number]


def serve(inbox: int, outbox: int) -> None:
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    objects: list = []

    def handle(value) -> int:
        objects.append(value)
        return len(objects) - 1

    def answer(op: str, *args):
        if op == "load":
            exec(compile(args[0], "program.py", "exec"), namespace)
            return None
        if op == "lookup":
            return {name: namespace[name] for name in args[0] if name in namespace}
        target = objects[args[0]]
        if op == "call":
            return target(*wire.decode(args[1], objects.__getitem__),
                          **wire.decode(args[2], objects.__getitem__))
        if op == "getattr":
            return getattr(target, args[1])
        setattr(target, args[1], wire.decode(args[2], objects.__getitem__))
        return None

    while True:
        try:
            request = marshal.loads(wire.receive(inbox))
        except EOFError:
            return
        try:
            frame = wire.reply(["ok", wire.encode(answer(*request), handle)])
        except BaseException as exc:  # noqa: BLE001 - the program's failure, for the judge
            frame = wire.reply(_describe(exc))
        wire.send(outbox, frame)


def main() -> None:
    """The limits, from the command line: `scratch=BYTES,FILES` (under bubblewrap),
    `recursion=N`, and rlimits as `RLIMIT_AS=N` (soft and hard)."""
    limits = dict(arg.split("=", 1) for arg in sys.argv[1:])
    if "scratch" in limits:
        scratch(*map(int, limits.pop("scratch").split(",")))
    sys.setrecursionlimit(int(limits.pop("recursion")))
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (int(value), int(value)))
    inbox, outbox = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    serve(inbox, outbox)


if __name__ == "__main__":
    main()
