"""SIP, SIPS and tel URIs (RFC 3261 section 19.1, RFC 3966, RFC 5118) as frozen values.

Components keep their escaped form as written, so `parse_uri(str(u)) == u` holds; comparison
per RFC 3261 section 19.1.4 is `SipUri.equivalent`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from ims.sip import abnf
from ims.sip.errors import ParseError

Params = tuple[tuple[str, str | None], ...]

_TEL_PNAME_RE = re.compile(r"[A-Za-z0-9\-]+")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
# IPv4address (section 25.1: 1*3DIGIT each) whose octets are all 0-255: the usual host, taken
# with one match; anything else goes the long way and gets its defect named.
_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])"
_IPV4_OCTETS_RE = re.compile(rf"{_DEC_OCTET}\.{_DEC_OCTET}\.{_DEC_OCTET}\.{_DEC_OCTET}")


def param_value(params: Params, name: str) -> str | None:
    """The value of parameter `name` (case-insensitive); "" for a flag, None when absent."""
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return "" if value is None else value
    return None


def params_without(params: Params, name: str) -> Params:
    lname = name.lower()
    return tuple(p for p in params if p[0].lower() != lname)


def params_with(params: Params, name: str, value: str | None) -> Params:
    """`params` with `name` set to `value` (replacing in place, else appended)."""
    lname = name.lower()
    out: list[tuple[str, str | None]] = []
    done = False
    for key, old in params:
        if key.lower() == lname:
            if not done:
                out.append((key, value))
                done = True
        else:
            out.append((key, old))
    if not done:
        out.append((name, value))
    return tuple(out)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


@dataclass(frozen=True, slots=True)
class SipUri:
    """sip: or sips: URI (RFC 3261 section 19.1.1)."""

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    scheme: str = "sip"
    # The text form, made on first use: a proxy writes the same URI in several messages
    # (Request-URI, Record-Route) and hashes it for its branches.
    _text: str | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._format()
            object.__setattr__(self, "_text", text)  # a cache, not state: see the field
        return text

    def _format(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        return replace(self, params=params_with(self.params, name, value))

    def without_param(self, name: str) -> SipUri:
        return replace(self, params=params_without(self.params, name))

    @property
    def host_for_connect(self) -> str:
        """The host without IPv6 brackets, as a socket address wants it."""
        if not self.host.startswith("["):
            return self.host
        inner = self.host[1:-1]
        # RFC 5118 section 4.10: the three-colon form is sent on without its extra colon.
        return inner if ":::" not in inner else ipv6_reference_address(self.host).compressed

    def equivalent(self, other: object) -> bool:
        """URI comparison per RFC 3261 section 19.1.4."""
        if not isinstance(other, SipUri) or self.scheme != other.scheme:
            return False
        if _unescape(self.user) != _unescape(other.user):
            return False
        if _unescape(self.password) != _unescape(other.password):
            return False
        if _canonical_host(self.host) != _canonical_host(other.host) or self.port != other.port:
            return False
        mine = {k.lower(): _unescape(v) for k, v in self.params}
        theirs = {k.lower(): _unescape(v) for k, v in other.params}
        # user, ttl, method and maddr must match if present in either (19.1.4).
        for key in ("user", "ttl", "method", "maddr", "transport"):
            if (key in mine or key in theirs) and _lower(mine.get(key)) != _lower(
                theirs.get(key)
            ):
                return False
        for key in mine.keys() & theirs.keys():
            if _lower(mine[key]) != _lower(theirs[key]):
                return False
        mh = {k.lower(): _unescape(v) for k, v in self.headers}
        th = {k.lower(): _unescape(v) for k, v in other.headers}
        return mh == th


@dataclass(frozen=True, slots=True)
class TelUri:
    """tel: URI (RFC 3966 section 3)."""

    number: str
    params: Params = ()

    def __str__(self) -> str:
        return "tel:" + self.number + format_params(self.params)

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    @property
    def e164(self) -> str:
        """The number without visual separators: "+15550100001"."""
        return re.sub(r"[\-.()]", "", self.number)

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    def equivalent(self, other: object) -> bool:
        """RFC 3966 section 4: numbers compared without visual separators, params as sets."""
        if not isinstance(other, TelUri) or self.e164.lower() != other.e164.lower():
            return False
        mine = {k.lower(): _lower(_unescape(v)) for k, v in self.params}
        return mine == {k.lower(): _lower(_unescape(v)) for k, v in other.params}


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other scheme, kept as written (RFC 3261 allows absoluteURI in most places)."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"

    def equivalent(self, other: object) -> bool:
        return isinstance(other, AbsoluteUri) and str(self).lower() == str(other).lower()


Uri = SipUri | TelUri | AbsoluteUri


def _unescape(value: str | None) -> str | None:
    return None if value is None else unquote(value)


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _canonical_host(host: str) -> str:
    if host.startswith("["):
        return "[" + ipv6_reference_address(host).compressed + "]"
    return host.lower().rstrip(".")


def ipv6_reference_address(reference: str) -> ipaddress.IPv6Address:
    """The address of an IPv6reference "[...]"; raises ValueError when it is none.

    RFC 3261's IPv6address rule (from RFC 2373) also derives "2001:db8:::192.0.2.1", three
    colons before an embedded IPv4 address; RFC 4291 does not. RFC 5118 section 4.10: an
    implementation must tolerate both, so ":::" is read as "::" in that one position.
    """
    text = reference[1:-1]
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        head, sep, tail = text.rpartition(":::")
        if not sep or not abnf.IPV4_RE.fullmatch(tail):
            raise
        return ipaddress.IPv6Address(f"{head}::{tail}")


def _parse_params(text: str, uri: str, tel: bool = False) -> Params:
    """";name[=value]" sequences (RFC 3261 uri-parameters / RFC 3966 par)."""
    if not text:
        return ()
    if not text.startswith(";"):
        raise ParseError(f"malformed URI parameters in {uri!r}")
    out: list[tuple[str, str | None]] = []
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        name_ok = (_TEL_PNAME_RE if tel else abnf.PNAME_RE).fullmatch(name)
        if not name_ok:
            raise ParseError(f"malformed URI parameter {item!r} in {uri!r}")
        if eq:
            if not abnf.PVALUE_RE.fullmatch(value):
                raise ParseError(f"malformed value of URI parameter {name!r} in {uri!r}")
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def validate_host(host: str, where: str) -> None:
    """Raise ParseError unless `host` is a hostname, IPv4address or IPv6reference (25.1)."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise ParseError(f"unterminated IPv6 reference in {where!r}")
        try:
            ipv6_reference_address(host)
        except ValueError:
            raise ParseError(f"invalid IPv6 reference {host!r} in {where!r}") from None
        return
    if _IPV4_OCTETS_RE.fullmatch(host):
        return
    if abnf.IPV4_RE.fullmatch(host):
        if any(int(octet) > 255 for octet in host.split(".")):
            raise ParseError(f"invalid IPv4 address {host!r} in {where!r}")
        return
    if not abnf.HOSTNAME_RE.fullmatch(host):
        raise ParseError(f"invalid host {host!r} in {where!r}")


def split_hostport(hostport: str, where: str) -> tuple[str, int | None]:
    """"host[:port]" with IPv6 references (RFC 5118); validates both."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference in {where!r}")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ParseError(f"junk after IPv6 reference in {where!r}")
        port_text = rest[1:] if rest else None
    else:
        if hostport.count(":") > 1 and all(c in _IPV6_CHARS for c in hostport):
            # RFC 5118 section 4.2: an IPv6 address in a URI is an IPv6reference.
            raise ParseError(f"IPv6 address without enclosing '[' ']' in {where!r}")
        host, colon, port_text_raw = hostport.partition(":")
        port_text = port_text_raw if colon else None
    validate_host(host, where)
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
        raise ParseError(f"invalid port {port_text!r} in {where!r}")
    return host, int(port_text)


def parse_sip_uri(text: str) -> SipUri:
    scheme, colon, rest = text.partition(":")
    lscheme = scheme.lower()
    if not colon or lscheme not in ("sip", "sips"):
        raise ParseError(f"not a sip: or sips: URI: {text!r}")
    # userinfo may hold "?" and ";" (user-unreserved) but never an unescaped "@", and the
    # host part's params and headers never hold "@": split at the last one first (19.1.1).
    user: str | None = None
    password: str | None = None
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user, pcolon, pw = userinfo.partition(":")
        if not abnf.USER_RE.fullmatch(user):
            raise ParseError(f"invalid user part in {text!r}")
        if pcolon:
            if not abnf.PASSWORD_RE.fullmatch(pw):
                raise ParseError(f"invalid password in {text!r}")
            password = pw
    hostpart, qmark, header_text = hostpart.partition("?")
    headers: tuple[tuple[str, str], ...] = ()
    if qmark:
        hs: list[tuple[str, str]] = []
        for item in header_text.split("&"):
            hname, eq, hvalue = item.partition("=")
            if not eq or not hname or not abnf.HNV_RE.fullmatch(hname):
                raise ParseError(f"malformed URI header {item!r} in {text!r}")
            if not abnf.HNV_RE.fullmatch(hvalue):
                raise ParseError(f"malformed URI header value {item!r} in {text!r}")
            hs.append((hname, hvalue))
        headers = tuple(hs)
    semi = hostpart.find(";")
    hostport, param_text = (hostpart, "") if semi < 0 else (hostpart[:semi], hostpart[semi:])
    if not hostport:
        raise ParseError(f"missing host in {text!r}")
    host, port = split_hostport(hostport, text)
    return SipUri(
        host=host,
        user=user,
        password=password,
        port=port,
        params=_parse_params(param_text, text),
        headers=headers,
        scheme=lscheme,
    )


def parse_tel_uri(text: str) -> TelUri:
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() != "tel":
        raise ParseError(f"not a tel: URI: {text!r}")
    semi = rest.find(";")
    number, param_text = (rest, "") if semi < 0 else (rest[:semi], rest[semi:])
    params = _parse_params(param_text, text, tel=True)
    if number.startswith("+"):
        if not abnf.GLOBAL_NUMBER_RE.fullmatch(number):
            raise ParseError(f"invalid global number in {text!r}")
    else:
        if not abnf.LOCAL_NUMBER_RE.fullmatch(number):
            raise ParseError(f"invalid local number in {text!r}")
        # RFC 3966 section 5.1.5: a local number MUST carry phone-context.
        if param_value(params, "phone-context") is None:
            raise ParseError(f"local number without phone-context in {text!r}")
    return TelUri(number=number, params=params)


def parse_uri(text: str) -> Uri:
    """Parse any URI a SIP header or Request-URI may carry; raise ParseError with the defect."""
    scheme, colon, rest = text.partition(":")
    if not colon or not abnf.SCHEME_RE.fullmatch(scheme):
        raise ParseError(f"not a URI: {text!r}")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        return parse_sip_uri(text)
    if lscheme == "tel":
        return parse_tel_uri(text)
    if not rest or any(c in rest for c in ' \t\r\n<>"') or not rest.isprintable():
        raise ParseError(f"malformed {scheme}: URI {text!r}")
    return AbsoluteUri(scheme=scheme, rest=rest)
