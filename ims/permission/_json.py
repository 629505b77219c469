"""Strict JSON (RFC 8259) for the extension's bodies: UTF-8, one object, unique names."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class JsonDefect(ValueError):
    """The defect, in words a reason phrase can carry."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 section 4: names SHOULD be unique; a repeated one would let two readers see
    # two different values, so it is refused.
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise JsonDefect(f'member "{name[:40]}" appears twice')
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise JsonDefect(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; RFC 8259 not


def load_object(data: bytes | str) -> dict[str, Any]:
    """The JSON object in `data`, or JsonDefect."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")  # RFC 8259 section 8.1
        except UnicodeDecodeError as exc:
            raise JsonDefect(f"not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    try:
        value = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise JsonDefect(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise JsonDefect("nested too deeply") from None
    if not isinstance(value, dict):
        raise JsonDefect("not a JSON object")
    return value


def dump(value: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, members in the order given."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


Checker = Callable[[object], bool]


def is_int(value: object) -> bool:
    """A JSON integer (bool is an int in Python, not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool)
