"""The wire between the judge and the jail: plain data in length-prefixed frames.

A value crosses as JSON-ready data: None, bool, int, float and str as themselves, lists as
arrays, the other plain types as one-key objects: {"t": [...]} tuple, {"s": [...]} set,
{"f": [...]} frozenset, {"d": [[key, value], ...]} dict, {"c": [real, imag]} complex,
{"b": hex} bytes, {"y": hex} bytearray, {"i": hex} an int too long for a JSON number, and
{"h": n} a handle: an object that is not plain data, which stays on the side where it lives.
Encoding and decoding build exact built-in types only, so nothing a sender does to its own
objects (a custom `__eq__`, a subclass, a patched module) reaches the receiver.

The judge's requests cross as `marshal` (only the jail reads them, and only the judge writes
them); the jail's replies as JSON, written here (`reply`) and parsed by the judge with `json`,
which is safe on anything a program sends. So the jail, which imports this module inside the
sandbox, needs no `json` (nor the `re` it imports): standard library only, and CPython's
`_json` to quote strings.
"""

import marshal
import os
import struct
from _json import encode_basestring_ascii as _quote

MAX_FRAME = 16 << 20  # bytes in one message; a longer one is refused unread
MAX_REPLY = 1 << 20  # bytes in one reply from the jail: what the judge parses stays small
_HEADER = struct.Struct("!I")
_LONG = 1 << 64  # ints at least this large cross as hex (JSON numbers stop at 4300 digits)
_SEQUENCES = {"t": tuple, "s": set, "f": frozenset}
_INFINITIES = {float("inf"): "Infinity", float("-inf"): "-Infinity"}


def encode(value, handle):
    """`value` as JSON-ready data of exact built-in types; `handle(obj) -> int` names what is
    not plain data."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, int):
        value = int.__int__(value)
        return value if -_LONG < value < _LONG else {"i": format(value, "x")}
    if isinstance(value, list):
        return [encode(item, handle) for item in value]
    if isinstance(value, dict):
        return {"d": [[encode(k, handle), encode(v, handle)] for k, v in value.items()]}
    for tag, kind in _SEQUENCES.items():
        if isinstance(value, kind):
            return {tag: [encode(item, handle) for item in value]}
    if isinstance(value, complex):
        return {"c": [value.real, value.imag]}
    if isinstance(value, bytes):
        return {"b": value.hex()}
    if isinstance(value, bytearray):
        return {"y": value.hex()}
    return {"h": handle(value)}


def decode(data, resolve):
    """JSON-loaded `data` back to a value of exact built-in types; `resolve(n)` gives the
    object handle n names. Raises (ValueError, TypeError, ...) on anything malformed."""
    if isinstance(data, list):
        return [decode(item, resolve) for item in data]
    if not isinstance(data, dict):
        return data
    ((tag, body),) = data.items()
    if tag in _SEQUENCES:
        return _SEQUENCES[tag](decode(item, resolve) for item in _array(body))
    if tag == "d":
        return {decode(k, resolve): decode(v, resolve) for k, v in _array(body)}
    if tag == "c":
        real, imag = _array(body)
        return complex(float(real), float(imag))
    if tag in ("b", "y", "i"):
        if not isinstance(body, str):
            raise TypeError(f"malformed {tag!r} value")
        return int(body, 16) if tag == "i" else (bytes if tag == "b" else bytearray).fromhex(body)
    if tag == "h" and type(body) is int:
        return resolve(body)
    raise ValueError(f"unknown value tag {tag!r}")


def _array(body) -> list:
    if not isinstance(body, list):
        raise TypeError("malformed value")
    return body


def request(message) -> bytes:
    """A request's frame (the judge's: only the jail reads marshal)."""
    return _frame(marshal.dumps(message))


def reply(message) -> bytes:
    """A reply's frame: `message`, of `encode`'s data, as JSON (what `json.dumps` writes)."""
    return _frame(_json(message).encode())


def _json(data) -> str:
    """`data` as JSON, as `json.dumps` writes it (ASCII; NaN and Infinity allowed)."""
    if data is None or isinstance(data, bool):
        return "null" if data is None else "true" if data else "false"
    if isinstance(data, str):
        return _quote(data)
    if isinstance(data, int):
        return int.__repr__(data)
    if isinstance(data, float):
        return "NaN" if data != data else _INFINITIES.get(data) or float.__repr__(data)
    if isinstance(data, list):
        return f"[{','.join(map(_json, data))}]"
    return "{" + ",".join(f"{_quote(key)}:{_json(item)}" for key, item in data.items()) + "}"


def _frame(data: bytes) -> bytes:
    """A 4-byte length, then `data`."""
    if len(data) > MAX_FRAME:
        raise ValueError(f"a message of {len(data)} bytes is over the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(data)) + data


def send(fd: int, frame: bytes) -> None:
    view = memoryview(frame)
    while view:
        view = view[os.write(fd, view):]


def receive(fd: int, limit: int = MAX_FRAME) -> bytes:
    """The next message, unparsed; EOFError when the other side has gone, ValueError when
    it is over `limit` bytes (not read)."""
    (size,) = _HEADER.unpack(_read(fd, _HEADER.size))
    if size > limit:
        raise ValueError(f"a message of {size} bytes is over the {limit}-byte limit")
    return _read(fd, size)


def _read(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
