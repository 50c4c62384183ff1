"""Errors of the key API. One type, because every bad value is the same kind of user mistake,
and its message is the whole user interface: key, value, and what would have been accepted."""

from __future__ import annotations


class InvalidValueError(ValueError):
    """A key holds a value that is not allowed."""

    def __init__(self, key: str, value: str, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}: invalid value {value!r}; allowed: {allowed}")


class DownwardAPIFormatError(ValueError):
    """A downward-API file (pod labels or annotations) could not be read."""

    def __init__(self, path: str, line_number: int, reason: str) -> None:
        self.path = path
        self.line_number = line_number
        super().__init__(f"{path}:{line_number}: {reason}")
