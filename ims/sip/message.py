"""SIP messages as frozen values, their parser and serializer (RFC 3261 sections 7, 20, 25).

`parse_message` takes the bytes of exactly one message (a datagram, or what the stream framer
cut) and returns a Request or Response, raising ParseError (400) or VersionNotSupported (505)
with a reason that names the defect. Header values are stored as text, list-valued headers one
value per entry, so `parse_message(serialize(m)) == m`. Structured views (Via, CSeq, From...)
are parsed on demand by ims.sip.headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from ims.sip import abnf
from ims.sip.errors import MessageTooLarge, ParseError, VersionNotSupported
from ims.sip.headers import (
    LIST_HEADERS,
    CSeq,
    NameAddress,
    Via,
    canonical_name,
    parse_cseq,
    parse_name_addr,
    parse_uint,
    parse_via,
    split_list,
)
from ims.sip.status import reason_phrase
from ims.sip.uri import SipUri, Uri, parse_uri

SIP_VERSION = "SIP/2.0"
MAX_HEADER_FIELDS = 256

_HEADER_NAME_RE = re.compile(abnf.token)
_METHOD_RE = re.compile(abnf.token)
_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_REASON_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


@dataclass(frozen=True, slots=True)
class Headers:
    """An ordered, immutable list of (name, value) header fields; lookups ignore case."""

    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        return cls(tuple((canonical_name(n), v) for n, v in pairs))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lname = name.lower()
        return any(n.lower() == lname for n, _ in self.items)

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for n, v in self.items:
            if n.lower() == lname:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.items if n.lower() == lname]

    def count(self, name: str) -> int:
        lname = name.lower()
        return sum(1 for n, _ in self.items if n.lower() == lname)

    def without(self, *names: str) -> Headers:
        lnames = {n.lower() for n in names}
        return Headers(tuple(item for item in self.items if item[0].lower() not in lnames))

    def appended(self, name: str, value: str) -> Headers:
        return Headers((*self.items, (canonical_name(name), value)))

    def prepended(self, name: str, value: str) -> Headers:
        """Insert `value` before the first field of that name (or at the top if none)."""
        lname = name.lower()
        items = list(self.items)
        for i, (n, _) in enumerate(items):
            if n.lower() == lname:
                items.insert(i, (n, value))
                return Headers(tuple(items))
        return Headers(((canonical_name(name), value), *items))

    def replaced(self, name: str, values: Iterable[str]) -> Headers:
        """All fields named `name` replaced by `values`, at the position of the first one."""
        lname = name.lower()
        cname = canonical_name(name)
        new = [(cname, v) for v in values]
        out: list[tuple[str, str]] = []
        placed = False
        for item in self.items:
            if item[0].lower() == lname:
                if not placed:
                    out.extend(new)
                    placed = True
            else:
                out.append(item)
        if not placed:
            out.extend(new)
        return Headers(tuple(out))

    def without_first(self, name: str) -> Headers:
        lname = name.lower()
        items = list(self.items)
        for i, (n, _) in enumerate(items):
            if n.lower() == lname:
                del items[i]
                break
        return Headers(tuple(items))


class _MessageViews:
    """Structured views shared by requests and responses."""

    headers: Headers
    body: bytes

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise ParseError("missing Via header")
        return parse_via(value)

    @property
    def call_id(self) -> str:
        value = self.headers.get("Call-ID")
        if value is None:
            raise ParseError("missing Call-ID header")
        return value

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("CSeq")
        if value is None:
            raise ParseError("missing CSeq header")
        return parse_cseq(value)

    @property
    def from_(self) -> NameAddress:
        value = self.headers.get("From")
        if value is None:
            raise ParseError("missing From header")
        return parse_name_addr(value, "From")

    @property
    def to(self) -> NameAddress:
        value = self.headers.get("To")
        if value is None:
            raise ParseError("missing To header")
        return parse_name_addr(value, "To")

    def name_addrs(self, name: str) -> list[NameAddress]:
        return [parse_name_addr(v, name) for v in self.headers.get_all(name)]

    def header_int(self, name: str, maximum: int = 2**32 - 1) -> int | None:
        value = self.headers.get(name)
        return None if value is None else parse_uint(value, name, maximum)


@dataclass(frozen=True, slots=True)
class Request(_MessageViews):
    method: str
    uri: Uri
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def with_headers(self, headers: Headers) -> Request:
        return replace(self, headers=headers)

    def with_uri(self, uri: Uri) -> Request:
        return replace(self, uri=uri)

    def with_body(self, body: bytes, content_type: str | None = None) -> Request:
        return replace(self, body=body, headers=_body_headers(self.headers, body, content_type))


@dataclass(frozen=True, slots=True)
class Response(_MessageViews):
    status_code: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def start_line(self) -> str:
        return f"{self.version} {self.status_code} {self.reason}"

    def with_headers(self, headers: Headers) -> Response:
        return replace(self, headers=headers)

    def with_body(self, body: bytes, content_type: str | None = None) -> Response:
        return replace(self, body=body, headers=_body_headers(self.headers, body, content_type))

    @property
    def is_provisional(self) -> bool:
        return self.status_code < 200


Message = Request | Response


def _body_headers(headers: Headers, body: bytes, content_type: str | None) -> Headers:
    headers = headers.replaced("Content-Length", [str(len(body))])
    if content_type is not None:
        headers = headers.replaced("Content-Type", [content_type])
    elif not body:
        headers = headers.without("Content-Type")
    return headers


def serialize(message: Message) -> bytes:
    """The wire form: start line, one header field per line, blank line, body (section 7)."""
    lines = [message.start_line()]
    lines.extend(f"{name}: {value}" for name, value in message.headers.items)
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + message.body


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4 :]
    end = data.find(b"\n\n")  # tolerate bare LF line ends, as robust elements do
    if end >= 0:
        return data[:end], data[end + 2 :]
    if data.endswith(b"\r\n"):
        # No empty line at all: legal-looking headers but no end of the header block.
        raise ParseError("missing empty line after the header fields")
    raise ParseError("missing empty line after the header fields")


def _parse_start_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) < 3:
        raise ParseError(f"malformed start line {line[:80]!r}")
    return parts[0], parts[1], " ".join(parts[2:])


def _check_version(version: str) -> str:
    if not abnf.SIP_VERSION_RE.fullmatch(version):
        raise ParseError(f"malformed SIP-Version {version[:40]!r}")
    if version.upper() != SIP_VERSION:
        raise VersionNotSupported(f"SIP version {version} not supported")
    return SIP_VERSION


def parse_message(data: bytes) -> Message:
    """Parse exactly one SIP message; raise ParseError (or a subclass) naming the defect."""
    data = data.lstrip(b"\r\n")  # section 7.5: ignore CRLFs before the start line
    if not data:
        raise ParseError("empty message")
    head_bytes, body = _split_head(data)
    head = head_bytes.decode("utf-8", "surrogateescape")
    # Section 7.3.1: a line starting with whitespace continues the previous one.
    lines = _FOLD_RE.sub(" ", head).replace("\r\n", "\n").split("\n")
    start = lines[0]
    if "\r" in start or "\t" in start:
        raise ParseError("malformed start line: control character")
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        raise MessageTooLarge(f"more than {MAX_HEADER_FIELDS} header fields")

    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _HEADER_NAME_RE.fullmatch(name):
            shown = line[:60]
            if line[:1] in (" ", "\t"):
                raise ParseError(f"header line starts with whitespace: {shown!r}")
            raise ParseError(f"malformed header line {shown!r}")
        cname = canonical_name(name)
        value = value.strip(" \t")
        if "\r" in value:
            raise ParseError(f"bare CR in {cname} header")
        if cname.lower() in LIST_HEADERS and "," in value:
            parts = [p for p in split_list(value) if p]
            items.extend((cname, p) for p in parts)
        else:
            items.append((cname, value))
    headers = Headers(tuple(items))

    first, second, rest = _parse_start_line(start)
    message: Message
    if first.upper().startswith("SIP/") and "/" in first:
        version = _check_version(first)
        if not (len(second) == 3 and second.isdigit() and second[0] in "123456"):
            raise ParseError(f"malformed Status-Code {second[:10]!r}")
        if not _REASON_RE.fullmatch(rest):
            raise ParseError("malformed Reason-Phrase")
        message = Response(int(second), rest, headers, body, version)
    else:
        if not _METHOD_RE.fullmatch(first):
            raise ParseError(f"malformed method {first[:20]!r}")
        if " " in rest:
            raise ParseError("whitespace in Request-URI or after SIP-Version")
        version = _check_version(rest)
        if second.startswith("<"):
            raise ParseError("Request-URI enclosed in <>")
        try:
            uri = parse_uri(second)
        except ParseError as exc:
            raise ParseError(f"malformed Request-URI: {exc.reason}") from None
        if isinstance(uri, SipUri) and uri.headers:
            # Section 19.1.1 (table 1): the headers component is not allowed in a Request-URI.
            raise ParseError("Request-URI carries a headers component")
        message = Request(first, uri, headers, body, version)

    # Section 18.3: on a datagram, octets beyond Content-Length are discarded. A body shorter
    # than Content-Length is left for the message-level checks (400).
    length_text = headers.get("Content-Length")
    if length_text is not None:
        text = length_text.strip()
        if text.isdigit() and text.isascii() and int(text) < len(body):
            message = replace(message, body=body[: int(text)])
    return message


def make_response(
    request: Request,
    status_code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to `request` per RFC 3261 section 8.2.6.2: Via, From, To, Call-ID and CSeq
    copied; a To tag added when given and absent; Record-Route copied for 18x/2xx to a
    dialog-creating request (section 12.1.1)."""
    h = request.headers
    items: list[tuple[str, str]] = [("Via", v) for v in h.get_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = h.get(name)
        if value is not None:
            if name == "To" and to_tag is not None and status_code != 100:
                to = parse_name_addr(value, "To")
                if to.tag is None:
                    value = str(to.with_param("tag", to_tag))
            items.append((name, value))
    if 100 < status_code < 300 and request.method in ("INVITE", "SUBSCRIBE"):
        items.extend(("Record-Route", v) for v in h.get_all("Record-Route"))
    if status_code == 100:
        ts = h.get("Timestamp")  # section 8.2.6.1
        if ts is not None:
            items.append(("Timestamp", ts))
    items.extend((canonical_name(n), v) for n, v in extra)
    if content_type is not None and body:
        items.append(("Content-Type", content_type))
    items.append(("Content-Length", str(len(body))))
    return Response(
        status_code,
        reason if reason is not None else reason_phrase(status_code),
        Headers(tuple(items)),
        body,
    )
