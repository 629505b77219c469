"""The ladder trace: every SIP message an operator's roles send and receive, as JSON Lines.

`TraceRecorder` is a `MessageObserver` (ims.sip.stack) that appends one JSON object per
message to a file several roles and processes may share: the file is opened with O_APPEND and
each line goes out in a single write(2), so lines from different writers never interleave.
`read_trace` reads such a file back, `calls` lists the Call-IDs in it, and `render_ladder` /
`render_ladder_html` draw one call as a ladder diagram: one column per participant (a UE's
address, or a role named like "Alpha P-CSCF"), one arrow per message in time order, with
retransmissions marked.

A message traced by both ends (the sender's "out" and the receiver's "in" record) is drawn
once. Over TCP the receiver sees the connection's ephemeral source port rather than the
sender's listening port; matching the two records of one message teaches the ladder that
alias, so both ends stay in one column.

Line format (version 1), keys in this order:
    v, time (ISO 8601, UTC), epoch (seconds), operator, role, direction ("in"/"out"),
    from, to (address strings "udp:127.0.0.1:5060"), from_name, to_name (participant names
    when known, else null), first_line, method (requests) or status (responses), call_id,
    cseq, branch (top Via), from_tag, to_tag, headers (name -> list of values, KEY_HEADERS).
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ims.sip.address import Address
from ims.sip.errors import ProtocolError
from ims.sip.headers import parse_name_addr
from ims.sip.message import Message, Request
from ims.sip.stack import Direction

logger = logging.getLogger(__name__)

TRACE_VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""The default size cap of a trace file: past it, messages are no longer traced."""

KEY_HEADERS = (
    "From",
    "To",
    "P-Asserted-Identity",
    "Route",
    "Record-Route",
    "Path",
    "Require",
    "Target-MNO",
    "Contact",
    "Reason",
)
"""The header fields a trace line keeps (besides Call-ID, CSeq and the top Via branch)."""

_MAX_VALUE = 1000  # characters kept of one header value: a line stays bounded
_MAX_VALUES = 16  # values kept of one header name

ROLE_TITLES = {
    "pcscf": "P-CSCF",
    "scscf": "S-CSCF",
    "icscf": "I-CSCF",
    "ibcf": "IBCF",
    "border": "Border",
    "permission": "Permission",
    "gateway": "Gateway",
    "ue": "UE",
}
"""How a role name of the configuration (ims.config.Role) is shown in a ladder."""


def participant_name(operator: str, role: str) -> str:
    """The ladder name of a role: "Alpha P-CSCF" for operator "Alpha", role "pcscf"."""
    title = ROLE_TITLES.get(role.lower(), role)
    return f"{operator} {title}" if operator else title


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


class TraceError(Exception):
    """Base of every error raised by ims.trace."""


class TraceFileError(TraceError):
    """The trace file cannot be opened or read."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"trace file {path}: {why}")
        self.path = path
        self.why = why


class UnknownCallId(TraceError):
    """The Call-ID asked for is not in the trace; `known` lists those that are."""

    def __init__(self, call_id: str, known: Iterable[str]) -> None:
        self.call_id = call_id
        self.known = tuple(known)
        shown = ", ".join(self.known[:10]) + (", ..." if len(self.known) > 10 else "")
        listing = f"known Call-IDs: {shown}" if self.known else "the trace has no calls"
        super().__init__(f"no call with Call-ID {call_id!r} in the trace; {listing}")


@dataclass(frozen=True, slots=True)
class TraceLineProblem:
    """A line of a trace file that was skipped, and why (reported, never raised)."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: skipped malformed trace line: {self.reason}"


# ----------------------------------------------------------------------------------------------
# Entries
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One message as one role saw it: a line of the trace file."""

    epoch: float
    operator: str
    role: str
    direction: Direction
    source: str  # "from" in the file: the sender's address string
    destination: str  # "to" in the file
    source_name: str | None
    destination_name: str | None
    first_line: str
    method: str | None = None  # requests only
    status: int | None = None  # responses only
    call_id: str | None = None
    cseq: str | None = None
    branch: str | None = None
    from_tag: str | None = None
    to_tag: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    line: int = field(default=0, compare=False)  # where it was read from; 0 when not read

    @property
    def time_iso(self) -> str:
        return iso_time(self.epoch)

    def header(self, name: str) -> str | None:
        """The first kept value of header `name` (one of KEY_HEADERS), None when absent."""
        lname = name.lower()
        return next((v for n, v in self.headers if n.lower() == lname), None)

    def to_json(self) -> str:
        grouped: dict[str, list[str]] = {}
        for name, value in self.headers:
            grouped.setdefault(name, []).append(value)
        record: dict[str, Any] = {
            "v": TRACE_VERSION,
            "time": self.time_iso,
            "epoch": self.epoch,
            "operator": self.operator,
            "role": self.role,
            "direction": self.direction,
            "from": self.source,
            "to": self.destination,
            "from_name": self.source_name,
            "to_name": self.destination_name,
            "first_line": self.first_line,
            "method": self.method,
            "status": self.status,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "branch": self.branch,
            "from_tag": self.from_tag,
            "to_tag": self.to_tag,
            "headers": grouped,
        }
        # ensure_ascii: a line is plain ASCII whatever a peer put in its headers.
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def iso_time(epoch: float) -> str:
    """ISO 8601 in UTC with microseconds: "2024-05-01T12:00:00.123456Z"."""
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


def entry_of(
    direction: Direction,
    message: Message,
    local: Address,
    remote: Address,
    now: float,
    *,
    operator: str,
    role: str,
    names: Mapping[str, str] | None = None,
) -> TraceEntry:
    """The trace entry of a message `role` of `operator` sent or received. Never raises on a
    malformed message: what cannot be read is left out (a trace must show bad input too)."""
    local_text, remote_text = str(local), str(remote)
    own = participant_name(operator, role)
    peer = names.get(remote_text) if names else None
    source_name: str | None
    destination_name: str | None
    if direction == "out":
        source, destination, source_name, destination_name = local_text, remote_text, own, peer
    else:
        source, destination, source_name, destination_name = remote_text, local_text, peer, own
    headers = message.headers
    kept: list[tuple[str, str]] = []
    for name in KEY_HEADERS:
        values = headers.get_all(name)
        kept.extend((name, _bounded(v)) for v in values[:_MAX_VALUES])
    method: str | None = None
    status: int | None = None
    if isinstance(message, Request):
        method = message.method
    else:
        status = message.status_code
    return TraceEntry(
        epoch=now,
        operator=operator,
        role=role,
        direction=direction,
        source=source,
        destination=destination,
        source_name=source_name,
        destination_name=destination_name,
        first_line=_bounded(message.start_line()),
        method=method,
        status=status,
        call_id=_optional(headers.get("Call-ID")),
        cseq=_optional(headers.get("CSeq")),
        branch=_branch(message),
        from_tag=_tag(message, "From"),
        to_tag=_tag(message, "To"),
        headers=tuple(kept),
    )


def _bounded(text: str) -> str:
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _optional(value: str | None) -> str | None:
    return None if value is None else _bounded(value.strip())


def _branch(message: Message) -> str | None:
    try:
        return message.top_via.branch
    except ProtocolError:
        return None


def _tag(message: Message, name: str) -> str | None:
    try:
        return (message.from_ if name == "From" else message.to).tag
    except ProtocolError:
        return None


# ----------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------


class TraceRecorder:
    """A MessageObserver appending each message to a JSON Lines file (shared by roles).

    `role` is the role's configuration name ("pcscf", "scscf", "border") and `operator` the
    operator's name ("Alpha"); `names` gives the participant names of known peer addresses
    (address string -> name). Once the file reaches `max_bytes`, one warning is logged and
    later messages are counted in `dropped` instead of written. Raises TraceFileError when
    the file cannot be opened.
    """

    def __init__(
        self,
        path: Path | str,
        role: str,
        operator: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        names: Mapping[str, str] | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.path = Path(path)
        self.role = role
        self.operator = operator
        self.max_bytes = max_bytes
        self.names = dict(names or {})
        self.written = 0  # lines written by this recorder
        self.dropped = 0  # messages not written: over the cap, or the file failed
        self._capped = False
        try:
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise TraceFileError(self.path, f"cannot open for appending: {exc.strerror}") from exc

    @property
    def name(self) -> str:
        """This role's participant name, "Alpha P-CSCF"."""
        return participant_name(self.operator, self.role)

    def on_message(
        self, direction: Direction, message: Message, local: Address, remote: Address, now: float
    ) -> None:
        fd = self._fd
        if fd is None or self._capped:
            self.dropped += 1
            return
        entry = entry_of(direction, message, local, remote, now, operator=self.operator,
                         role=self.role, names=self.names)
        data = (entry.to_json() + "\n").encode("ascii")
        try:
            # The file is shared: its size, not ours, is what the cap bounds.
            if os.fstat(fd).st_size + len(data) > self.max_bytes:
                self._capped = True
                self.dropped += 1
                logger.warning(
                    "trace file %s reached its size cap of %d bytes: %s no longer traces "
                    "messages; move the file away and restart to trace again",
                    self.path, self.max_bytes, self.name,
                )
                return
            os.write(fd, data)  # one write per line: O_APPEND keeps writers' lines whole
        except OSError as exc:
            self.dropped += 1
            self.close()
            logger.warning("trace file %s failed (%s): %s no longer traces messages",
                           self.path, exc.strerror, self.name)
            return
        self.written += 1

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

ProblemHandler = Callable[[TraceLineProblem], None]


def _log_problem(problem: TraceLineProblem) -> None:
    logger.warning("%s", problem)


MAX_TRACE_BYTES = 256 * 1024 * 1024
"""The most `read_trace` reads of one file: four recorders' worth at DEFAULT_MAX_BYTES. More
is not a trace written here (or /dev/zero), and reading on would never end or exhaust memory."""
MAX_LINE_BYTES = 1024 * 1024
"""The longest line `read_trace` parses; a written line is bounded far below it (_MAX_VALUE,
_MAX_VALUES), so a longer one is skipped unread as malformed."""


def read_trace(
    path: Path | str, *, on_problem: ProblemHandler | None = None,
    max_bytes: int = MAX_TRACE_BYTES,
) -> list[TraceEntry]:
    """The entries of a trace file in file order, read line by line. A malformed line is
    reported to `on_problem` (default: a logged warning) with its line number and skipped.
    Raises TraceFileError when the file cannot be read or holds more than `max_bytes`."""
    path = Path(path)
    report = on_problem or _log_problem
    entries: list[TraceEntry] = []
    try:
        with path.open("rb") as stream:
            total = 0
            number = 0
            while raw := stream.readline(MAX_LINE_BYTES + 1):
                number += 1
                total += len(raw)
                overlong = len(raw) > MAX_LINE_BYTES
                if overlong:
                    report(TraceLineProblem(
                        path, number, f"longer than {_size(MAX_LINE_BYTES)}, more than any "
                                      "trace line"))
                    while total <= max_bytes and not raw.endswith(b"\n"):  # skip the rest
                        raw = stream.readline(MAX_LINE_BYTES)
                        if not raw:
                            break
                        total += len(raw)
                if total > max_bytes:
                    raise TraceFileError(
                        path, f"larger than {_size(max_bytes)}, more than a trace holds (a "
                              f"recorder stops at {_size(DEFAULT_MAX_BYTES)} by default); give "
                              "the JSON Lines file of an operator's [trace] path")
                if overlong or not raw.strip():
                    continue
                try:
                    entries.append(_entry_from_line(raw, number))
                except ValueError as exc:
                    report(TraceLineProblem(path, number, str(exc)))
    except FileNotFoundError as exc:
        raise TraceFileError(path, "no such file") from exc
    except IsADirectoryError as exc:
        raise TraceFileError(path, "is a directory, not a trace file") from exc
    except OSError as exc:
        raise TraceFileError(path, f"cannot read: {exc.strerror}") from exc
    return entries


def _size(count: int) -> str:
    return f"{count >> 20} MiB" if count >= 1 << 20 else f"{count} bytes"


_LAST_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: the last time with a four-digit year


def _entry_from_line(raw: bytes, number: int) -> TraceEntry:
    """Raises ValueError naming what is wrong with the line."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError("not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    version = record.get("v", TRACE_VERSION)
    if version != TRACE_VERSION:
        raise ValueError(f"trace format version {version!r}; this reader knows {TRACE_VERSION}")
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int | float):
        raise ValueError("'epoch' is missing or not a number")
    if not 0 <= epoch <= _LAST_EPOCH:  # also false for NaN, which json.loads accepts
        raise ValueError(f"'epoch' {epoch} is not a time between 1970 and 9999")
    direction = record.get("direction")
    if direction not in ("in", "out"):
        raise ValueError(f"'direction' is {direction!r}, not \"in\" or \"out\"")
    status = record.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        raise ValueError("'status' is not an integer")
    headers = record.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
        for k, v in headers.items()
    ):
        raise ValueError("'headers' is not an object of string lists")
    return TraceEntry(
        epoch=float(epoch),
        operator=_string(record, "operator", default=""),
        role=_string(record, "role", default=""),
        direction=direction,
        source=_string(record, "from"),
        destination=_string(record, "to"),
        source_name=_string_or_none(record, "from_name"),
        destination_name=_string_or_none(record, "to_name"),
        first_line=_string(record, "first_line"),
        method=_string_or_none(record, "method"),
        status=status,
        call_id=_string_or_none(record, "call_id"),
        cseq=_string_or_none(record, "cseq"),
        branch=_string_or_none(record, "branch"),
        from_tag=_string_or_none(record, "from_tag"),
        to_tag=_string_or_none(record, "to_tag"),
        headers=tuple((name, value) for name, values in headers.items() for value in values),
        line=number,
    )


def _string(record: dict[str, Any], key: str, *, default: str | None = None) -> str:
    value = record.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is missing or not a string")
    return value


def _string_or_none(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    return value


# ----------------------------------------------------------------------------------------------
# Calls and the ladder model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallSummary:
    """One Call-ID of a trace: when it started, who called whom, who took part."""

    call_id: str
    first_epoch: float
    last_epoch: float
    method: str  # of the first request seen ("INVITE", "REGISTER", ...); "" when none
    caller: str  # the From URI of the first message
    callee: str  # its To URI
    participants: tuple[str, ...]
    messages: int  # arrows of the ladder (a message traced at both ends counts once)


@dataclass(frozen=True, slots=True)
class Arrow:
    """One message on the ladder: from column `source` to column `destination`."""

    epoch: float  # the earlier of its records' times
    source: int
    destination: int
    label: str
    retransmission: bool
    entry: TraceEntry  # the record the arrow was drawn from (the sender's when traced)


@dataclass(frozen=True, slots=True)
class Ladder:
    call_id: str
    start: float
    participants: tuple[str, ...]
    arrows: tuple[Arrow, ...]


def calls(entries: Iterable[TraceEntry]) -> list[CallSummary]:
    """The calls (Call-IDs) of a trace, oldest first."""
    entries = list(entries)
    by_call: dict[str, list[TraceEntry]] = {}
    for entry in entries:
        if entry.call_id is not None:
            by_call.setdefault(entry.call_id, []).append(entry)
    names = _known_names(entries)
    summaries = []
    for call_id, own in by_call.items():
        ladder = _build(call_id, own, names)
        first = min(own, key=lambda e: e.epoch)
        request = next((e for e in sorted(own, key=lambda e: e.epoch) if e.method), None)
        summaries.append(CallSummary(
            call_id=call_id,
            first_epoch=first.epoch,
            last_epoch=max(e.epoch for e in own),
            method=request.method or "" if request else "",
            caller=_uri_of(first.header("From")),
            callee=_uri_of(first.header("To")),
            participants=ladder.participants,
            messages=len(ladder.arrows),
        ))
    summaries.sort(key=lambda s: (s.first_epoch, s.call_id))
    return summaries


def build_ladder(entries: Iterable[TraceEntry], call_id: str) -> Ladder:
    """The ladder of one call; raises UnknownCallId naming the known ones."""
    entries = list(entries)
    own = [e for e in entries if e.call_id == call_id]
    if not own:
        known = dict.fromkeys(e.call_id for e in entries if e.call_id is not None)
        raise UnknownCallId(call_id, known)
    return _build(call_id, own, _known_names(entries))


def _uri_of(value: str | None) -> str:
    if value is None:
        return ""
    try:
        return str(parse_name_addr(value, "trace").uri)
    except ProtocolError:
        return value


def _known_names(entries: Iterable[TraceEntry]) -> dict[str, str]:
    """Address string -> participant name, from what every recorder said of itself."""
    names: dict[str, str] = {}
    for e in entries:
        if e.source_name:
            names.setdefault(e.source, e.source_name)
        if e.destination_name:
            names.setdefault(e.destination, e.destination_name)
    return names


def _display_address(address: str) -> str:
    """"udp:127.0.0.1:5071" -> "127.0.0.1:5071" (the column of a participant not traced)."""
    return address.partition(":")[2] or address


def _reliable(address: str) -> bool:
    return address.partition(":")[0].lower() in ("tcp", "tls", "sctp", "ws", "wss")


def _host(address: str) -> str:
    return address.partition(":")[2].rpartition(":")[0]


@dataclass(slots=True)
class _Pending:
    """An arrow in the making: the sender's record once known, else the receiver's."""

    entry: TraceEntry
    source: str
    destination: str
    epoch: float  # of the first record seen


def _build(call_id: str, own: list[TraceEntry], names: Mapping[str, str]) -> Ladder:
    ordered = sorted(own, key=lambda e: (e.epoch, e.line))
    aliases: dict[str, str] = {}  # a TCP connection's ephemeral address -> the listening one

    def resolve(address: str) -> str:
        return aliases.get(address, address)

    def same(a: str, b: str) -> bool:
        a, b = resolve(a), resolve(b)
        # Over a connection one end may show up by its ephemeral port (see the module doc).
        return a == b or (_reliable(a) and a.partition(":")[0] == b.partition(":")[0]
                          and _host(a) == _host(b))

    pending: list[_Pending] = []  # the arrows, in time order
    unjoined: dict[tuple[str, str | None, str | None], list[_Pending]] = {}
    for entry in ordered:
        key = (entry.first_line, entry.cseq, entry.branch)
        waiting = unjoined.setdefault(key, [])
        partner = next(
            (p for p in waiting
             if p.entry.direction != entry.direction
             and same(p.source, entry.source) and same(p.destination, entry.destination)),
            None,
        )
        if partner is None:
            arrow = _Pending(entry, entry.source, entry.destination, entry.epoch)
            pending.append(arrow)
            waiting.append(arrow)
            continue
        waiting.remove(partner)
        sent, received = (
            (partner.entry, entry) if entry.direction == "in" else (entry, partner.entry)
        )
        # Each record's own end is its listening address: that one names the column.
        for seen, canonical in ((received.source, sent.source),
                                (sent.destination, received.destination)):
            if seen != canonical:
                aliases[seen] = canonical
        partner.entry = sent
        partner.source, partner.destination = sent.source, received.destination

    columns: dict[str, int] = {}

    def column(address: str) -> int:
        address = resolve(address)
        name = names.get(address) or _display_address(address)
        return columns.setdefault(name, len(columns))

    arrows: list[Arrow] = []
    seen_messages: set[tuple[int, int, str, str | None, str | None]] = set()
    for p in pending:
        entry = p.entry
        source, destination = column(p.source), column(p.destination)
        identity = (source, destination, entry.first_line, entry.cseq, entry.branch)
        retransmission = identity in seen_messages
        seen_messages.add(identity)
        # At the earlier record's time: a TCP sender's record follows its write, which the
        # receiver may have logged first.
        arrows.append(Arrow(p.epoch, source, destination, _label(entry), retransmission, entry))
    return Ladder(call_id, ordered[0].epoch, tuple(columns), tuple(arrows))


def _label(entry: TraceEntry) -> str:
    """"INVITE sip:+15550100002@..." for a request, "180 Ringing" for a response."""
    text = entry.first_line
    if entry.status is not None or text.startswith("SIP/"):
        return text.partition(" ")[2]
    return text.rsplit(" ", 1)[0] if text.endswith(" SIP/2.0") else text


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

RETRANSMISSION_MARK = "(rtx) "
_GUTTER = 10  # "   12.345 ": the offset column
_MIN_COLUMN = 12


def _ascii(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _fit(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    return text[: room - 2] + ".." if room >= 3 else text[:max(room, 0)]


def render_ladder(entries: Iterable[TraceEntry], call_id: str, width: int = 100) -> str:
    """A terminal ladder diagram of one call, ASCII only, about `width` columns wide (wider
    when there are many participants). Each message is a label line and an arrow line with
    its time offset in seconds from the call's first message; a retransmission is drawn with
    "~" and its label starts with "(rtx)". Raises UnknownCallId."""
    ladder = build_ladder(entries, call_id)
    count = len(ladder.participants)
    step = max(_MIN_COLUMN, (width - _GUTTER) // count)
    centers = [_GUTTER + step * i + step // 2 for i in range(count)]
    total = _GUTTER + step * count

    def lifelines() -> list[str]:
        row = [" "] * total
        for x in centers:
            row[x] = "|"
        return row

    out = [
        _ascii(f"Call-ID: {ladder.call_id}"),
        f"Start: {iso_time(ladder.start)}  Messages: {len(ladder.arrows)}  "
        "(left: seconds since the start)",
        "",
    ]
    header = [" "] * total
    for x, name in zip(centers, ladder.participants, strict=True):
        text = _fit(_ascii(name), step - 1)
        start = max(0, x - len(text) // 2)
        header[start:start + len(text)] = text
    out.append("".join(header).rstrip())
    out.append("".join(lifelines()).rstrip())
    for arrow in ladder.arrows:
        a, b = centers[arrow.source], centers[arrow.destination]
        label = (RETRANSMISSION_MARK if arrow.retransmission else "") + _ascii(arrow.label)
        shaft = "~" if arrow.retransmission else "-"
        text_row, arrow_row = lifelines(), lifelines()
        if a == b:  # a message to itself: a short loop right of the lifeline
            text = _fit(label, step - 2)
            text_row[a + 2:a + 2 + len(text)] = text
            arrow_row[a + 1:a + 4] = "<" + shaft + "'"
        else:
            low, high = min(a, b), max(a, b)
            text = _fit(label, high - low - 1)
            start = low + 1 + (high - low - 1 - len(text)) // 2
            text_row[start:start + len(text)] = text
            arrow_row[low + 1:high] = shaft * (high - low - 1)
            if b > a:
                arrow_row[b - 1] = ">"
            else:
                arrow_row[b + 1] = "<"
        offset = f"{arrow.epoch - ladder.start:9.3f} "
        arrow_row[:_GUTTER] = offset[-_GUTTER:]
        out.append("".join(text_row).rstrip())
        out.append("".join(arrow_row).rstrip())
    return "\n".join(out) + "\n"


_SVG_COLUMN = 220
_SVG_ROW = 40
_SVG_TOP = 60
_SVG_LEFT = 90


def render_ladder_html(entries: Iterable[TraceEntry], call_id: str) -> str:
    """The ladder of one call as a standalone HTML page with an inline SVG (for the demo):
    same columns and arrows as `render_ladder`, retransmissions dashed, each arrow's key
    headers in its tooltip. Raises UnknownCallId."""
    ladder = build_ladder(entries, call_id)
    esc = html.escape
    count = len(ladder.participants)
    width = _SVG_LEFT + _SVG_COLUMN * count
    height = _SVG_TOP + _SVG_ROW * (len(ladder.arrows) + 1)
    centers = [_SVG_LEFT + _SVG_COLUMN * i + _SVG_COLUMN // 2 for i in range(count)]
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="12">',
        '<defs><marker id="head" markerWidth="10" markerHeight="8" refX="9" refY="4" '
        'orient="auto"><path d="M0,0 L10,4 L0,8 z"/></marker></defs>',
    ]
    for x, name in zip(centers, ladder.participants, strict=True):
        svg.append(f'<text x="{x}" y="20" text-anchor="middle" font-weight="bold">'
                   f"{esc(name)}</text>")
        svg.append(f'<line x1="{x}" y1="30" x2="{x}" y2="{height - 10}" stroke="#999"/>')
    for i, arrow in enumerate(ladder.arrows):
        y = _SVG_TOP + _SVG_ROW * i
        a, b = centers[arrow.source], centers[arrow.destination]
        label = (RETRANSMISSION_MARK if arrow.retransmission else "") + arrow.label
        entry = arrow.entry
        tip = "\n".join([entry.first_line, f"{entry.source} -> {entry.destination}",
                         f"Call-ID: {entry.call_id}", f"CSeq: {entry.cseq}",
                         f"branch: {entry.branch}", entry.time_iso]
                        + [f"{n}: {v}" for n, v in entry.headers])
        dash = ' stroke-dasharray="6,4"' if arrow.retransmission else ""
        if a == b:
            b = a + 40
        svg.append(f'<g class="message"><title>{esc(tip)}</title>')
        svg.append(f'<text x="10" y="{y + 4}">{arrow.epoch - ladder.start:.3f}</text>')
        svg.append(f'<text x="{(a + b) // 2}" y="{y - 4}" text-anchor="middle">'
                   f"{esc(label)}</text>")
        svg.append(f'<line x1="{a}" y1="{y}" x2="{b}" y2="{y}" stroke="black"{dash} '
                   f'marker-end="url(#head)"/></g>')
    svg.append("</svg>")
    title = esc(f"SIP ladder: {ladder.call_id}")
    return (
        "<!DOCTYPE html>\n"
        f'<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1>\n"
        f"<p>Start {esc(iso_time(ladder.start))}, {len(ladder.arrows)} messages</p>\n"
        + "\n".join(svg)
        + "\n</body></html>\n"
    )
