"""Header names and the structured header values the core reads (RFC 3261 section 20, 25.1).

Messages store header values as text; these parsers give the structure on demand and raise
ParseError naming the defect, which an element turns into 400 (RFC 3261 section 8.2 / 16.3).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from ims.sip import abnf
from ims.sip.errors import ParseError
from ims.sip.uri import (
    Params,
    SipUri,
    Uri,
    format_params,
    param_value,
    params_with,
    params_without,
    parse_uri,
    validate_host,
)

# RFC 3261 section 7.3.3 and the IANA registry: compact form -> full name.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_KNOWN = (
    "Accept Accept-Contact Accept-Encoding Accept-Language Alert-Info Allow Allow-Events "
    "Authentication-Info Authorization Call-ID Call-Info Contact Content-Disposition "
    "Content-Encoding Content-Language Content-Length Content-Type CSeq Date Error-Info Event "
    "Expires Flow-Timer From Identity Identity-Info In-Reply-To Max-Forwards Min-Expires "
    "Min-SE MIME-Version Organization P-Access-Network-Info P-Asserted-Identity "
    "P-Associated-URI P-Called-Party-ID P-Charging-Vector P-Preferred-Identity "
    "P-Visited-Network-ID Path Priority Proxy-Authenticate Proxy-Authorization "
    "Proxy-Require RAck Reason Record-Route Refer-To Referred-By Reject-Contact Reply-To "
    "Request-Disposition Require Retry-After Route RSeq Server Service-Route "
    "Session-Expires SIP-ETag SIP-If-Match Subject Subscription-State Supported Timestamp To "
    "Unsupported User-Agent Via Warning WWW-Authenticate"
).split()
CANONICAL_NAMES: dict[str, str] = {name.lower(): name for name in _KNOWN}
CANONICAL_NAMES.update({k: v for k, v in COMPACT_FORMS.items()})

# Headers whose grammar is a comma-separated list (RFC 3261 section 7.3.1): stored one value
# per entry. The authentication headers are excluded by that section's own exception.
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept Accept-Contact Accept-Encoding Accept-Language Alert-Info Allow Allow-Events "
        "Call-Info Contact Content-Encoding Content-Language Error-Info In-Reply-To "
        "P-Asserted-Identity P-Associated-URI P-Preferred-Identity Path Proxy-Require Reason "
        "Record-Route Reject-Contact Require Route Service-Route Supported Unsupported Via "
        "Warning"
    ).split()
)

# Headers that may appear at most once (RFC 3261 section 20 / 7.3.1: not a list).
SINGLE_HEADERS = frozenset(
    name.lower()
    for name in (
        "Call-ID Content-Disposition Content-Length Content-Type CSeq Date Expires From "
        "Max-Forwards Min-Expires MIME-Version Organization Priority Reply-To Retry-After "
        "Server Subject Timestamp To User-Agent"
    ).split()
)


def canonical_name(name: str) -> str:
    """The registered spelling of a header name; unknown names keep the case they came in."""
    return CANONICAL_NAMES.get(name.lower(), name)


def split_list(value: str) -> list[str]:
    """Split a header value at top-level commas (outside quotes and <...>), trimming LWS."""
    if "," not in value:
        return [value.strip()]
    out: list[str] = []
    depth_angle = False
    in_quote = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            depth_angle = True
        elif c == ">":
            depth_angle = False
        elif c == "," and not depth_angle:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    if in_quote:
        raise ParseError(f"unterminated quoted string in {value!r}")
    out.append(value[start:].strip())
    return out


_PARAM_RE = re.compile(
    rf"\s*;\s*({abnf.token})"
    rf"(?:\s*=\s*({abnf.IPv6address}|{abnf.token}|{abnf.quoted_string}|{abnf.IPv6reference}))?"
)


def parse_params(text: str, where: str) -> Params:
    """Generic header parameters ";name[=token|quoted-string|host]" (section 25.1 generic-param;
    a bare IPv6 address is a host too, as in Via received, RFC 5118 section 4.5)."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _PARAM_RE.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise ParseError(f"malformed parameter {text[pos:].strip()!r} in {where}")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(out)


def unquote_string(value: str) -> str:
    """The content of a quoted-string with quoted-pairs resolved (section 25.1)."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.S)
    return value


def quote_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- Via (section 20.42) -------------------------------------------------------------------

_VIA_RE = re.compile(
    rf"\s*({abnf.token})\s*/\s*({abnf.token})\s*/\s*({abnf.token})\s+"
    rf"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:\s*:\s*([0-9]+))?"
)


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP/2.0"

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return param_value(self.params, "branch")

    @property
    def received(self) -> str | None:
        return param_value(self.params, "received")

    @property
    def rport(self) -> str | None:
        """"" when the client asked for rport (RFC 3581), the port once filled, else None."""
        return param_value(self.params, "rport")

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> Via:
        return replace(self, params=params_with(self.params, name, value))

    def without_param(self, name: str) -> Via:
        return replace(self, params=params_without(self.params, name))

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port


def parse_sent_by(value: str) -> tuple[Via, int]:
    """sent-protocol LWS sent-by at the start of a Via value (section 20.42): the Via without
    its parameters, and the index where the parameters begin. It reads nothing past the
    first ";", so Vias that differ only in their parameters share the result."""
    m = _VIA_RE.match(value)
    if m is None:
        raise ParseError(f"malformed Via header {value.strip()!r}")
    name, version, transport, host, port_text = m.groups()
    # The pattern already split host and port: check each as split_hostport would.
    validate_host(host, "Via sent-by")
    port: int | None = None
    if port_text is not None:
        if not port_text.isascii() or int(port_text) > 65535:
            raise ParseError(f"invalid port {port_text!r} in 'Via sent-by'")
        port = int(port_text)
    return Via(transport.upper(), host, port, (), f"{name.upper()}/{version}"), m.end()


def parse_via(
    value: str, *, sent_by: Callable[[str], tuple[Via, int]] = parse_sent_by
) -> Via:
    """One Via value; `sent_by` reads its start (a memo of parse_sent_by may be passed)."""
    base, end = sent_by(value)
    params = parse_params(value[end:], "Via")
    for key, pval in params:
        k = key.lower()
        if k == "ttl" and (pval is None or not pval.isdigit() or int(pval) > 255):
            raise ParseError("Via ttl out of range")
        if k == "rport" and pval is not None and (not pval.isdigit() or int(pval) > 65535):
            raise ParseError("Via rport out of range")
        if k == "branch" and pval is None:
            raise ParseError("Via branch without a value")
    return Via(base.transport, base.host, base.port, params, base.protocol)


# --- name-addr / addr-spec (section 20.10, 20.20, 20.39, 25.1) ----------------------------------

_DISPLAY_TOKENS_RE = re.compile(rf"\s*((?:{abnf.token})(?:{abnf.LWS}{abnf.token})*)\s*<")
_QUOTED_DISPLAY_RE = re.compile(rf"\s*({abnf.quoted_string})\s*<")


@dataclass(frozen=True, slots=True)
class NameAddress:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route, ...)."""

    uri: Uri
    display_name: str | None = None  # as written, quotes included
    params: Params = ()

    def __str__(self) -> str:
        display = f"{self.display_name} " if self.display_name else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return param_value(self.params, "tag")

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> NameAddress:
        return replace(self, params=params_with(self.params, name, value))

    @property
    def sip_uri(self) -> SipUri:
        if not isinstance(self.uri, SipUri):
            raise ParseError(f"expected a sip: or sips: URI, got {self.uri}")
        return self.uri


def parse_name_addr(
    value: str, where: str = "header", *, uri_of: Callable[[str], Uri] = parse_uri
) -> NameAddress:
    """name-addr / addr-spec followed by parameters (RFC 3261 section 20.10 and 25.1).

    In the addr-spec form, parameters after the URI belong to the header, not the URI
    (section 20.10), so the URI ends at the first ";". `uri_of` parses the URI (a memo of
    parse_uri may be passed: a From with a fresh tag still names the same URI).
    """
    text = value.strip()
    display: str | None = None
    if "<" in text:
        m = _QUOTED_DISPLAY_RE.match(text) or _DISPLAY_TOKENS_RE.match(text)
        if m is None:
            if text.startswith("<"):
                start = 1
            else:
                raise ParseError(f"malformed display name in {where}")
        else:
            display = m.group(1) or None
            start = m.end()
        end = text.find(">", start)
        if end < 0:
            raise ParseError(f"unterminated <URI> in {where}")
        uri_text = text[start:end]
        rest = text[end + 1 :]
    else:
        if text.startswith('"'):
            raise ParseError(f"display name without <URI> in {where}")
        semi = text.find(";")
        uri_text, rest = (text, "") if semi < 0 else (text[:semi].rstrip(" \t"), text[semi:])
        if any(c in uri_text for c in " \t,?"):
            raise ParseError(f"addr-spec with reserved characters must use <> in {where}")
    if any(c in uri_text for c in " \t"):
        raise ParseError(f"whitespace inside the URI in {where}")
    uri = uri_of(uri_text)
    return NameAddress(uri=uri, display_name=display, params=parse_params(rest, where))


def iter_name_addrs(values: list[str], where: str) -> Iterator[NameAddress]:
    for v in values:
        yield parse_name_addr(v, where)


# --- CSeq, scalars ----------------------------------------------------------------------------

_CSEQ_RE = re.compile(rf"\s*([0-9]+)\s+({abnf.token})\s*")


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.fullmatch(value)
    if m is None:
        raise ParseError(f"malformed CSeq header {value.strip()!r}")
    number = int(m.group(1))
    if number >= 2**31:  # section 8.1.1.5: less than 2**31
        raise ParseError("CSeq number out of range")
    return CSeq(number, m.group(2))


def parse_uint(value: str, name: str, maximum: int) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise ParseError(f"malformed {name} header {text!r}")
    number = int(text)
    if number > maximum:
        raise ParseError(f"{name} out of range")
    return number


# --- Reason (RFC 3326 section 2) -------------------------------------------------------------
# Reason        = "Reason" HCOLON reason-value *(COMMA reason-value)
# reason-value  = protocol *(SEMI reason-params)
# protocol      = "SIP" / "Q.850" / token
# reason-params = protocol-cause / reason-text / reason-extension
# protocol-cause = "cause" EQUAL cause ; cause = 1*DIGIT
# reason-text   = "text" EQUAL quoted-string

_REASON_PROTOCOL_RE = re.compile(rf"\s*({abnf.token})")
_CAUSE_DIGITS = 9  # beyond any cause a registry defines; keeps int() bounded


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason-value. `protocol` is as written (compare it case-insensitively: tokens are
    case-insensitive, RFC 3261 section 7.3.1); `cause` the protocol-cause, `text` the
    reason-text unquoted, `params` every parameter as written."""

    protocol: str
    cause: int | None = None
    text: str | None = None
    params: Params = ()

    def is_protocol(self, protocol: str) -> bool:
        return self.protocol.lower() == protocol.lower()


def parse_reason(value: str) -> tuple[Reason, ...]:
    """Every reason-value of one Reason header value; ParseError naming the defect."""
    out: list[Reason] = []
    for item in split_list(value):
        m = _REASON_PROTOCOL_RE.match(item)
        if m is None:
            raise ParseError(f"malformed Reason header {item[:40]!r}: no protocol")
        params = parse_params(item[m.end():], "Reason")
        cause_text = param_value(params, "cause")
        cause: int | None = None
        if cause_text is not None:
            digits = cause_text.isascii() and cause_text.isdigit()
            if not digits or len(cause_text) > _CAUSE_DIGITS:
                raise ParseError(f"malformed cause {cause_text[:20]!r} in Reason")
            cause = int(cause_text)
        text = param_value(params, "text")
        if text is not None:
            if not text.startswith('"'):
                raise ParseError("Reason text is not a quoted string")
            text = unquote_string(text)
        out.append(Reason(m.group(1), cause, text, params))
    return tuple(out)


def reasons_of(values: Iterable[str], protocol: str | None = None) -> tuple[Reason, ...]:
    """The readable reason-values of a message's Reason header fields, in order, only those of
    `protocol` (case-insensitive) when given. A malformed field is skipped, not fatal: the
    Reason header is informative (RFC 3326 section 2) and must not make a response unusable."""
    out: list[Reason] = []
    for value in values:
        try:
            parsed = parse_reason(value)
        except ParseError:
            continue
        out.extend(r for r in parsed if protocol is None or r.is_protocol(protocol))
    return tuple(out)


def reason_cause(values: Iterable[str], protocol: str) -> int | None:
    """The cause of the first readable reason-value of `protocol`, None when there is none or
    it has no cause."""
    found = reasons_of(values, protocol)
    return found[0].cause if found else None
