"""Inside the sandbox: holds the candidate's program and objects and answers the judge.

Started by sandbox.py as `python -S -s -B jail.py LIMITS` (under bubblewrap), with stdin and
stdout the channel from and to the judge and stderr a capped pipe. It sets its rlimits, moves
the channel off fds 0 and 1 (stdin then reads, and print() writes, /dev/null), and serves:
`["load", code]` runs the program; `["lookup", names]` gives the values those names have in
it; `["call", h, args, kwargs]`, `["getattr", h, name]` and `["setattr", h, name, value]` use
the object handle h names. Replies are `["ok", value]` or `["error", type, message, errno]`.
Values cross by value (`wire`); what is not plain data stays here and crosses as a handle.
Nothing here decides a verdict: the program may take this process over entirely and can only
ever change the values the judge receives. Standard library only.
"""

import builtins
import json
import os
import resource
import sys

import wire


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
            request = wire.receive(inbox)
        except EOFError:
            return
        try:
            frame = wire.pack(["ok", wire.encode(answer(*request), handle)])
        except BaseException as exc:  # noqa: BLE001 - the program's failure, for the judge
            frame = wire.pack(_describe(exc))
        wire.send(outbox, frame)


def main() -> None:
    limits = json.loads(sys.argv[1])
    sys.setrecursionlimit(limits.pop("recursion"))
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    inbox, outbox = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    serve(inbox, outbox)


if __name__ == "__main__":
    main()
