"""Parsers for the value syntaxes the keys use: booleans, quantities, durations, lists.

Each parser raises `InvalidValueError` naming the key, the value and what is allowed, because
that message is shown verbatim to the user by `kubectl` (admission denial) or in the agent log.
"""

from __future__ import annotations

import re

from .errors import InvalidValueError

_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
# Kubernetes quantity grammar (resource.Quantity): a signed decimal number followed by a
# binary SI suffix, a decimal SI suffix or a decimal exponent. Milli (`m`) is meaningless for
# bytes and is refused.
_QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<decimal>[kMGTPE]?)|[eE](?P<exp>[+-]?[0-9]+))$"
)
QUANTITY_ALLOWED = "a Kubernetes quantity of bytes such as 2Gi, 512Mi or 10G"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|m|s)")
DURATION_ALLOWED = "a duration such as 30s, 10m, 1h30m (minimum 10s) or a number of seconds"
MIN_INTERVAL_SECONDS = 10.0

# RFC 1123 DNS label: what Kubernetes allows as a container or volume name.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def parse_bool(key: str, value: str) -> bool:
    """`true`/`false`, as Kubernetes writes booleans in labels; nothing looser, so that a
    typo such as `yes please` is refused rather than silently meaning off."""
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise InvalidValueError(key, value, "true or false")


def parse_quantity(key: str, value: str) -> int:
    """Bytes of a Kubernetes quantity, rounded up to a whole byte; must be positive."""
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise InvalidValueError(key, value, QUANTITY_ALLOWED)
    from decimal import Decimal, InvalidOperation  # noqa: PLC0415 - the agent rarely needs it

    try:
        number = Decimal(match["number"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only digits
        raise InvalidValueError(key, value, QUANTITY_ALLOWED) from exc
    if match["binary"]:
        number *= _BINARY_SUFFIXES[match["binary"]]
    elif match["exp"] is not None:
        number *= Decimal(10) ** int(match["exp"])
    else:
        number *= _DECIMAL_SUFFIXES[match["decimal"] or ""]
    total = int(number.to_integral_value(rounding="ROUND_CEILING"))
    if total <= 0:
        raise InvalidValueError(key, value, QUANTITY_ALLOWED + ", greater than zero")
    return total


def parse_duration(key: str, value: str) -> float:
    """Seconds of a Go-style duration (`1h30m`, `45s`) or of a bare number of seconds."""
    text = value.strip()
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise InvalidValueError(key, value, DURATION_ALLOWED) from None
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    if not seconds >= MIN_INTERVAL_SECONDS:  # also refuses NaN
        raise InvalidValueError(key, value, DURATION_ALLOWED)
    return seconds


def parse_int(key: str, value: str, *, minimum: int, maximum: int) -> int:
    allowed = f"a whole number from {minimum} to {maximum}"
    try:
        number = int(value.strip())
    except ValueError:
        raise InvalidValueError(key, value, allowed) from None
    if not minimum <= number <= maximum:
        raise InvalidValueError(key, value, allowed)
    return number


def parse_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    lowered = value.strip().lower()
    if lowered not in choices:
        raise InvalidValueError(key, value, " | ".join(choices))
    return lowered


def split_list(value: str, separator: str) -> tuple[str, ...]:
    """Items of a separated list, stripped, empties dropped, order kept, duplicates removed."""
    items = (item.strip() for item in value.split(separator))
    return tuple(dict.fromkeys(item for item in items if item))


def parse_names(key: str, value: str, separator: str) -> tuple[str, ...]:
    """Container names: DNS labels. The separator is `,` in annotations and `.` in labels,
    because a label value cannot hold a comma (and a DNS label never holds a dot)."""
    names = split_list(value, separator)
    if not names:
        raise InvalidValueError(key, value, f"container names separated by '{separator}'")
    for name in names:
        if not is_dns_label(name):
            raise InvalidValueError(
                key, value, f"container names (RFC 1123 labels) separated by '{separator}'"
            )
    return names


def is_dns_label(text: str) -> bool:
    return _DNS_LABEL.match(text) is not None


def parse_volume_name(key: str, value: str) -> str:
    name = value.strip()
    if not is_dns_label(name):
        raise InvalidValueError(key, value, "the name of a volume of the pod")
    return name


def parse_paths(key: str, value: str) -> tuple[str, ...]:
    """Absolute paths, `,` separated. Only an annotation can hold them: a label value cannot
    contain `/`, so a label of this key is refused by the absolute-path rule itself."""
    allowed = "absolute paths separated by ',' (given as an annotation: labels cannot hold '/')"
    paths = split_list(value, ",")
    if not paths:
        raise InvalidValueError(key, value, allowed)
    for path in paths:
        if not path.startswith("/") or "\0" in path or "/../" in path + "/":
            raise InvalidValueError(key, value, allowed)
    return paths
