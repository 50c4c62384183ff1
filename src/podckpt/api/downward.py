"""Reading the downward-API files that expose a pod's labels and annotations to the agent.

The kubelet writes one `key="value"` line per entry, the value quoted with Go's `%q`
(`fieldpath.FormatMap`). Reading the file at the moment of SIGTERM is what makes
`kubectl label pod P memverge.ai/checkpoint-mode-` take effect on a running pod.
"""

from __future__ import annotations

from .errors import DownwardAPIFormatError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def unquote_go(text: str) -> str:
    """Inverse of Go's `strconv.Quote` (which `%q` uses). Raises ValueError if malformed."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError("value is not a double-quoted string")
    body = text[1:-1]
    out: list[str] = []
    raw_bytes = bytearray()  # \x escapes are bytes of UTF-8, decoded together

    def flush() -> None:
        if raw_bytes:
            out.append(raw_bytes.decode("utf-8", errors="replace"))
            raw_bytes.clear()

    i = 0
    while i < len(body):
        char = body[i]
        if char == '"':
            raise ValueError("unescaped quote inside value")
        if char != "\\":
            flush()
            out.append(char)
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("dangling backslash")
        code = body[i + 1]
        if code in _SIMPLE_ESCAPES:
            flush()
            out.append(_SIMPLE_ESCAPES[code])
            i += 2
        elif code in _HEX_ESCAPES:
            width = _HEX_ESCAPES[code]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width:
                raise ValueError(f"short \\{code} escape")
            number = int(digits, 16)
            if code == "x":
                raw_bytes.append(number)
            else:
                flush()
                out.append(chr(number))
            i += 2 + width
        elif code in "01234567":
            digits = body[i + 1 : i + 4]
            raw_bytes.append(int(digits, 8))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{code}")
    flush()
    return "".join(out)


def parse_downward_text(text: str, path: str = "<text>") -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, quoted = line.partition("=")
        if not sep or not key:
            raise DownwardAPIFormatError(path, number, 'expected key="value"')
        try:
            entries[key] = unquote_go(quoted)
        except ValueError as exc:
            raise DownwardAPIFormatError(path, number, f"{key}: {exc}") from None
    return entries


def read_downward_file(path: str | Path) -> dict[str, str]:
    """Entries of a downward-API labels or annotations file."""
    with open(path, encoding="utf-8") as handle:
        return parse_downward_text(handle.read(), str(path))


def format_downward_text(entries: dict[str, str]) -> str:
    """The kubelet's format, for tests and the test sandbox (keys sorted, as the kubelet does).
    Python's JSON string escaping agrees with Go's %q for printable text."""
    import json  # noqa: PLC0415 - not needed to read the files

    return "".join(f"{k}={json.dumps(v, ensure_ascii=False)}\n" for k, v in sorted(entries.items()))
