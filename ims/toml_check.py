"""Checking a TOML configuration file: typed access to its tables and a problem list that
names every defect with its key, line and fix (not only the first one).

Shared by the operator configuration (ims.config) and the UE configuration (ue_ua.config), so
both report in one style. A validator reads the file's tables through `Table` (which records
the keys it asked for, to report the unknown ones), adds to one `Problems`, and raises its own
error family with `Problems.ordered()`.

Line numbers: tomllib reports lines for syntax errors only. For a semantic problem the line is
found by scanning the file text for the table header and the `key =` line (and, for an element
of an array, the line holding that element's string). That is best effort: a key written in an
unusual form (inline tables, dotted keys spread over tables) may be reported without a line.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MISSING",
    "ConfigProblem",
    "HostPort",
    "KeyLines",
    "KeyPath",
    "Problems",
    "Table",
    "format_key",
    "host_port",
    "ip_literal",
    "is_domain",
    "show",
    "split_key",
    "syntax_problem",
]

# A key's place in the file: table and key names, with the index of an array element
# (("border", "peers", 0, "name") is border.peers[0].name).
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigProblem:
    """One problem: the dotted key (`pcscf.listen[1]`; "" for the whole file), the line and
    column when known, and a message saying what is wrong and what is expected."""

    key: str
    message: str
    line: int | None = None
    column: int | None = None

    def format(self, file_label: str) -> str:
        where = []
        if self.key:
            where.append(self.key)
        if self.line is not None:
            pos = f"line {self.line}" + (f", column {self.column}" if self.column else "")
            where.append(f"({pos})" if self.key else pos)
        head = f"{file_label}: " + (" ".join(where) + ": " if where else "")
        return head + self.message


@dataclass(frozen=True)
class HostPort:
    """An IP literal (no brackets) and a port, e.g. the DNS server or the metrics listener."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# --------------------------------------------------------------------------------------------
# Syntax errors: tomllib's message with its position
# --------------------------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$|\s*\(at end of document\)$")


def syntax_problem(message: str, text: str) -> ConfigProblem:
    """The problem of a file tomllib refused: `message` is the TOMLDecodeError's text, `text`
    the file's (to place "at end of document" on its last line)."""
    match = _TOML_POSITION.search(message)
    if match is None:
        return ConfigProblem("", f"invalid TOML: {message}")
    reason = message[: match.start()]
    if match.group(1) is None:  # "at end of document"
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        return ConfigProblem("", f"invalid TOML: {reason} (at the end of the file)", max(line, 1))
    return ConfigProblem(
        "", f"invalid TOML: {reason}", int(match.group(1)), int(match.group(2))
    )


# --------------------------------------------------------------------------------------------
# Finding a key's line (best effort, see the module docstring)
# --------------------------------------------------------------------------------------------

_KEY_PART = r'(?:"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY_PART)


def split_key(dotted: str) -> tuple[str, ...]:
    """The names of a dotted TOML key as written (`a."b.c".d` is ("a", "b.c", "d"))."""
    parts = []
    for token in _PART.findall(dotted):
        if token.startswith('"'):
            parts.append(json.loads(token))
        elif token.startswith("'"):
            parts.append(token[1:-1])
        else:
            parts.append(token)
    return tuple(parts)


class KeyLines:
    """Maps key paths (with array-of-tables indices) to the 1-based line defining them."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.where: dict[KeyPath, int] = {}
        self.table_end: dict[int, int] = {}  # header line -> last line of that table
        array_counts: dict[tuple[str, ...], int] = {}
        current: KeyPath = ()
        header_line = 0
        for number, line in enumerate(self.lines, start=1):
            header = _HEADER.match(line)
            if header:
                self.table_end[header_line] = number - 1
                header_line = number
                names = split_key(header.group(2))
                current = self._resolve(names, array_counts)
                if header.group(1) == "[[":
                    count = array_counts.get(names, 0)
                    array_counts[names] = count + 1
                    current = (*current, count)
                self.where.setdefault(current, number)
                continue
            key = _KEY_LINE.match(line)
            if key:
                self.where.setdefault((*current, *split_key(key.group(1))), number)
        self.table_end[header_line] = len(self.lines)

    @staticmethod
    def _resolve(names: tuple[str, ...], counts: Mapping[tuple[str, ...], int]) -> KeyPath:
        # [border.peers.x] after [[border.peers]] means border.peers[<last>].x
        out: list[str | int] = []
        for i, name in enumerate(names):
            out.append(name)
            seen = counts.get(names[: i + 1])
            if seen and i < len(names) - 1:
                out.append(seen - 1)
        return tuple(out)

    def line_of(self, path: KeyPath, value: object = None, occurrence: int = 0) -> int | None:
        """The line of `path`, else of its longest known prefix. With `value` (a string
        element of an array), the line holding its `occurrence`-th appearance after that."""
        for cut in range(len(path), 0, -1):
            prefix = path[:cut]
            line = self.where.get(prefix)
            if line is None:
                # A table known only through its subtables ([[border.peers]] without [border]).
                below = [n for p, n in self.where.items() if p[:cut] == prefix]
                if not below:
                    continue
                return min(below)
            if cut < len(path) and isinstance(value, str) and value:
                found = self._find_string(value, line, occurrence)
                if found is not None:
                    return found
            return line
        return None

    def _find_string(self, value: str, start: int, occurrence: int) -> int | None:
        header = max((h for h in self.table_end if h <= start), default=0)
        end = self.table_end.get(header, len(self.lines))
        needles = (json.dumps(value, ensure_ascii=False), f"'{value}'")
        for number in range(start, end + 1):
            line = self.lines[number - 1]
            occurrence -= sum(line.count(n) for n in needles)
            if occurrence < 0:
                return number
        return None


# --------------------------------------------------------------------------------------------
# Naming a key and a value in messages
# --------------------------------------------------------------------------------------------


def format_key(path: KeyPath) -> str:
    """A key path as a dotted key, e.g. `border.peers[0].name` (odd names quoted)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


def show(value: object) -> str:
    """A value as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


class Problems:
    """Every problem found in one file, each placed on its line by `lines`."""

    def __init__(self, lines: KeyLines) -> None:
        self.lines = lines
        self.items: list[ConfigProblem] = []

    def add(self, path: KeyPath, message: str, value: object = None, occurrence: int = 0) -> None:
        self.items.append(ConfigProblem(format_key(path), message,
                                        self.lines.line_of(path, value, occurrence)))

    def ordered(self) -> list[ConfigProblem]:
        """The problems in file order; those without a line (rare) last."""
        return sorted(self.items, key=lambda p: (p.line is None, p.line or 0))


# --------------------------------------------------------------------------------------------
# Typed access to one table, with unknown-key detection
# --------------------------------------------------------------------------------------------

# What `Table.raw` returns for an absent key (a TOML value is never None).
MISSING: Final = object()


class Table:
    """One TOML table at `path`: typed getters that report a wrong value as a problem (and
    return None), and `finish()` to report the keys no getter asked for."""

    def __init__(self, data: Mapping[str, object], path: KeyPath, problems: Problems) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.used: set[str] = set()

    def problem(self, key: str | KeyPath, message: str, value: object = None) -> None:
        sub = (key,) if isinstance(key, str) else key
        occurrence = 0
        if len(sub) == 2 and isinstance(sub[1], int):
            # The same string twice in one array: point at the right one.
            items = self.data.get(str(sub[0]))
            if isinstance(items, list):
                occurrence = items[: sub[1]].count(value)
        self.problems.add((*self.path, *sub), message, value, occurrence)

    def raw(self, key: str) -> object:
        self.used.add(key)
        return self.data.get(key, MISSING)

    def present(self, key: str) -> bool:
        return key in self.data

    def required(self, key: str, what: str) -> object:
        value = self.raw(key)
        if value is MISSING:
            self.problem(key, f"missing; expected {what}")
        return value

    def string(self, key: str, what: str, default: str | None = None,
               required: bool = False) -> str | None:
        value = self.required(key, what) if required else self.raw(key)
        if value is MISSING:
            return default
        if not isinstance(value, str):
            self.problem(key, f"{show(value)} is not a string; expected {what}")
            return None
        return value

    def number(self, key: str, what: str, default: float, low: float, high: float,
               integer: bool = False) -> float | None:
        value = self.raw(key)
        if value is MISSING:
            return default
        kind = "an integer" if integer else "a number"
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            self.problem(key, f"{show(value)} is not {kind}; expected {what}")
            return None
        assert isinstance(value, int | float)
        if not (math.isfinite(value) and low <= value <= high):
            self.problem(key, f"{show(value)} is out of range; expected {what}")
            return None
        return float(value)

    def strings(self, key: str, what: str, required: bool = False) -> list[str] | None:
        """A list of strings; wrong elements are reported one by one and left out."""
        value = self.required(key, f"an array of {what}") if required else self.raw(key)
        if value is MISSING:
            return None
        if not isinstance(value, list):
            self.problem(key, f"{show(value)} is not an array; expected an array of {what}")
            return None
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.problem((key, i), f"{show(item)} is not a string; expected {what}")
        return out

    def table(self, key: str) -> Table | None:
        value = self.raw(key)
        if value is MISSING:
            return None
        if not isinstance(value, dict):
            self.problem(key, f"{show(value)} is not a table; write it as [{key}]")
            return None
        return Table(value, (*self.path, key), self.problems)

    def finish(self, hint: str = "") -> None:
        """Report every key that was never asked for (with `hint` as the message when no
        known key is close)."""
        known = sorted(self.used)
        for key in self.data:
            if key in self.used:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            if close:
                self.problem(key, f"unknown key; did you mean {close[0]!r}?")
            elif hint:
                self.problem(key, hint)
            else:
                listing = ", ".join(known) if known else "none"
                self.problem(key, f"unknown key; known keys here: {listing}")


# --------------------------------------------------------------------------------------------
# Value grammars
# --------------------------------------------------------------------------------------------

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_PORT_RE = re.compile(r"[0-9]{1,5}")


def ip_literal(text: str) -> str | None:
    """The address of an IP literal ("127.0.0.1" or "[::1]"), None when it is not one."""
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def host_port(text: str) -> HostPort | None:
    """"HOST:PORT" with HOST an IP literal, IPv6 in brackets (RFC 5118 style)."""
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        return None
    address = ip_literal(host)
    return None if address is None else HostPort(address, int(port))


def is_domain(text: str) -> bool:
    """Whether `text` is a domain name of two labels or more (letters, digits, hyphens)."""
    return len(text) <= 253 and _DOMAIN_RE.fullmatch(text) is not None

