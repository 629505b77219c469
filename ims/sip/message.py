"""SIP messages as frozen values, their parser and serializer (RFC 3261 sections 7, 20, 25).

`parse_message` takes the bytes of exactly one message (a datagram, or what the stream framer
cut) and returns a Request or Response, raising ParseError (400) or VersionNotSupported (505)
with a reason that names the defect. Header values are stored as text, list-valued headers one
value per entry, so `parse_message(serialize(m)) == m`. Structured views (Via, CSeq, From...)
are parsed on demand by ims.sip.headers and remembered: a message parses each header value at
most once, and a message derived with `with_headers` / `with_uri` / `with_body` shares what its
parent already parsed (keyed by the header value, so a changed value is parsed afresh).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

from ims.sip import abnf
from ims.sip.errors import MessageTooLarge, ParseError, VersionNotSupported
from ims.sip.headers import (
    CANONICAL_NAMES,
    LIST_HEADERS,
    CSeq,
    NameAddress,
    Via,
    canonical_name,
    parse_cseq,
    parse_name_addr,
    parse_sent_by,
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

_M = TypeVar("_M", bound="_MessageViews")

_Index = dict[str, str | list[str]]

# Header names as they usually arrive (registered spelling, lower case, compact form) -> the
# registered name and its lower-case form, one shared string each: the parser and the lookup
# index skip lower() for them, and messages kept in transactions do not each hold copies.
_NAME_FORMS: dict[str, tuple[str, str]] = {}
for _lname, _cname in CANONICAL_NAMES.items():
    _forms = (_cname, _cname.lower())
    _NAME_FORMS[_lname] = _forms
    _NAME_FORMS[_cname] = _forms
    _NAME_FORMS[_cname.lower()] = _forms
del _lname, _cname, _forms
# Registered names as spelled in stored fields -> their shared lower-case form (no compact
# forms: a field stored as "v" is looked up as "v", as a scan would).
_LOWER_NAMES: dict[str, str] = {
    spelling: forms[1] for spelling, forms in _NAME_FORMS.items() if spelling.lower() == forms[1]
}


def _index_add(index: _Index, lname: str, value: str) -> None:
    known = index.get(lname)
    if known is None:
        index[lname] = value
    elif isinstance(known, str):
        index[lname] = [known, value]
    else:
        known.append(value)


@dataclass(frozen=True, slots=True)
class Headers:
    """An ordered, immutable list of (name, value) header fields; lookups ignore case."""

    items: tuple[tuple[str, str], ...] = ()
    # Lower-cased name -> its value, or its values in order when it repeats; built on the
    # first lookup (or by the parser): a proxy looks up a dozen names per message, and a scan
    # lower-casing every field each time dominated. A lone value is stored bare because
    # messages live on in transactions and most names occur once.
    _index: _Index | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        return cls(tuple((canonical_name(n), v) for n, v in pairs))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def _lookup(self) -> _Index:
        index: _Index = {}
        lower_names = _LOWER_NAMES
        for n, v in self.items:
            _index_add(index, lower_names.get(n) or n.lower(), v)
        object.__setattr__(self, "_index", index)  # a cache, not state: see the field
        return index

    def names(self) -> frozenset[str]:
        """The distinct field names present, lower-cased."""
        return frozenset(self._index if self._index is not None else self._lookup())

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        index = self._index if self._index is not None else self._lookup()
        return name.lower() in index

    def get(self, name: str) -> str | None:
        index = self._index if self._index is not None else self._lookup()
        values = index.get(name.lower())
        if values is None or type(values) is str:
            return values
        return values[0]

    def get_all(self, name: str) -> list[str]:
        index = self._index if self._index is not None else self._lookup()
        values = index.get(name.lower())
        if values is None:
            return []
        if isinstance(values, str):
            return [values]
        return values.copy()

    def count(self, name: str) -> int:
        index = self._index if self._index is not None else self._lookup()
        values = index.get(name.lower())
        if values is None:
            return 0
        return 1 if type(values) is str else len(values)

    def _edited(self, items: tuple[tuple[str, str], ...], lname: str, values: list[str]) -> Headers:
        """Headers with `items`, which differ from ours only in the fields named `lname` (lower
        case), now `values` in order: our lookup index is carried over, not rebuilt."""
        headers = Headers(items)
        index = self._index
        if index is not None:
            edited = index.copy()  # lists are never changed once built: sharing them is safe
            if not values:
                edited.pop(lname, None)
            else:
                edited[lname] = values[0] if len(values) == 1 else values
            object.__setattr__(headers, "_index", edited)
        return headers

    def _values(self, lname: str) -> list[str]:
        index = self._index if self._index is not None else self._lookup()
        values = index.get(lname)
        if values is None:
            return []
        return [values] if isinstance(values, str) else values

    def without(self, *names: str) -> Headers:
        lnames = {n.lower() for n in names}
        headers = Headers(tuple(item for item in self.items if item[0].lower() not in lnames))
        index = self._index
        if index is not None:
            object.__setattr__(
                headers, "_index", {k: v for k, v in index.items() if k not in lnames}
            )
        return headers

    def appended(self, name: str, value: str) -> Headers:
        cname = canonical_name(name)
        lname = cname.lower()
        return self._edited((*self.items, (cname, value)), lname, [*self._values(lname), value])

    def prepended(self, name: str, value: str) -> Headers:
        """Insert `value` before the first field of that name (or at the top if none)."""
        lname = name.lower()
        items = list(self.items)
        for i, (n, _) in enumerate(items):
            if n.lower() == lname:
                items.insert(i, (n, value))
                return self._edited(tuple(items), lname, [value, *self._values(lname)])
        cname = canonical_name(name)
        clname = cname.lower()
        return self._edited(((cname, value), *items), clname, [value, *self._values(clname)])

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
        if cname.lower() != lname:  # a compact form: the new fields are filed under another name
            return Headers(tuple(out))
        return self._edited(tuple(out), lname, [v for _, v in new])

    def without_first(self, name: str) -> Headers:
        lname = name.lower()
        items = list(self.items)
        for i, (n, _) in enumerate(items):
            if n.lower() == lname:
                del items[i]
                return self._edited(tuple(items), lname, self._values(lname)[1:])
        return Headers(tuple(items))


class ParsedValues:
    """Header values already parsed, by their text (Via, CSeq, name-addr headers).

    Parsing is a pure function of the value, so one memo is right for any message whose
    header carries that text: a message and the messages derived from it share one, and a
    transport may hand one to `parse_message` for everything it receives, since the messages
    of a transaction or dialog repeat their From, To, Call-ID and Route values. Parts repeat
    more than whole values: each transaction's Via has a new branch and its From a new tag,
    so the URI inside a name-addr and the sent-by of a Via are remembered on their own; the
    rest of the value (its parameters) is parsed and checked every time. Each kind is
    bounded by `limit` entries; a full one starts afresh (only speed depends on it).
    """

    __slots__ = ("_cseqs", "_limit", "_name_addrs", "_sent_bys", "_uris", "_vias")

    def __init__(self, limit: int = 64) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._limit = limit
        self._vias: dict[str, Via] = {}
        self._name_addrs: dict[str, NameAddress] = {}
        self._cseqs: dict[str, CSeq] = {}
        self._uris: dict[str, Uri] = {}
        self._sent_bys: dict[str, tuple[Via, int]] = {}

    def __len__(self) -> int:
        return (len(self._vias) + len(self._name_addrs) + len(self._cseqs) + len(self._uris)
                + len(self._sent_bys))

    def uri(self, value: str) -> Uri:
        uri = self._uris.get(value)
        if uri is None:
            uri = parse_uri(value)
            if len(self._uris) >= self._limit:
                self._uris.clear()
            self._uris[value] = uri
        return uri

    def via(self, value: str) -> Via:
        via = self._vias.get(value)
        if via is None:
            # A new branch makes each Via value new; its sent-by is the sender's, seen before.
            via = parse_via(value, sent_by=self._sent_by)
            if len(self._vias) >= self._limit:
                self._vias.clear()
            self._vias[value] = via
        return via

    def _sent_by(self, value: str) -> tuple[Via, int]:
        head = value.partition(";")[0]  # all parse_sent_by reads
        found = self._sent_bys.get(head)
        if found is None:
            found = parse_sent_by(value)
            if len(self._sent_bys) >= self._limit:
                self._sent_bys.clear()
            self._sent_bys[head] = found
        return found

    def name_addr(self, value: str, where: str) -> NameAddress:
        """The name-addr / addr-spec `value`; `where` names the header in a ParseError."""
        name_addr = self._name_addrs.get(value)
        if name_addr is None:
            # A new tag makes each From value new; the URI in it is remembered on its own.
            name_addr = parse_name_addr(value, where, uri_of=self.uri)
            if len(self._name_addrs) >= self._limit:
                self._name_addrs.clear()
            self._name_addrs[value] = name_addr
        return name_addr

    def cseq(self, value: str) -> CSeq:
        cseq = self._cseqs.get(value)
        if cseq is None:
            cseq = parse_cseq(value)
            if len(self._cseqs) >= self._limit:
                self._cseqs.clear()
            self._cseqs[value] = cseq
        return cseq


class _MessageViews:
    """Structured views shared by requests and responses."""

    __slots__ = ()

    headers: Headers
    body: bytes
    _parsed: ParsedValues | None

    @property
    def _memo(self) -> ParsedValues:
        memo = self._parsed
        if memo is None:  # made on first use: many messages are built and sent unread
            memo = ParsedValues()
            object.__setattr__(self, "_parsed", memo)
        return memo

    def _derived(self, derived: _M) -> _M:
        """`derived`, a copy of this message with some part changed, sharing the memo."""
        object.__setattr__(derived, "_parsed", self._memo)
        return derived

    @property
    def vias(self) -> list[Via]:
        parsed = self._memo
        return [parsed.via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise ParseError("missing Via header")
        return self._memo.via(value)

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
        return self._memo.cseq(value)

    @property
    def from_(self) -> NameAddress:
        value = self.headers.get("From")
        if value is None:
            raise ParseError("missing From header")
        return self._memo.name_addr(value, "From")

    @property
    def to(self) -> NameAddress:
        value = self.headers.get("To")
        if value is None:
            raise ParseError("missing To header")
        return self._memo.name_addr(value, "To")

    def name_addrs(self, name: str) -> list[NameAddress]:
        parsed = self._memo
        return [parsed.name_addr(v, name) for v in self.headers.get_all(name)]

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
    _parsed: ParsedValues | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    # The derived copies are built by the constructor rather than dataclasses.replace: a proxy
    # derives several per forwarded message, and replace() introspects the fields each time.
    def with_headers(self, headers: Headers) -> Request:
        return self._derived(Request(self.method, self.uri, headers, self.body, self.version))

    def with_uri(self, uri: Uri) -> Request:
        return self._derived(Request(self.method, uri, self.headers, self.body, self.version))

    def with_body(self, body: bytes, content_type: str | None = None) -> Request:
        headers = _body_headers(self.headers, body, content_type)
        return self._derived(Request(self.method, self.uri, headers, body, self.version))


@dataclass(frozen=True, slots=True)
class Response(_MessageViews):
    status_code: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION
    _parsed: ParsedValues | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def start_line(self) -> str:
        return f"{self.version} {self.status_code} {self.reason}"

    def with_headers(self, headers: Headers) -> Response:
        return self._derived(
            Response(self.status_code, self.reason, headers, self.body, self.version)
        )

    def with_body(self, body: bytes, content_type: str | None = None) -> Response:
        headers = _body_headers(self.headers, body, content_type)
        return self._derived(
            Response(self.status_code, self.reason, headers, body, self.version)
        )

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
    lines = [f"{name}: {value}" for name, value in message.headers.items]
    lines.insert(0, message.start_line())
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
        # A datagram ends where the datagram ends: complete header lines with the empty line
        # missing are read as a message without body, so the defect that matters is reported.
        return data[:-2], b""
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


def parse_message(data: bytes, *, memo: ParsedValues | None = None) -> Message:
    """Parse exactly one SIP message; raise ParseError (or a subclass) naming the defect.

    `memo` is where the message's structured views keep what they parse (a fresh one when
    None); a transport passes one memo for all it receives (see ParsedValues)."""
    data = data.lstrip(b"\r\n")  # section 7.5: ignore CRLFs before the start line
    if not data:
        raise ParseError("empty message")
    head_bytes, body = _split_head(data)
    head = head_bytes.decode("utf-8", "surrogateescape")
    # Section 7.3.1: a line starting with whitespace continues the previous one.
    if "\n " in head or "\n\t" in head:
        head = _FOLD_RE.sub(" ", head)
    lines = head.replace("\r\n", "\n").split("\n")
    start = lines[0]
    if "\r" in start or "\t" in start:
        raise ParseError("malformed start line: control character")
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        raise MessageTooLarge(f"more than {MAX_HEADER_FIELDS} header fields")

    items: list[tuple[str, str]] = []
    index: _Index = {}  # Headers' lookup index, built here in the same pass
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        # A name found in _NAME_FORMS is a registered one, a token: no need for the pattern.
        forms = _NAME_FORMS.get(name)
        if forms is None:
            if not colon or not _HEADER_NAME_RE.fullmatch(name):
                shown = line[:60]
                if line[:1] in (" ", "\t"):
                    raise ParseError(f"header line starts with whitespace: {shown!r}")
                raise ParseError(f"malformed header line {shown!r}")
            forms = _NAME_FORMS.get(name.lower()) or (name, name.lower())
        elif not colon:
            raise ParseError(f"malformed header line {line[:60]!r}")
        # A compact form (7.3.3) stands for its full name: both come out of _NAME_FORMS.
        cname, lname = forms
        value = value.strip(" \t")
        if "\r" in value:
            raise ParseError(f"bare CR in {cname} header")
        if "," in value and lname in LIST_HEADERS:
            for part in split_list(value):
                if part:
                    items.append((cname, part))
                    _index_add(index, lname, part)
        else:
            items.append((cname, value))
            if lname in index:
                _index_add(index, lname, value)
            else:
                index[lname] = value
    headers = Headers(tuple(items))
    object.__setattr__(headers, "_index", index)
    if memo is None:
        memo = ParsedValues()

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
            uri = memo.uri(second)
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
    object.__setattr__(message, "_parsed", memo)
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
                to = request.to  # parsed once per request, whatever answers it
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
    # The response repeats the request's Via, From, Call-ID and CSeq values: what the request's
    # memo holds of them serves the response's views too (the memo is keyed by the text).
    return request._derived(
        Response(
            status_code,
            reason if reason is not None else reason_phrase(status_code),
            Headers(tuple(items)),
            body,
        )
    )
