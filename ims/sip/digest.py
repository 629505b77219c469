"""HTTP Digest authentication for SIP: parse, answer and verify challenges.

RFC 3261 section 22 carries the scheme; RFC 7616 gives it its current semantics (SHA-256,
-sess variants, qop) and RFC 8760 brings those to SIP. RFC 2617 / RFC 2069 compatibility
(no qop, MD5 only) is kept because deployed UAs still send it.

Sans-IO: nothing here opens a socket or reads a clock. Time arrives as ``now`` (seconds, a
wall clock so that nonces survive a restart), randomness through injectable callables.

Layout, top to bottom:
- errors, in the ims.sip.errors family: ``DigestProtocolError`` leaves (a ``ParseError``: the
  peer sent a bad header, a server answers 400 with ``reason``), ``UnsupportedChallenge`` /
  ``CredentialsRejected`` (the peer refused us), ``DigestUsageError`` (a
  ``LocalProtocolError``: our caller misused the API);
- algorithms and the request-digest computation (RFC 7616 section 3.4.1-3.4.3);
- the header grammar (RFC 3261 section 25.1, RFC 7235 section 4.1), parse and format;
- ``DigestClient`` (UAC side) and ``DigestServer`` (UAS / registrar / proxy side).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import math
import os
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from ims.sip.errors import LocalProtocolError, ParseError, SipError

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "CredentialsRejected",
    "DigestAlgorithm",
    "DigestChallenge",
    "DigestClient",
    "DigestCredentials",
    "DigestError",
    "DigestProtocolError",
    "DigestServer",
    "DigestServerConfig",
    "DigestSyntaxError",
    "DigestUsageError",
    "DuplicateDigestParam",
    "Failed",
    "FailureReason",
    "InvalidDigestParam",
    "MissingDigestParam",
    "NotDigestScheme",
    "Ok",
    "Password",
    "Stale",
    "StoredHA1",
    "StoredSecret",
    "UnsupportedChallenge",
    "Verdict",
    "compute_ha1",
    "compute_response",
    "format_challenge",
    "format_credentials",
    "new_cnonce",
    "parse_challenges",
    "parse_credentials",
]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class DigestError(SipError):
    """Base of every error raised by this module."""


class DigestProtocolError(DigestError, ParseError):
    """The peer sent a challenge or credentials header value that breaks the rules.

    ``status_code`` and ``reason`` are what a SIP server answers with (RFC 3261 section 21.4.1:
    400 for a malformed request); ``reason`` is a valid Reason-Phrase naming the defect and
    ``detail`` says where it is.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status_code} {self.reason}: {self.detail}"


class DigestSyntaxError(DigestProtocolError):
    """The header value does not follow the auth-param grammar (RFC 3261 section 25.1)."""

    def __init__(self, role: str, expected: str, text: str, pos: int) -> None:
        snippet = text[pos : pos + 20]
        super().__init__(
            f"Malformed Digest {role.capitalize()}",
            f"expected {expected} at offset {pos} of the {role} header value, found "
            + (repr(snippet) if snippet else "the end of the value"),
        )
        self.role = role
        self.position = pos


class NotDigestScheme(DigestProtocolError):
    """No ``Digest`` challenge or credentials in the value (RFC 3261 section 22.4)."""

    def __init__(self, role: str, schemes: Sequence[str]) -> None:
        found = ", ".join(repr(s) for s in schemes) or "none"
        super().__init__(
            "Unsupported Authorization Scheme",
            f"the {role} header value uses scheme {found}; only 'Digest' is supported",
        )
        self.role = role
        self.schemes = tuple(schemes)


class DuplicateDigestParam(DigestProtocolError):
    """A parameter appears twice (RFC 7616 section 3.4: each directive at most once)."""

    def __init__(self, role: str, name: str) -> None:
        super().__init__(
            _reason_with_name("Duplicate Digest Parameter", name),
            f"parameter {name!r} appears more than once in the {role} header value",
        )
        self.role = role
        self.name = name


class MissingDigestParam(DigestProtocolError):
    """A parameter the grammar requires is absent."""

    def __init__(self, role: str, name: str, why: str) -> None:
        super().__init__(
            _reason_with_name("Missing Digest Parameter", name),
            f"the {role} header value has no {name!r} parameter ({why})",
        )
        self.role = role
        self.name = name


class InvalidDigestParam(DigestProtocolError):
    """A parameter is present but its value is not acceptable."""

    def __init__(self, role: str, name: str, value: str, why: str) -> None:
        super().__init__(
            _reason_with_name("Invalid Digest Parameter", name),
            f"parameter {name}={value[:40]!r} in the {role} header value: {why}",
        )
        self.role = role
        self.name = name
        self.value = value


class UnsupportedChallenge(DigestError):
    """Client side: none of the challenges offered can be answered by this client."""


class CredentialsRejected(DigestError):
    """Client side: the server challenged again without ``stale=true``, so the username or
    password is wrong (RFC 7616 section 3.3, ``stale``). Ask the user; do not retry."""

    def __init__(self, realm: str) -> None:
        super().__init__(
            f"the server rejected the credentials for realm {realm!r}: check username and password"
        )
        self.realm = realm


class DigestUsageError(DigestError, LocalProtocolError, ValueError):
    """The caller misused the API (bad configuration or arguments); not the peer's fault."""


_REASON_NAME = re.compile(r"[A-Za-z0-9-]{1,32}")


def _reason_with_name(reason: str, name: str) -> str:
    # Reason-Phrase (RFC 3261 section 25.1) cannot carry every token character; name the
    # parameter only when it is plainly safe.
    return f"{reason} {name}" if _REASON_NAME.fullmatch(name) else reason


# --------------------------------------------------------------------------------------------
# Algorithms and the request-digest (RFC 7616 sections 3.4.1-3.4.3, RFC 8760 section 2)
# --------------------------------------------------------------------------------------------


class DigestAlgorithm(enum.Enum):
    """Values of the ``algorithm`` parameter (IANA "HTTP Digest Hash Algorithms")."""

    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA_256 = "SHA-256"
    SHA_256_SESS = "SHA-256-sess"
    SHA_512_256 = "SHA-512-256"
    SHA_512_256_SESS = "SHA-512-256-sess"

    @classmethod
    def from_token(cls, token: str | None) -> DigestAlgorithm | None:
        """The algorithm named by ``token``; absent means MD5 (RFC 7616 section 3.3).

        Returns None for a name this module does not know; such a challenge is ignored.
        """
        if token is None:
            return cls.MD5
        return _ALGORITHM_BY_NAME.get(token.lower())

    @property
    def is_session(self) -> bool:
        """The -sess variants fold nonce and cnonce into A1 (RFC 7616 section 3.4.2)."""
        return self.value.endswith("-sess")

    @property
    def base(self) -> DigestAlgorithm:
        """The non-session algorithm with the same hash function (its HA1 is the stored one)."""
        return _BASE[self]

    @property
    def strength(self) -> int:
        """Higher is stronger; used by the client to pick among offered challenges."""
        return _STRENGTH[self.base]

    def hexdigest(self, data: bytes) -> str:
        return hashlib.new(_HASHLIB_NAME[self.base], data).hexdigest()


_ALGORITHM_BY_NAME: Final = {a.value.lower(): a for a in DigestAlgorithm}
_BASE: Final = {
    DigestAlgorithm.MD5: DigestAlgorithm.MD5,
    DigestAlgorithm.MD5_SESS: DigestAlgorithm.MD5,
    DigestAlgorithm.SHA_256: DigestAlgorithm.SHA_256,
    DigestAlgorithm.SHA_256_SESS: DigestAlgorithm.SHA_256,
    DigestAlgorithm.SHA_512_256: DigestAlgorithm.SHA_512_256,
    DigestAlgorithm.SHA_512_256_SESS: DigestAlgorithm.SHA_512_256,
}
_HASHLIB_NAME: Final = {
    DigestAlgorithm.MD5: "md5",
    DigestAlgorithm.SHA_256: "sha256",
    DigestAlgorithm.SHA_512_256: "sha512_256",
}
_STRENGTH: Final = {
    DigestAlgorithm.MD5: 1,
    DigestAlgorithm.SHA_256: 2,
    DigestAlgorithm.SHA_512_256: 3,
}


def _hash_available(algorithm: DigestAlgorithm) -> bool:
    # SHA-512/256 depends on the OpenSSL build behind hashlib.
    try:
        hashlib.new(_HASHLIB_NAME[algorithm.base])
    except ValueError:
        return False
    return True


SUPPORTED_ALGORITHMS: Final[frozenset[DigestAlgorithm]] = frozenset(
    a for a in DigestAlgorithm if _hash_available(a)
)
"""Every algorithm this module can compute on this host."""

QOP_AUTH: Final = "auth"
QOP_AUTH_INT: Final = "auth-int"
_KNOWN_QOP: Final = (QOP_AUTH, QOP_AUTH_INT)
_NC_MAX: Final = 0xFFFFFFFF


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def compute_ha1(algorithm: DigestAlgorithm, username: str, realm: str, password: str) -> str:
    """H(username ":" realm ":" password), the value a registrar may store instead of the
    password (RFC 7616 section 3.4.2). The -sess step is applied by ``compute_response``."""
    return algorithm.base.hexdigest(_utf8(f"{username}:{realm}:{password}"))


def compute_response(
    algorithm: DigestAlgorithm,
    ha1: str,
    *,
    nonce: str,
    method: str,
    digest_uri: str,
    qop: str | None,
    nc: int | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest (the ``response`` parameter) as lowercase hex.

    ``ha1`` is ``compute_ha1`` of the base algorithm. With ``qop`` None this is the RFC 2069
    form (RFC 2617 section 3.2.2.1), otherwise RFC 7616 section 3.4.1.
    """
    if qop is not None and qop not in _KNOWN_QOP:
        raise DigestUsageError(f"qop must be 'auth', 'auth-int' or None, not {qop!r}")
    if qop is not None and (nc is None or cnonce is None):
        raise DigestUsageError("qop requires both nc and cnonce (RFC 7616 section 3.4)")
    if algorithm.is_session and cnonce is None:
        raise DigestUsageError(f"{algorithm.value} requires a cnonce (RFC 7616 section 3.4.2)")
    if nc is not None and not 0 <= nc <= _NC_MAX:
        raise DigestUsageError(f"nc must fit in 8 hex digits, not {nc}")

    def h(data: str | bytes) -> str:
        return algorithm.hexdigest(data if isinstance(data, bytes) else _utf8(data))

    key = ha1.lower()
    if algorithm.is_session:
        # RFC 7616 section 3.4.2: A1 = H(user:realm:pass) ":" nonce ":" cnonce
        key = h(f"{key}:{nonce}:{cnonce}")
    # RFC 7616 section 3.4.3: auth-int adds H(entity-body); SIP hashes an empty body as H("").
    a2 = f"{method}:{digest_uri}:{h(body)}" if qop == QOP_AUTH_INT else f"{method}:{digest_uri}"
    if qop is None:
        return h(f"{key}:{nonce}:{h(a2)}")
    return h(f"{key}:{nonce}:{nc:08x}:{cnonce}:{qop}:{h(a2)}")


# --------------------------------------------------------------------------------------------
# Header values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestChallenge:
    """One ``Digest`` challenge of a WWW-Authenticate / Proxy-Authenticate value.

    ``algorithm`` is kept as received (None when absent, which means MD5); ``qop`` is None
    when the challenge has no qop-options (an RFC 2069 server). Unknown auth-params are kept
    in ``params`` as (lowercase name, value) pairs, in order.
    """

    realm: str
    nonce: str
    algorithm: str | None = None
    qop: tuple[str, ...] | None = None
    opaque: str | None = None
    stale: bool = False
    domain: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()

    @property
    def digest_algorithm(self) -> DigestAlgorithm | None:
        """The algorithm, or None when this module does not know it."""
        return DigestAlgorithm.from_token(self.algorithm)


@dataclass(frozen=True)
class DigestCredentials:
    """The ``Digest`` credentials of an Authorization / Proxy-Authorization value.

    ``nc`` is the nonce-count as an integer; ``qop``, ``cnonce`` and ``nc`` are all present or
    all absent (RFC 2617 section 3.2.2, enforced by the parser).
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: int | None = None
    params: tuple[tuple[str, str], ...] = ()

    @property
    def digest_algorithm(self) -> DigestAlgorithm | None:
        return DigestAlgorithm.from_token(self.algorithm)


# ---- grammar (RFC 3261 section 25.1) --------------------------------------------------------

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# A run of qdtext taken as is (RFC 3261 section 25.1: HTAB, %x20-21, %x23-5B, %x5D-7E and
# UTF8-NONASCII, lone surrogates excepted); the scanner looks one by one only at the rest.
_QDTEXT_RUN_RE: Final = re.compile(
    r"[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\ud7ff\ue000-\U0010ffff]*"
)
# auth-param = token EQUAL ( token / quoted-string ) with plain blanks around "=" and a
# quoted-string without quoted-pairs: what every client sends, read with one match. Any other
# spelling (folding, escapes, a defect) fails the match and goes through the scanner.
_PLAIN_AUTH_PARAM_RE: Final = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*=[ \t]*(?:([A-Za-z0-9\-.!%*_+`'~]+)|"
    r"\"([\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\ud7ff\ue000-\U0010ffff]*)\")"
)
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]+")
_NC_RE: Final = re.compile(r"[0-9A-Fa-f]{8}")  # nc-value = 8LHEX
_WSP: Final = " \t"

_ROLE_CHALLENGE: Final = "challenge"
_ROLE_CREDENTIALS: Final = "credentials"


@dataclass(frozen=True)
class _AuthParam:
    name: str  # lowercased: auth-param names are case-insensitive (RFC 7235 section 2.1)
    value: str  # quoted-string already unescaped
    quoted: bool


@dataclass(frozen=True)
class _AuthValue:
    scheme: str
    params: tuple[_AuthParam, ...]


class _Scanner:
    """A cursor over one header value; each method is one ABNF rule."""

    def __init__(self, text: str, role: str) -> None:
        self.text = text
        self.role = role
        self.pos = 0

    def fail(self, expected: str) -> DigestSyntaxError:
        return DigestSyntaxError(self.role, expected, self.text, self.pos)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def sws(self) -> bool:
        """SWS = [LWS]; LWS = [*WSP CRLF] 1*WSP. Returns whether any was consumed."""
        start = self.pos
        text = self.text
        if start >= len(text) or text[start] not in " \t\r\n":
            return False  # the usual case, between tokens: nothing to scan
        while self.pos < len(text):
            c = text[self.pos]
            if c in _WSP:
                self.pos += 1
            elif c == "\r":
                if text.startswith("\r\n", self.pos) and text[self.pos + 2 : self.pos + 3] in (
                    " ",
                    "\t",
                ):
                    self.pos += 3
                else:
                    raise self.fail("line folding (CRLF followed by whitespace)")
            elif c == "\n":
                raise self.fail("line folding (CRLF followed by whitespace)")
            else:
                break
        return self.pos > start

    def token(self) -> str | None:
        m = _TOKEN_RE.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def quoted_string(self) -> str:
        """quoted-string = DQUOTE *(qdtext / quoted-pair) DQUOTE, returned unescaped."""
        text = self.text
        self.pos += 1  # opening DQUOTE, checked by the caller
        out: list[str] = []
        while True:
            run = _QDTEXT_RUN_RE.match(text, self.pos)
            if run is not None and run.end() > self.pos:
                out.append(run.group())
                self.pos = run.end()
            if self.pos >= len(text):
                raise self.fail("the closing '\"' of a quoted-string")
            c = text[self.pos]
            o = ord(c)
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                # quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
                nxt = text[self.pos + 1 : self.pos + 2]
                if not nxt or nxt in "\r\n" or ord(nxt) > 0x7F:
                    self.pos += 1
                    raise self.fail("an ASCII character other than CR or LF after '\\'")
                out.append(nxt)
                self.pos += 2
            elif c == "\r":
                if text.startswith("\r\n", self.pos) and text[self.pos + 2 : self.pos + 3] in (
                    " ",
                    "\t",
                ):
                    self.pos += 2  # LWS inside qdtext: drop the CRLF, keep the WSP
                else:
                    raise self.fail("line folding (CRLF followed by whitespace)")
            elif c == "\t" or 0x20 <= o < 0x7F or (o >= 0x80 and not 0xD800 <= o <= 0xDFFF):
                out.append(c)
                self.pos += 1
            else:
                raise self.fail("a printable character inside the quoted-string")


def _parse_auth_values(text: str, role: str) -> list[_AuthValue]:
    """One header value holding one or more ``scheme auth-param *(COMMA auth-param)``.

    RFC 3261 forbids combining these headers into one line (section 7.3.1) but RFC 7235
    section 4.1 allows several challenges in one value, so a comma followed by ``token LWS
    token`` (not ``token =``) starts the next one.
    """
    s = _Scanner(text, role)
    s.sws()
    if s.at_end():
        raise s.fail("an auth-scheme")
    values: list[_AuthValue] = []
    while True:
        scheme = s.token()
        if scheme is None:
            raise s.fail("an auth-scheme token")
        if not s.sws():
            raise s.fail(f"whitespace after the auth-scheme {scheme!r}")
        params: list[_AuthParam] = []
        plain = _PLAIN_AUTH_PARAM_RE.match(text, s.pos)
        while True:
            if plain is not None:
                name, token_value, quoted_value = plain.groups()
                if token_value is not None:
                    params.append(_AuthParam(name.lower(), token_value, False))
                else:
                    params.append(_AuthParam(name.lower(), quoted_value, True))
                s.pos = plain.end()
                s.sws()
            else:
                params.append(_auth_param(s))
            if s.at_end():
                values.append(_AuthValue(scheme, tuple(params)))
                return values
            if s.peek() != ",":
                raise s.fail("',' between parameters")
            s.pos += 1
            s.sws()
            plain = _PLAIN_AUTH_PARAM_RE.match(text, s.pos)
            if plain is not None:
                continue  # token "=": another auth-param, not the next auth-scheme
            mark = s.pos
            if s.token() is None:
                raise s.fail("a parameter or an auth-scheme after ','")
            s.sws()
            next_is_param = s.peek() == "="
            s.pos = mark
            if not next_is_param:
                break
        values.append(_AuthValue(scheme, tuple(params)))


def _auth_param(s: _Scanner) -> _AuthParam:
    """auth-param = token EQUAL ( token / quoted-string ), and the SWS after it."""
    name = s.token()
    if name is None:
        raise s.fail("an auth-param name")
    s.sws()  # EQUAL = SWS "=" SWS
    if s.peek() != "=":
        raise s.fail(f"'=' after the parameter name {name!r}")
    s.pos += 1
    s.sws()
    if s.peek() == '"':
        param = _AuthParam(name.lower(), s.quoted_string(), True)
    else:
        value = s.token()
        if value is None:
            raise s.fail(f"a token or quoted-string as the value of {name!r}")
        param = _AuthParam(name.lower(), value, False)
    s.sws()
    return param


class _Params:
    """The parameters of one challenge or credentials, duplicates rejected."""

    def __init__(self, params: Iterable[_AuthParam], role: str, known: frozenset[str]) -> None:
        self.role = role
        self.known: dict[str, _AuthParam] = {}
        unknown: list[tuple[str, str]] = []
        seen: set[str] = set()
        for p in params:
            if p.name in seen:
                raise DuplicateDigestParam(role, p.name)
            seen.add(p.name)
            if p.name in known:
                self.known[p.name] = p
            else:
                unknown.append((p.name, p.value))
        self.unknown = tuple(unknown)

    def get(self, name: str) -> str | None:
        p = self.known.get(name)
        return None if p is None else p.value

    def require(self, name: str, why: str) -> str:
        value = self.get(name)
        if value is None:
            raise MissingDigestParam(self.role, name, why)
        return value

    def token(self, name: str) -> str | None:
        """A parameter whose grammar is a token; a quoted token is tolerated."""
        value = self.get(name)
        if value is not None and not _TOKEN_RE.fullmatch(value):
            raise InvalidDigestParam(self.role, name, value, "not a token")
        return value


_CHALLENGE_PARAMS: Final = frozenset(
    {"realm", "nonce", "algorithm", "qop", "opaque", "stale", "domain"}
)
_CREDENTIALS_PARAMS: Final = frozenset(
    {"username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "opaque", "qop", "nc"}
)


def _build_challenge(params: Iterable[_AuthParam]) -> DigestChallenge:
    role = _ROLE_CHALLENGE
    p = _Params(params, role, _CHALLENGE_PARAMS)
    realm = p.require("realm", "RFC 3261 section 22.1 requires a realm")
    nonce = p.require("nonce", "RFC 7616 section 3.3 requires a nonce")
    if not nonce:
        raise InvalidDigestParam(role, "nonce", nonce, "the nonce is empty")
    qop: tuple[str, ...] | None = None
    raw_qop = p.get("qop")
    if raw_qop is not None:
        # qop-options = "qop" EQUAL LDQUOT qop-value *("," qop-value) RDQUOT
        items = [item.strip(_WSP) for item in raw_qop.split(",")]
        if not all(_TOKEN_RE.fullmatch(item) for item in items):
            raise InvalidDigestParam(role, "qop", raw_qop, "not a comma-separated token list")
        qop = tuple(item.lower() for item in items)
    stale = p.token("stale")
    domain = p.get("domain")
    return DigestChallenge(
        realm=realm,
        nonce=nonce,
        algorithm=p.token("algorithm"),
        qop=qop,
        opaque=p.get("opaque"),
        # RFC 7616 section 3.3: anything but a case-insensitive "true" is false.
        stale=stale is not None and stale.lower() == "true",
        domain=tuple(domain.split()) if domain is not None else (),
        params=p.unknown,
    )


def _build_credentials(params: Iterable[_AuthParam]) -> DigestCredentials:
    role = _ROLE_CREDENTIALS
    p = _Params(params, role, _CREDENTIALS_PARAMS)
    why = "RFC 7616 section 3.4 requires it"
    username = p.require("username", why)
    realm = p.require("realm", why)
    nonce = p.require("nonce", why)
    uri = p.require("uri", why)
    response = p.require("response", why)
    if not nonce:
        raise InvalidDigestParam(role, "nonce", nonce, "the nonce is empty")
    if not _HEX_RE.fullmatch(response):
        raise InvalidDigestParam(role, "response", response, "not a hexadecimal digest")
    qop = p.token("qop")
    cnonce = p.get("cnonce")
    raw_nc = p.token("nc")
    nc: int | None = None
    if qop is not None:
        qop = qop.lower()
        # RFC 7616 section 3.4: with qop, cnonce and nc MUST be sent.
        if cnonce is None:
            raise MissingDigestParam(role, "cnonce", "required when qop is present")
        if raw_nc is None:
            raise MissingDigestParam(role, "nc", "required when qop is present")
        if not _NC_RE.fullmatch(raw_nc):
            raise InvalidDigestParam(role, "nc", raw_nc, "nonce-count must be 8 hex digits")
        nc = int(raw_nc, 16)
    else:
        # RFC 2617 section 3.2.2: without qop, cnonce and nc MUST NOT be sent.
        for name in ("cnonce", "nc"):
            value = p.get(name)
            if value is not None:
                raise InvalidDigestParam(role, name, value, "only allowed together with qop")
    return DigestCredentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=p.token("algorithm"),
        cnonce=cnonce,
        opaque=p.get("opaque"),
        qop=qop,
        nc=nc,
        params=p.unknown,
    )


def parse_challenges(*values: str) -> tuple[DigestChallenge, ...]:
    """Every ``Digest`` challenge in one or more WWW-Authenticate / Proxy-Authenticate values,
    in header order. Challenges of other schemes are skipped; if no Digest challenge is left,
    ``NotDigestScheme`` is raised. Raises only ``DigestProtocolError`` subclasses on bad input.
    """
    out: list[DigestChallenge] = []
    schemes: list[str] = []
    for value in values:
        for auth in _parse_auth_values(value, _ROLE_CHALLENGE):
            schemes.append(auth.scheme)
            if auth.scheme.lower() == "digest":  # schemes are case-insensitive
                out.append(_build_challenge(auth.params))
    if not out:
        raise NotDigestScheme(_ROLE_CHALLENGE, schemes)
    return tuple(out)


def parse_credentials(value: str) -> DigestCredentials:
    """The ``Digest`` credentials of one Authorization / Proxy-Authorization value.

    Raises only ``DigestProtocolError`` subclasses on bad input.
    """
    auths = _parse_auth_values(value, _ROLE_CREDENTIALS)
    if auths[0].scheme.lower() != "digest":
        raise NotDigestScheme(_ROLE_CREDENTIALS, [auths[0].scheme])
    if len(auths) > 1:
        raise DigestProtocolError(
            "Malformed Digest Credentials",
            "one Authorization header value carries more than one credentials "
            "(RFC 3261 section 7.3.1: use one header field per credentials)",
        )
    return _build_credentials(auths[0].params)


def _quote(name: str, value: str) -> str:
    for c in value:
        o = ord(c)
        if (o < 0x20 and c != "\t") or o == 0x7F or 0xD800 <= o <= 0xDFFF:
            # A quoted-pair cannot carry CR or LF; refusing keeps headers unforgeable.
            raise DigestUsageError(f"{name} contains a control character: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _token(name: str, value: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise DigestUsageError(f"{name} must be a token, not {value!r}")
    return value


def _extra(name: str, value: str) -> str:
    _token("parameter name", name)
    return f"{name}={value}" if _TOKEN_RE.fullmatch(value) else f"{name}={_quote(name, value)}"


def format_challenge(challenge: DigestChallenge) -> str:
    """The WWW-Authenticate / Proxy-Authenticate value for one challenge."""
    parts = [f"realm={_quote('realm', challenge.realm)}"]
    if challenge.qop is not None:
        for q in challenge.qop:
            _token("qop", q)
        parts.append(f"qop={_quote('qop', ','.join(challenge.qop))}")
    if challenge.algorithm is not None:
        parts.append(f"algorithm={_token('algorithm', challenge.algorithm)}")
    parts.append(f"nonce={_quote('nonce', challenge.nonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote('opaque', challenge.opaque)}")
    if challenge.domain:
        parts.append(f"domain={_quote('domain', ' '.join(challenge.domain))}")
    if challenge.stale:
        parts.append("stale=true")
    parts.extend(_extra(name, value) for name, value in challenge.params)
    return "Digest " + ", ".join(parts)


def format_credentials(credentials: DigestCredentials) -> str:
    """The Authorization / Proxy-Authorization value for ``credentials``."""
    c = credentials
    parts = [
        f"username={_quote('username', c.username)}",
        f"realm={_quote('realm', c.realm)}",
        f"nonce={_quote('nonce', c.nonce)}",
        f"uri={_quote('uri', c.uri)}",
        f"response={_quote('response', c.response)}",
    ]
    if c.algorithm is not None:
        parts.append(f"algorithm={_token('algorithm', c.algorithm)}")
    if c.cnonce is not None:
        parts.append(f"cnonce={_quote('cnonce', c.cnonce)}")
    if c.opaque is not None:
        parts.append(f"opaque={_quote('opaque', c.opaque)}")
    if c.qop is not None:
        # RFC 7616 section 3.4: qop and nc are unquoted in credentials.
        parts.append(f"qop={_token('qop', c.qop)}")
    if c.nc is not None:
        if not 0 <= c.nc <= _NC_MAX:
            raise DigestUsageError(f"nc must fit in 8 hex digits, not {c.nc}")
        parts.append(f"nc={c.nc:08x}")
    parts.extend(_extra(name, value) for name, value in c.params)
    return "Digest " + ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Client (UAC)
# --------------------------------------------------------------------------------------------


def new_cnonce() -> str:
    """A fresh client nonce: 128 random bits, base64url."""
    return secrets.token_urlsafe(16)


@dataclass
class _ClientNonce:
    """The live nonce of one realm and the last nonce-count sent with it."""

    challenge: DigestChallenge
    algorithm: DigestAlgorithm
    nc: int = 0


class DigestClient:
    """Answers Digest challenges for one identity (username, password).

    Keeps, per realm, the nonce last answered and its nonce-count, so that a retry or a later
    request reusing the nonce sends a strictly increasing nc (RFC 7616 section 3.4). State is
    bounded to ``max_realms`` realms.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        cnonce_source: Callable[[], str] = new_cnonce,
        algorithms: Iterable[DigestAlgorithm] = SUPPORTED_ALGORITHMS,
        realm: str | None = None,
        prefer_auth_int: bool = False,
        max_realms: int = 16,
    ) -> None:
        """``realm``, when given, is the only realm this identity answers (others ignored).
        ``algorithms`` limits what the client accepts (e.g. no MD5)."""
        self._username = username
        self._password = password
        self._cnonce_source = cnonce_source
        self._algorithms = frozenset(algorithms)
        unknown = self._algorithms - SUPPORTED_ALGORITHMS
        if unknown:
            raise DigestUsageError(
                f"algorithms not available here: {sorted(a.value for a in unknown)}"
            )
        if not self._algorithms:
            raise DigestUsageError("the client needs at least one algorithm")
        if max_realms < 1:
            raise DigestUsageError(f"max_realms must be at least 1, not {max_realms}")
        self._realm = realm
        self._prefer_auth_int = prefer_auth_int
        self._max_realms = max_realms
        self._nonces: OrderedDict[str, _ClientNonce] = OrderedDict()

    def _usable(self, challenge: DigestChallenge) -> DigestAlgorithm | None:
        if self._realm is not None and challenge.realm != self._realm:
            return None
        algorithm = challenge.digest_algorithm
        if algorithm is None or algorithm not in self._algorithms:
            return None  # RFC 7616 section 3.3: ignore a challenge whose algorithm is unknown
        if challenge.qop is None:
            # RFC 2069 compatibility exists for MD5 only; -sess needs a cnonce the server
            # would never receive without qop.
            return algorithm if algorithm is DigestAlgorithm.MD5 else None
        if not any(q in _KNOWN_QOP for q in challenge.qop):
            return None
        return algorithm

    def choose(self, challenges: Sequence[DigestChallenge]) -> DigestChallenge:
        """The challenge to answer: the strongest algorithm this client supports, the topmost
        one among equals. RFC 8760 section 2.4 has the UAC take the topmost supported header
        "unless a local policy dictates otherwise"; ours prefers strength (a downgrade-minded
        intermediary cannot then promote MD5 by reordering). Raises ``UnsupportedChallenge``.
        """
        best: tuple[DigestChallenge, tuple[int, int]] | None = None
        for challenge in challenges:
            algorithm = self._usable(challenge)
            if algorithm is None:
                continue
            rank = (algorithm.strength, 0 if algorithm.is_session else 1)
            if best is None or rank > best[1]:
                best = (challenge, rank)
        if best is None:
            offered = (
                ", ".join(
                    f"{c.realm!r}/{c.algorithm or 'MD5'}/qop={','.join(c.qop) if c.qop else '-'}"
                    for c in challenges
                )
                or "nothing"
            )
            raise UnsupportedChallenge(
                f"no challenge this client can answer (offered: {offered}; supported "
                f"algorithms: {sorted(a.value for a in self._algorithms)}"
                + (f"; realm {self._realm!r}" if self._realm is not None else "")
                + ")"
            )
        return best[0]

    def authorize(
        self,
        challenges: Sequence[DigestChallenge],
        *,
        method: str,
        digest_uri: str,
        body: bytes = b"",
        had_credentials: bool = False,
    ) -> str:
        """The Authorization (or Proxy-Authorization) value answering ``challenges``.

        ``digest_uri`` is the Request-URI of the request being (re)sent, ``body`` its body
        (hashed for auth-int). ``had_credentials`` says the request that drew these challenges
        already carried our credentials: a new challenge for a realm we answered without
        ``stale=true`` then means the password is wrong and ``CredentialsRejected`` is raised;
        with ``stale=true`` the client just answers the fresh nonce (RFC 7616 section 3.3).
        """
        challenge = self.choose(challenges)
        state = self._nonces.get(challenge.realm)
        if had_credentials and state is not None and not challenge.stale:
            raise CredentialsRejected(challenge.realm)
        algorithm = DigestAlgorithm.from_token(challenge.algorithm)
        assert algorithm is not None  # choose() only returns known algorithms
        if state is None or state.challenge.nonce != challenge.nonce:
            state = _ClientNonce(challenge, algorithm)
        self._nonces[challenge.realm] = state
        self._nonces.move_to_end(challenge.realm)
        while len(self._nonces) > self._max_realms:
            self._nonces.popitem(last=False)
        return self._answer(state, method=method, digest_uri=digest_uri, body=body)

    def authorize_again(
        self, realm: str, *, method: str, digest_uri: str, body: bytes = b""
    ) -> str | None:
        """Credentials for a new request reusing the realm's last nonce with the next
        nonce-count (saves a 401 round trip), or None when no nonce is held for ``realm``."""
        state = self._nonces.get(realm)
        if state is None or state.nc >= _NC_MAX:
            return None
        return self._answer(state, method=method, digest_uri=digest_uri, body=body)

    def _answer(self, state: _ClientNonce, *, method: str, digest_uri: str, body: bytes) -> str:
        challenge = state.challenge
        algorithm = state.algorithm
        qop: str | None = None
        if challenge.qop is not None:
            offered = challenge.qop
            wants_int = self._prefer_auth_int or QOP_AUTH not in offered
            qop = QOP_AUTH_INT if wants_int and QOP_AUTH_INT in offered else QOP_AUTH
        cnonce: str | None = None
        nc: int | None = None
        if qop is not None:
            cnonce = self._cnonce_source()
            if not cnonce:
                raise DigestUsageError("the cnonce source returned an empty string")
            if state.nc >= _NC_MAX:
                raise DigestUsageError("nonce-count exhausted for this nonce; get a new challenge")
            state.nc += 1
            nc = state.nc
        ha1 = compute_ha1(algorithm, self._username, challenge.realm, self._password)
        response = compute_response(
            algorithm,
            ha1,
            nonce=challenge.nonce,
            method=method,
            digest_uri=digest_uri,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            body=body,
        )
        return format_credentials(
            DigestCredentials(
                username=self._username,
                realm=challenge.realm,
                nonce=challenge.nonce,
                uri=digest_uri,
                response=response,
                # Echo the algorithm as the server spelled it; omit it if the server did.
                algorithm=challenge.algorithm,
                cnonce=cnonce,
                opaque=challenge.opaque,  # RFC 7616 section 3.4: returned unchanged
                qop=qop,
                nc=nc,
            )
        )


# --------------------------------------------------------------------------------------------
# Server (UAS, registrar, proxy)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Password:
    """The subscriber's password in clear."""

    value: str = field(repr=False)


@dataclass(frozen=True)
class StoredHA1:
    """H(username:realm:password) per base algorithm, as a registrar stores it instead of the
    password (see ``compute_ha1``). Keys are MD5, SHA-256, SHA-512-256."""

    values: Mapping[DigestAlgorithm, str] = field(repr=False, hash=False)

    @classmethod
    def from_password(
        cls,
        username: str,
        realm: str,
        password: str,
        algorithms: Iterable[DigestAlgorithm] = SUPPORTED_ALGORITHMS,
    ) -> StoredHA1:
        bases = {a.base for a in algorithms}
        return cls({a: compute_ha1(a, username, realm, password) for a in bases})


StoredSecret = Password | StoredHA1


@dataclass(frozen=True)
class Ok:
    """The credentials are valid and fresh."""

    username: str
    algorithm: DigestAlgorithm
    qop: str | None


@dataclass(frozen=True)
class Stale:
    """The digest is right but the nonce expired or is no longer provable fresh: challenge
    again with ``stale=true`` so the client retries without asking its user (RFC 7616
    section 3.3)."""

    username: str


class FailureReason(enum.Enum):
    REALM_MISMATCH = "credentials are for another realm"
    ALGORITHM_NOT_OFFERED = "the algorithm was not offered"
    URI_MISMATCH = "digest-uri does not match the Request-URI"
    QOP_REQUIRED = "qop is required"
    QOP_NOT_OFFERED = "the qop was not offered"
    UNKNOWN_USER = "no secret is stored for this user"
    NO_SECRET_FOR_ALGORITHM = "no HA1 is stored for this algorithm"
    WRONG_RESPONSE = "wrong response digest (wrong password?)"
    REPLAYED_NONCE_COUNT = "nonce-count did not increase (replay)"


@dataclass(frozen=True)
class Failed:
    """The credentials do not authenticate; ``detail`` is for logs, not for the peer."""

    reason: FailureReason
    detail: str


Verdict = Ok | Stale | Failed


def _exact_uri_match(digest_uri: str, request_uri: str) -> bool:
    return digest_uri == request_uri


@dataclass(frozen=True)
class DigestServerConfig:
    """What a Digest server offers. Validated on construction (``DigestUsageError``).

    ``secret_key`` keys the nonce MAC: servers sharing it (or a restarted one) accept each
    other's nonces. ``algorithms`` are offered strongest first regardless of the order given
    (RFC 8760 section 2.3: challenges in order of preference). ``accept_rfc2069`` lets MD5
    clients answer without qop; such nonces are single-use because there is no nc.
    """

    realm: str
    secret_key: bytes = field(repr=False)
    nonce_lifetime: float = 300.0
    algorithms: tuple[DigestAlgorithm, ...] = (DigestAlgorithm.SHA_256, DigestAlgorithm.MD5)
    qop: tuple[str, ...] = (QOP_AUTH, QOP_AUTH_INT)
    accept_rfc2069: bool = False
    max_tracked_nonces: int = 65536
    clock_skew: float = 5.0

    def __post_init__(self) -> None:
        if not self.realm or any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.realm):
            raise DigestUsageError(f"realm must be non-empty printable text, not {self.realm!r}")
        if len(self.secret_key) < 16:
            raise DigestUsageError("secret_key must be at least 16 bytes")
        if not (math.isfinite(self.nonce_lifetime) and self.nonce_lifetime > 0):
            raise DigestUsageError(f"nonce_lifetime must be > 0 s, not {self.nonce_lifetime}")
        if not (math.isfinite(self.clock_skew) and self.clock_skew >= 0):
            raise DigestUsageError(f"clock_skew must be >= 0 s, not {self.clock_skew}")
        if not self.algorithms:
            raise DigestUsageError("offer at least one algorithm")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise DigestUsageError("an algorithm is listed twice")
        missing = [a.value for a in self.algorithms if a not in SUPPORTED_ALGORITHMS]
        if missing:
            raise DigestUsageError(f"algorithms not available on this host: {missing}")
        bad_qop = [q for q in self.qop if q not in _KNOWN_QOP]
        if bad_qop or len(set(self.qop)) != len(self.qop):
            raise DigestUsageError(f"qop must be distinct values of {_KNOWN_QOP}, not {self.qop}")
        if not self.qop and not (
            self.accept_rfc2069 and set(self.algorithms) == {DigestAlgorithm.MD5}
        ):
            raise DigestUsageError(
                "offering no qop is RFC 2069 mode: set accept_rfc2069 and offer only MD5"
            )
        if self.max_tracked_nonces < 1:
            raise DigestUsageError("max_tracked_nonces must be at least 1")


@dataclass
class _SeenNonce:
    issued: float
    nc: int


_NONCE_LABEL: Final = b"ueconnect digest nonce v1\x00"
_NONCE_RANDOM_BYTES: Final = 12
_NONCE_MAC_BYTES: Final = 16
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{48}")  # base64url of 8 + 12 + 16 bytes


class DigestServer:
    """Issues challenges and verifies credentials for one realm.

    Nonces are ``base64url(issued-ms || random || HMAC-SHA-256(key, realm || ...)[:16])``:
    any server holding the key verifies them without state. State is kept only for replay
    protection (the last nonce-count per nonce), bounded by ``max_tracked_nonces``; a nonce
    whose state had to be dropped before it expired is answered ``Stale``, never accepted.
    """

    def __init__(
        self,
        config: DigestServerConfig,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self._random_bytes = random_bytes
        self._realm_bytes = _utf8(config.realm)
        self._offered = tuple(sorted(config.algorithms, key=lambda a: (-a.strength, a.is_session)))
        self._seen: OrderedDict[str, _SeenNonce] = OrderedDict()
        # Issue time of the newest unexpired nonce whose state was evicted: nonces issued at or
        # before it without state cannot be proven unused.
        self._forgotten_until = -math.inf

    # ---- challenges ----------------------------------------------------------------------

    def new_nonce(self, now: float) -> str:
        _check_now(now)
        issued_ms = int(now * 1000)
        rand = self._random_bytes(_NONCE_RANDOM_BYTES)
        if len(rand) != _NONCE_RANDOM_BYTES:
            raise DigestUsageError(f"random_bytes returned {len(rand)} bytes, not 12")
        payload = struct.pack(">Q", issued_ms) + rand
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode("ascii")

    def challenges(self, now: float, *, stale: bool = False) -> tuple[DigestChallenge, ...]:
        """One challenge per offered algorithm, strongest first, sharing one fresh nonce
        (RFC 8760 section 2.3: one header field per algorithm, in order of preference)."""
        nonce = self.new_nonce(now)
        return tuple(
            DigestChallenge(
                realm=self.config.realm,
                nonce=nonce,
                algorithm=a.value,
                qop=self.config.qop or None,
                stale=stale,
            )
            for a in self._offered
        )

    def challenge_values(self, now: float, *, stale: bool = False) -> tuple[str, ...]:
        """``challenges`` formatted: one WWW-Authenticate / Proxy-Authenticate value each."""
        return tuple(format_challenge(c) for c in self.challenges(now, stale=stale))

    def select(self, credentials: Iterable[DigestCredentials]) -> DigestCredentials | None:
        """The credentials meant for this realm among several (RFC 3261 section 22.3)."""
        return next((c for c in credentials if c.realm == self.config.realm), None)

    # ---- verification --------------------------------------------------------------------

    def verify(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        request_uri: str,
        secret: StoredSecret | None,
        now: float,
        body: bytes = b"",
        uri_matches: Callable[[str, str], bool] = _exact_uri_match,
    ) -> Verdict:
        """Check ``credentials`` sent with a request (``method``, ``request_uri``, ``body``).

        ``secret`` is what is stored for ``credentials.username`` (None if the user is not
        known). ``uri_matches(digest_uri, request_uri)`` defaults to string equality; pass SIP
        URI comparison (RFC 3261 section 19.1.4) to be lenient. Wrong passwords and the like
        are a ``Failed`` verdict, not an exception.
        """
        _check_now(now)
        cfg = self.config
        c = credentials
        if c.realm != cfg.realm:
            return Failed(
                FailureReason.REALM_MISMATCH, f"realm {c.realm!r}, expected {cfg.realm!r}"
            )
        algorithm = c.digest_algorithm
        if algorithm is None or algorithm not in cfg.algorithms:
            return Failed(
                FailureReason.ALGORITHM_NOT_OFFERED, f"algorithm {c.algorithm or 'MD5'!r}"
            )
        # RFC 2617 section 3.2.2.5: the digest-uri must name the requested resource, or a
        # captured response could authorize another request.
        if not uri_matches(c.uri, request_uri):
            return Failed(FailureReason.URI_MISMATCH, f"uri {c.uri!r}, Request-URI {request_uri!r}")
        if c.qop is None:
            if not (cfg.accept_rfc2069 and algorithm is DigestAlgorithm.MD5):
                return Failed(FailureReason.QOP_REQUIRED, "credentials without qop")
        elif c.qop not in cfg.qop:
            return Failed(FailureReason.QOP_NOT_OFFERED, f"qop {c.qop!r}")
        if secret is None:
            return Failed(FailureReason.UNKNOWN_USER, f"username {c.username!r}")
        if isinstance(secret, Password):
            ha1 = compute_ha1(algorithm, c.username, cfg.realm, secret.value)
        else:
            stored = secret.values.get(algorithm.base)
            if stored is None:
                return Failed(FailureReason.NO_SECRET_FOR_ALGORITHM, algorithm.base.value)
            ha1 = stored
        expected = compute_response(
            algorithm,
            ha1,
            nonce=c.nonce,
            method=method,
            digest_uri=c.uri,
            qop=c.qop,
            nc=c.nc,
            cnonce=c.cnonce,
            body=body,
        )
        # Bytes, not str: compare_digest refuses non-ASCII str from a hand-built value.
        if not hmac.compare_digest(_utf8(expected), _utf8(c.response.lower())):
            return Failed(FailureReason.WRONG_RESPONSE, f"username {c.username!r}")

        # The client knows the password; now decide whether the nonce is still good. A nonce
        # that is not ours (e.g. the key changed) or expired is stale, not a failure.
        issued = self._nonce_issued(c.nonce)
        if issued is None or now > issued + cfg.nonce_lifetime or issued > now + cfg.clock_skew:
            return Stale(c.username)
        self._drop_expired(now, full=False)
        seen = self._seen.get(c.nonce)
        if seen is None:
            if issued <= self._forgotten_until:
                return Stale(c.username)
            if c.nc is not None and c.nc < 1:
                return Failed(FailureReason.REPLAYED_NONCE_COUNT, "nc must start at 1")
            self._remember(c.nonce, _SeenNonce(issued, c.nc or 0), now)
        elif c.nc is None:
            # RFC 2069 mode has no nonce-count: a nonce is good for one request only.
            return Stale(c.username)
        elif c.nc <= seen.nc:
            # RFC 7616 section 3.4: the nonce-count lets the server detect replays.
            return Failed(FailureReason.REPLAYED_NONCE_COUNT, f"nc {c.nc:08x} after {seen.nc:08x}")
        else:
            seen.nc = c.nc
        return Ok(c.username, algorithm, c.qop)

    def expire(self, now: float) -> None:
        """Forget the replay state of every expired nonce."""
        _check_now(now)
        self._drop_expired(now, full=True)

    @property
    def tracked_nonces(self) -> int:
        return len(self._seen)

    # ---- internals -----------------------------------------------------------------------

    def _mac(self, payload: bytes) -> bytes:
        msg = _NONCE_LABEL + self._realm_bytes + b"\x00" + payload
        return hmac.new(self.config.secret_key, msg, hashlib.sha256).digest()[:_NONCE_MAC_BYTES]

    def _nonce_issued(self, nonce: str) -> float | None:
        if not _NONCE_RE.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce)
        payload, mac = raw[:-_NONCE_MAC_BYTES], raw[-_NONCE_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        (issued_ms,) = struct.unpack(">Q", payload[:8])
        return float(issued_ms) / 1000.0

    def _expired(self, seen: _SeenNonce, now: float) -> bool:
        return now > seen.issued + self.config.nonce_lifetime

    def _drop_expired(self, now: float, *, full: bool) -> None:
        if full:
            for nonce in [n for n, s in self._seen.items() if self._expired(s, now)]:
                del self._seen[nonce]
            return
        # Entries are in first-use order, which nearly follows issue order: trim the front.
        while self._seen:
            nonce, seen = next(iter(self._seen.items()))
            if not self._expired(seen, now):
                break
            del self._seen[nonce]

    def _remember(self, nonce: str, seen: _SeenNonce, now: float) -> None:
        self._seen[nonce] = seen
        if len(self._seen) <= self.config.max_tracked_nonces:
            return
        self._drop_expired(now, full=True)
        while len(self._seen) > self.config.max_tracked_nonces:
            _, evicted = self._seen.popitem(last=False)
            self._forgotten_until = max(self._forgotten_until, evicted.issued)


def _check_now(now: float) -> None:
    # The nonce stores milliseconds in 64 bits; 1e15 s is far beyond any real clock.
    if not (math.isfinite(now) and 0 <= now < 1e15):
        raise DigestUsageError(f"now must be a finite, non-negative time in seconds, not {now}")
