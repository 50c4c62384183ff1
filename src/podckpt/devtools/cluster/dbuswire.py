"""The D-Bus wire format, as much of it as `logind` needs (little endian only).

Marshalling follows the D-Bus specification's rules (each value aligned to its type's size
from the start of the message; the body starts 8-aligned; header fields are an array of
(code, variant) structs). Supported types: y b u i t x h s o g v, arrays, structs and dict
entries - what the kubelet's calls to logind and the bus use. Why not a D-Bus library:
python3-dbus needs GLib and the system's Python, jeepney would be a new dependency for ~150
lines of code that only this development tool needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

CALL, RETURN, ERROR, SIGNAL = 1, 2, 3, 4
F_PATH, F_INTERFACE, F_MEMBER, F_ERROR, F_REPLY_SERIAL = 1, 2, 3, 4, 5
F_DESTINATION, F_SENDER, F_SIGNATURE, F_UNIX_FDS = 6, 7, 8, 9
_FIELD_SIG = {1: "o", 2: "s", 3: "s", 4: "s", 5: "u", 6: "s", 7: "s", 8: "g", 9: "u"}
_ALIGN = {"y": 1, "g": 1, "v": 1, "b": 4, "u": 4, "i": 4, "h": 4, "s": 4, "o": 4, "a": 4}
_ALIGN |= {"t": 8, "x": 8, "(": 8, "{": 8}
_FIXED = {"b": "<I", "u": "<I", "h": "<I", "i": "<i", "t": "<Q", "x": "<q"}


def _type_end(sig: str, i: int) -> int:
    """Index just past the single complete type that starts at ``sig[i]``."""
    c = sig[i]
    if c == "a":
        return _type_end(sig, i + 1)
    if c in "({":
        close, depth, j = {"(": ")", "{": "}"}[c], 1, i + 1
        while depth:
            depth += {c: 1, close: -1}.get(sig[j], 0)
            j += 1
        return j
    return i + 1


def split_signature(sig: str) -> list[str]:
    """``"sa{sv}(ub)"`` -> ``["s", "a{sv}", "(ub)"]``."""
    out, i = [], 0
    while i < len(sig):
        j = _type_end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _pad(buf: bytearray, n: int) -> None:
    buf.extend(b"\0" * (-len(buf) % n))


def encode(buf: bytearray, sig: str, value: Any) -> None:
    """Append ``value`` of the single complete type ``sig`` to ``buf`` (aligned from the
    start of ``buf``, which must be the start of the message or of its 8-aligned body)."""
    c = sig[0]
    _pad(buf, _ALIGN[c])
    if c == "y":
        buf.append(value)
    elif c in _FIXED:
        buf.extend(struct.pack(_FIXED[c], int(value)))
    elif c in "so":
        data = value.encode()
        buf.extend(struct.pack("<I", len(data)) + data + b"\0")
    elif c == "g":
        data = value.encode()
        buf.extend(bytes([len(data)]) + data + b"\0")
    elif c == "v":
        inner, inner_value = value
        encode(buf, "g", inner)
        encode(buf, inner, inner_value)
    elif c == "a":
        at = len(buf)
        buf.extend(b"\0\0\0\0")
        _pad(buf, _ALIGN[sig[1]])
        start = len(buf)
        items = value.items() if sig[1] == "{" else value
        for item in items:
            encode(buf, sig[1:], item)
        buf[at : at + 4] = struct.pack("<I", len(buf) - start)
    else:  # struct or dict entry
        for part, v in zip(split_signature(sig[1:-1]), value, strict=True):
            encode(buf, part, v)


def decode(data: bytes, pos: int, sig: str) -> tuple[Any, int]:
    """Read one value of type ``sig`` at ``pos``; returns (value, next position)."""
    c = sig[0]
    pos += -pos % _ALIGN[c]
    if c == "y":
        return data[pos], pos + 1
    if c in _FIXED:
        size = struct.calcsize(_FIXED[c])
        return struct.unpack_from(_FIXED[c], data, pos)[0], pos + size
    if c in "so":
        (n,) = struct.unpack_from("<I", data, pos)
        return data[pos + 4 : pos + 4 + n].decode(), pos + 5 + n
    if c == "g":
        n = data[pos]
        return data[pos + 1 : pos + 1 + n].decode(), pos + 2 + n
    if c == "v":
        inner, pos = decode(data, pos, "g")
        value, pos = decode(data, pos, inner)
        return (inner, value), pos
    if c == "a":
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        pos += -pos % _ALIGN[sig[1]]
        end, items = pos + n, []
        while pos < end:
            item, pos = decode(data, pos, sig[1:])
            items.append(item)
        return items, pos
    values = []
    for part in split_signature(sig[1:-1]):
        v, pos = decode(data, pos, part)
        values.append(v)
    return tuple(values), pos


@dataclass
class Message:
    """One D-Bus message: type, serial, header fields by code, body values."""

    type: int
    serial: int
    fields: dict[int, Any] = field(default_factory=dict)
    body: tuple[Any, ...] = ()
    flags: int = 0

    def to_bytes(self) -> bytes:
        sig = self.fields.get(F_SIGNATURE, "")
        body = bytearray()
        for part, value in zip(split_signature(sig), self.body, strict=True):
            encode(body, part, value)
        head = bytearray(b"l" + bytes([self.type, self.flags, 1]))
        head.extend(struct.pack("<II", len(body), self.serial))
        encode(head, "a(yv)", [(code, (_FIELD_SIG[code], v)) for code, v in self.fields.items()])
        _pad(head, 8)
        return bytes(head + body)


def parse(buf: bytes) -> tuple[Message, int] | None:
    """A complete message at the start of ``buf`` and its length, or None if incomplete."""
    if len(buf) < 16:
        return None
    if buf[0:1] != b"l":
        raise ValueError("only little-endian D-Bus messages are supported")
    body_len, serial, fields_len = struct.unpack_from("<III", buf, 4)
    header_end = 16 + fields_len
    body_start = header_end + (-header_end % 8)
    total = body_start + body_len
    if len(buf) < total:
        return None
    raw_fields, _ = decode(buf, 12, "a(yv)")
    fields = {code: value for code, (_, value) in raw_fields}
    body: tuple[Any, ...] = ()
    if sig := fields.get(F_SIGNATURE, ""):
        body, _ = decode(buf[body_start:total], 0, f"({sig})")
    return Message(buf[1], serial, fields, body, buf[2]), total
