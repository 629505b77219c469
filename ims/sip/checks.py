"""Message-level checks every element applies before any role logic.

RFC 3261 section 8.2 (UAS), 16.3 (proxy) and 18.1.2/18.3 (transport) say what a well-formed
message needs beyond its grammar: the mandatory header fields, single-valued fields appearing
once, CSeq agreeing with the method, a Content-Length that matches the body, scalars in range.
A request that fails is answered (400, or 505 for the version); a response that fails is
discarded (section 18.1.2), which is the `Drop` verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ims.sip import abnf
from ims.sip.errors import ParseError, ProtocolError
from ims.sip.headers import (
    SINGLE_HEADERS,
    canonical_name,
    parse_name_addr,
    parse_uint,
    parse_via,
)
from ims.sip.message import Headers, Message, Request, Response, make_response, parse_message
from ims.sip.uri import SipUri

# Section 8.1.1: every request carries these; Max-Forwards is checked only when present,
# as a proxy does (16.3 item 3), since a missing one is tolerated on receipt.
MANDATORY_REQUEST = ("Via", "To", "From", "Call-ID", "CSeq")
MANDATORY_RESPONSE = ("Via", "To", "From", "Call-ID", "CSeq")

_MAX_UINT32 = 2**32 - 1
_MEDIA_TYPE_RE = re.compile(
    rf"\s*{abnf.token}\s*/\s*{abnf.token}"
    rf"(?:\s*;\s*{abnf.token}\s*=\s*(?:{abnf.token}|{abnf.quoted_string}))*\s*"
)
_CALLID_RE = re.compile(abnf.callid)


@dataclass(frozen=True, slots=True)
class Valid:
    def __str__(self) -> str:
        return "valid"


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer the request with this status and reason phrase."""

    status_code: int
    reason: str

    def __str__(self) -> str:
        return f"{self.status_code} {self.reason}"


@dataclass(frozen=True, slots=True)
class Drop:
    """Discard silently (a broken response, or bytes too broken to answer)."""

    reason: str

    def __str__(self) -> str:
        return "drop"


Verdict = Valid | Reject | Drop


def validate(message: Message) -> None:
    """Raise ProtocolError naming the first message-level defect of a parsed message."""
    h = message.headers
    is_request = isinstance(message, Request)
    for name in MANDATORY_REQUEST if is_request else MANDATORY_RESPONSE:
        if name not in h:
            raise ParseError(f"missing {name} header")
    _check_singles(h)

    # The structured headers are parsed through the message's views, which remember what they
    # parsed: the layers above read the same Via, From, To, CSeq and Route without parsing
    # them again.
    message.vias  # noqa: B018 - parsing is the check
    message.to  # noqa: B018
    message.from_  # noqa: B018
    call_id = h.get("Call-ID")
    if call_id is not None and not _CALLID_RE.fullmatch(call_id):
        raise ParseError("malformed Call-ID header")
    cseq = message.cseq
    if isinstance(message, Request) and cseq.method != message.method:
        # Section 8.1.1.5 / 8.2: the CSeq method MUST match the Request-Line method.
        raise ParseError("CSeq method does not match the request method")
    contacts = h.get_all("Contact")
    if any(value.strip() == "*" for value in contacts):
        for value in contacts:
            if value.strip() != "*":
                parse_name_addr(value, "Contact")
    elif contacts:
        message.name_addrs("Contact")
    for name in ("Route", "Record-Route", "Path", "Service-Route"):
        message.name_addrs(name)
    max_forwards = h.get("Max-Forwards")
    if max_forwards is not None:
        parse_uint(max_forwards, "Max-Forwards", 255)  # section 20.22: 0-255 in practice
    for name in ("Expires", "Min-Expires"):
        scalar = h.get(name)
        if scalar is not None:
            parse_uint(scalar, name, _MAX_UINT32)  # section 20.19: up to 2**32-1
    content_type = h.get("Content-Type")
    if content_type is not None and not _MEDIA_TYPE_RE.fullmatch(content_type):
        raise ParseError("malformed Content-Type header")
    length_text = h.get("Content-Length")
    if length_text is not None:
        length = parse_uint(length_text, "Content-Length", _MAX_UINT32)
        if length > len(message.body):
            # Section 18.3: a datagram whose body is shorter than Content-Length is rejected.
            raise ParseError("Content-Length larger than the body")
    elif message.body and content_type is None:
        raise ParseError("body without Content-Type")


def _check_singles(h: Headers) -> None:
    if len(h.names()) == len(h):
        return  # no name repeats at all
    seen: set[str] = set()
    for name, _ in h:
        lname = name.lower()
        if lname in SINGLE_HEADERS:
            if lname in seen:
                raise ParseError(f"more than one {canonical_name(name)} header")
            seen.add(lname)


def check_message(message: Message) -> Verdict:
    """The verdict of the message-level checks on a parsed message."""
    try:
        validate(message)
    except ProtocolError as exc:
        if isinstance(message, Response):
            return Drop(exc.reason)
        return Reject(exc.status_code, _reason_phrase(exc.reason))
    if isinstance(message, Response) and not 100 <= message.status_code <= 699:
        return Drop("status code out of range")
    return Valid()


def _looks_like_response(data: bytes) -> bool:
    return data.lstrip(b"\r\n")[:4].upper() == b"SIP/"


def check_bytes(data: bytes) -> Verdict:
    """Parse one message and check it: what an element would do with these bytes."""
    try:
        message = parse_message(data)
    except ProtocolError as exc:
        if _looks_like_response(data):
            return Drop(exc.reason)
        if error_response_for(data, exc) is None:
            return Drop(exc.reason)
        return Reject(exc.status_code, _reason_phrase(exc.reason))
    return check_message(message)


def _reason_phrase(defect: str) -> str:
    """A Reason-Phrase naming the defect: printable, one line, bounded (section 25.1)."""
    text = "".join(c if c.isprintable() else "?" for c in defect)
    text = text[:1].upper() + text[1:]
    return text[:120]


_RAW_HEADER_RE = re.compile(rb"^([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:[ \t]*(.*?)[ \t]*$", re.M)
_ECHOED = ("via", "from", "to", "call-id", "cseq")
# sent-protocol LWS sent-by (section 20.42), whatever follows.
_VIA_SENT_BY_RE = re.compile(
    rf"\s*{abnf.token}\s*/\s*{abnf.token}\s*/\s*{abnf.token}\s+"
    rf"(?:{abnf.IPv6reference}|[A-Za-z0-9\-.]+)(?:\s*:\s*[0-9]+)?\s*(?:[;,]|$)"
)


def error_response_for(data: bytes, error: ProtocolError) -> Response | None:
    """The response to a request that failed to parse, if enough of it can be read.

    A response needs a Via to travel back (section 18.2.2); From, To, Call-ID and CSeq are
    echoed when present so the client can match it. Returns None for responses and for bytes
    without a usable Via: those are dropped.
    """
    if _looks_like_response(data):
        return None
    head = data.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0]
    first_line, _, _ = head.partition(b"\n")
    if not first_line.strip() or b":" in first_line.split(b" ", 1)[0]:
        return None
    items: list[tuple[str, str]] = []
    for m in _RAW_HEADER_RE.finditer(head.partition(b"\n")[2]):
        name = canonical_name(m.group(1).decode("ascii", "replace"))
        if name.lower() in _ECHOED:
            value = m.group(2).decode("utf-8", "replace").strip("\r")
            if name == "Via":
                try:
                    parse_via(value)
                except ParseError:
                    if not _VIA_SENT_BY_RE.match(value):
                        continue
                    # A Via whose parameters break the grammar (RFC 4475 3.1.2.1) still names
                    # the sender; the answer goes to the packet's source and echoes it as
                    # received, so the client can match it (8.2.6.2).
            items.append((name, value))
    if not any(name == "Via" for name, _ in items):
        return None
    # make_response reads only the header fields it echoes.
    probe = Request("ERROR", SipUri(host="invalid"), Headers(tuple(items)))
    return make_response(probe, error.status_code, _reason_phrase(error.reason))
