"""asyncio SIP transports: UDP, TCP and TLS endpoints around the sans-IO core (RFC 3261
section 18).

One object per local address and transport (`UdpTransport`, `TcpTransport`, `TlsTransport`,
each a `SipTransport`): `send(message, destination)` writes a message to an `Address`; every message
received is parsed, checked (`ims.sip.checks.validate`), stamped with `received`/`rport` when it
is a request (RFC 3261 18.2.1, RFC 3581 section 4) and handed to the `on_message(message,
source)` callback given at construction. Bytes that fail are answered when
`ims.sip.checks.error_response_for` can build an answer (400 naming the defect, 505, 513) and
dropped otherwise; either way the endpoint keeps serving and `stats` counts them.

TCP connections, accepted or opened, live in one pool keyed by the remote (host, port) and
carry every later message to that endpoint (section 18: responses return on the connection the
request came in on; RFC 5923 spirit for requests). Idle connections are closed.

TLS (RFC 3261 section 26.2, RFC 5630) is the TCP endpoint with TLS 1.2+ underneath and mutual
authentication: a `TlsPolicy` gives the contexts and decides, after each handshake, whether
the certificate shown is the expected peer's (`identity_problem`: RFC 8122 fingerprint, RFC
5922 names). Refusals are logged naming the peer and the reason.

Hosts are IP literals: names are resolved before (RFC 3263, `ims.dns`). An IPv6 endpoint is
IPv6 only; to serve both families open one endpoint per family.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ims.sip.address import Address, canonical_ip, ip_version
from ims.sip.checks import error_response_for, validate
from ims.sip.errors import LocalProtocolError, MessageTooLarge, ProtocolError, SipError
from ims.sip.framing import FramingLimits, KeepAlivePing, MessageFramed, StreamFramer
from ims.sip.message import Message, ParsedValues, Request, Response, parse_message, serialize

logger = logging.getLogger(__name__)

MessageHandler = Callable[[Message, Address], None]
"""Receives every well-formed message and the Address it came from."""

ErrorResponder = Callable[[bytes, ProtocolError], Response | None]
"""Builds the answer to bytes that failed to parse or check, None when they cannot be
answered; `ims.sip.checks.error_response_for` by default."""

MAX_UDP_PAYLOAD = 65535
_PARSED_VALUES_LIMIT = 4096  # per kind of header value (see ParsedValues)
_ENDPOINTS_LIMIT = 4096
_READ_BATCH = 32  # datagrams read per event-loop wake-up beyond the first
_RECV_BYTES = MAX_UDP_PAYLOAD + 1  # one more than fits: an oversize datagram shows as such
_PONG = b"\r\n"  # RFC 5626 section 3.5.1
_EARLY_BYTES_LIMIT = 256 * 1024  # TLS data held between the handshake and connection_made


class TransportError(SipError):
    """A message could not be sent or an endpoint not opened: the stack reports a send failure
    to the transaction layer (RFC 3261 section 8.1.3.1, 17.1.4)."""


class BindError(TransportError):
    """The local address could not be bound (in use, not configured on this host)."""


class ConnectError(TransportError):
    """No connection could be opened to the destination (refused, unreachable, timed out)."""


class SendError(TransportError):
    """The message could not be written (too large for UDP, connection lost, endpoint closed)."""


class TlsRefused(ConnectError):
    """A TLS connection failed its handshake or its peer's certificate was refused (RFC 5922
    section 7): the message goes to the next target, as for any connection failure."""


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Bounds and timers of an endpoint; validated on construction."""

    max_datagram_bytes: int = MAX_UDP_PAYLOAD  # larger datagrams are dropped, not parsed
    framing: FramingLimits = field(default_factory=FramingLimits)
    idle_timeout: float = 120.0  # seconds without traffic before a TCP connection is closed
    connect_timeout: float = 5.0
    max_connections: int = 1024  # accepted and opened together
    max_write_buffer_bytes: int = 1024 * 1024  # a peer that does not read is cut off
    # SO_REUSEPORT on UDP: several worker processes share one listening port, the kernel
    # spreading datagrams by source (each worker also has a port of its own for its Via).
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.max_datagram_bytes <= MAX_UDP_PAYLOAD:
            raise ValueError(f"max_datagram_bytes must be within 1..{MAX_UDP_PAYLOAD}")
        if self.idle_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("idle_timeout and connect_timeout must be positive")
        if self.max_connections < 1 or self.max_write_buffer_bytes < 1:
            raise ValueError("max_connections and max_write_buffer_bytes must be positive")


@dataclass(slots=True)
class TransportStats:
    """What an endpoint has seen; plain counters, read them any time."""

    received: int = 0  # messages delivered to on_message
    sent: int = 0  # messages written (error answers included; keep-alives not)
    parse_errors: int = 0  # inbound messages that failed to parse, frame or check
    dropped: int = 0  # of those, the ones that could not be answered
    oversize: int = 0  # datagrams dropped and connections cut for exceeding a bound


class SipTransport(Protocol):
    """What the stack needs from an endpoint; tests may substitute an in-memory one.

    An endpoint hands its on_message callback only messages that passed
    `ims.sip.checks.validate`, requests stamped by `add_received`, as the ones here do.
    """

    @property
    def local(self) -> Address: ...

    @property
    def stats(self) -> TransportStats: ...

    async def send(self, message: Message, destination: Address) -> None: ...

    async def close(self) -> None: ...


def add_received(request: Request, source: Address) -> Request:
    """The request with its top Via stamped for the way back (RFC 3261 section 18.2.1,
    RFC 3581 section 4).

    `received` is added when the sent-by host is not the packet's source IP, and always when
    the client asked for `rport` (a flag without value), which is then filled with the source
    port. Raises ParseError when the top Via is missing or malformed.
    """
    via = request.top_via
    asks_rport = via.rport == ""
    if not asks_rport and _same_ip(via.host, source.host):
        return request
    # RFC 3261's via-received is the bare IPv6address, and RFC 5118 section 4.5: a sender must
    # not put "[" "]" around it (receivers accept both; ims.sip.headers reads both).
    stamped = via.with_param("received", source.host)
    if asks_rport:
        stamped = stamped.with_param("rport", str(source.port))
    headers = request.headers.without_first("Via").prepended("Via", str(stamped))
    return request.with_headers(headers)


def _same_ip(host: str, ip: str) -> bool:
    if host == ip:
        return ip_version(ip) is not None  # the common case, without parsing either
    try:
        return ipaddress.ip_address(host.strip("[]")) == ipaddress.ip_address(ip)
    except ValueError:  # a host name in sent-by always differs from the source address
        return False


def _ip_version(host: str, where: str) -> int:
    version = ip_version(host)
    if version is None:
        raise LocalProtocolError(
            f"{where} host {host!r} is not an IP address; resolve names first (RFC 3263)"
        )
    return version


async def _listen(transport_name: str, host: str, port: int,
                  factory: Callable[[], asyncio.Protocol]) -> tuple[asyncio.Server, Address]:
    """A stream listener on `host`:`port`, not serving yet (the transport that owns its
    connections is made once the socket tells the port): the server and its address."""
    _ip_version(host, "local")
    try:
        server = await asyncio.get_running_loop().create_server(
            factory, host, port, reuse_address=True, start_serving=False)
    except OSError as exc:
        raise BindError(f"cannot listen on {Address(transport_name, host, port)}: {exc}") \
            from exc
    return server, _peer_address(transport_name, server.sockets[0].getsockname())


def _peer_address(transport_name: str, sockaddr: tuple[str, int]) -> Address:
    return Address(transport_name, canonical_ip(sockaddr[0]), sockaddr[1])


class _Endpoint:
    """What UDP and TCP endpoints share: the local address, the inbound pipeline, counters."""

    _transport_name: str

    def __init__(
        self,
        local: Address,
        on_message: MessageHandler,
        settings: TransportSettings,
        error_response: ErrorResponder,
    ) -> None:
        self._local = local
        self._ip_version = ipaddress.ip_address(local.host).version
        self._on_message = on_message
        self._error_response = error_response
        self.settings = settings
        self._stats = TransportStats()
        self._closed = False
        # Header values parsed on receipt, shared by every message of this endpoint: the
        # messages of one transaction repeat From, To, Call-ID, Route and our own Via.
        self._parsed = ParsedValues(limit=_PARSED_VALUES_LIMIT)
        # Destinations already checked by `_endpoint`, with their socket address.
        self._endpoints: dict[tuple[str, str], str] = {}

    @property
    def local(self) -> Address:
        """The bound address, with the actual port when port 0 was asked."""
        return self._local

    @property
    def stats(self) -> TransportStats:
        return self._stats

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._local}>"

    def _endpoint(self, destination: Address) -> tuple[str, int]:
        """(host, port) to write to; raises LocalProtocolError for a destination this endpoint
        cannot serve (other transport, other IP family, a name)."""
        host = self._endpoints.get((destination.transport, destination.host))
        if host is not None:
            if self._closed:
                raise SendError(f"{self._local} is closed")
            return host, destination.port
        if destination.transport != self._transport_name:
            raise LocalProtocolError(f"{self._local} cannot send to {destination}")
        version = _ip_version(destination.host, "destination")
        if version != self._ip_version:
            raise LocalProtocolError(f"{self._local} cannot reach IPv{version} {destination}")
        if self._closed:
            raise SendError(f"{self._local} is closed")
        host = canonical_ip(destination.host)
        if len(self._endpoints) >= _ENDPOINTS_LIMIT:
            self._endpoints.clear()
        self._endpoints[(destination.transport, destination.host)] = host
        return host, destination.port

    def _accept(self, data: bytes, source: Address) -> Response | None:
        """Parse, check and deliver one message; the answer owed when it is broken."""
        try:
            message = parse_message(data, memo=self._parsed)
            validate(message)
            if isinstance(message, Request):
                message = add_received(message, source)
        except ProtocolError as exc:
            return self._reject(data, exc, source)
        self._stats.received += 1
        try:
            self._on_message(message, source)
        except Exception:  # a handler bug must not take the endpoint down
            logger.exception("%s: on_message failed for a message from %s", self, source)
        return None

    def _reject(self, data: bytes, error: ProtocolError, source: Address) -> Response | None:
        if isinstance(error, MessageTooLarge):
            self._stats.oversize += 1
        else:
            self._stats.parse_errors += 1
        answer = self._error_response(data, error)
        if answer is None:
            self._stats.dropped += 1
            logger.debug("%s: dropped bytes from %s: %s", self, source, error)
        return answer


# --- UDP ------------------------------------------------------------------------------------


class UdpTransport(_Endpoint):
    """A UDP endpoint: one socket, each datagram one message (RFC 3261 section 18.1.1, 18.2.1)."""

    _transport_name = "UDP"

    def __init__(
        self,
        local: Address,
        on_message: MessageHandler,
        settings: TransportSettings,
        error_response: ErrorResponder,
    ) -> None:
        super().__init__(local, on_message, settings, error_response)
        self._datagrams: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._sources: dict[str, str] = {}  # source IP as the socket gives it -> canonical

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        settings: TransportSettings | None = None,
        error_response: ErrorResponder = error_response_for,
    ) -> UdpTransport:
        """Bind `host`:`port` (an IP literal; port 0 picks one, see `local`)."""
        version = _ip_version(host, "local")
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if settings is not None and settings.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise BindError(f"cannot listen on {Address('UDP', host, port)}: {exc}") from exc
        local = _peer_address("UDP", sock.getsockname())
        self = cls(local, on_message, settings or TransportSettings(), error_response)
        self._sock = sock
        loop = asyncio.get_running_loop()
        self._datagrams, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(self), sock=sock
        )
        return self

    async def send(self, message: Message, destination: Address) -> None:
        self.send_now(message, destination)

    def send_now(self, message: Message, destination: Address) -> None:
        """Send without awaiting: a datagram never blocks (the stack's fast path)."""
        self._sendto(serialize(message), self._endpoint(destination))

    def _sendto(self, data: bytes, endpoint: tuple[str, int]) -> None:
        if len(data) > self.settings.max_datagram_bytes:
            # RFC 3261 section 18.1.1: a message this large goes over a congestion-controlled
            # transport; the caller picks TCP.
            raise SendError(
                f"message of {len(data)} bytes exceeds the UDP limit of "
                f"{self.settings.max_datagram_bytes} bytes; send it over TCP"
            )
        if self._datagrams is None or self._datagrams.is_closing():
            raise SendError(f"{self._local} is closed")
        self._datagrams.sendto(data, endpoint)
        self._stats.sent += 1

    def _datagram_received(self, data: bytes, sockaddr: tuple[str, int]) -> None:
        if self._closed:
            return
        if not data.strip(b"\r\n"):
            return  # a CRLF keep-alive datagram: it has done its job on the NAT binding
        host = self._sources.get(sockaddr[0])
        if host is None:
            host = canonical_ip(sockaddr[0])
            if len(self._sources) >= _ENDPOINTS_LIMIT:
                self._sources.clear()
            self._sources[sockaddr[0]] = host
        source = Address("UDP", host, sockaddr[1])
        limit = self.settings.max_datagram_bytes
        if len(data) > limit:
            # Not parsed; a request whose head names its sender is answered 513 (RFC 3261
            # section 21.5.14), anything else dropped.
            too_large = MessageTooLarge(f"message of {len(data)} bytes exceeds the limit of "
                                        f"{limit} bytes")
            answer = self._reject(data, too_large, source)
        else:
            answer = self._accept(data, source)
        if answer is not None:
            try:
                self._sendto(serialize(answer), (source.host, source.port))
            except SendError as exc:
                logger.debug("%s: could not answer %s: %s", self, source, exc)

    def _read_queued(self) -> None:
        """Handle the datagrams already waiting on the socket, up to a bound: under load this
        saves a trip through the event loop (a poll and a callback) per datagram, and the
        bound keeps other endpoints and timers served."""
        sock = self._sock
        for _ in range(_READ_BATCH):
            if sock is None or self._closed:
                return
            try:
                data, addr = sock.recvfrom(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error of an earlier send: as error_received
                logger.debug("%s: %s", self, exc)
                return
            self._datagram_received(data, (str(addr[0]), addr[1]))

    async def close(self) -> None:
        self._closed = True
        if self._datagrams is not None:
            self._datagrams.close()


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        host, port = addr[0], addr[1]
        self._owner._datagram_received(data, (str(host), port))
        self._owner._read_queued()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors of earlier sends (port unreachable...): UDP gives no reliable signal, the
        # transaction timers (B, F) cover the loss.
        logger.debug("%s: %s", self._owner, exc)


# --- TLS identities (RFC 5922) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a TLS handshake showed of the other side's certificate.

    `der` is None when the peer sent none. `chain_verified` says OpenSSL verified the chain
    against the CAs of the context; only then are `sip_domains` and `dns_names` (its
    subjectAltName entries) read, an unverified certificate's names being worthless.
    """

    der: bytes | None
    chain_verified: bool = False
    sip_domains: tuple[str, ...] = ()  # hosts of subjectAltName URI sip: entries
    dns_names: tuple[str, ...] = ()  # subjectAltName DNS entries

    @property
    def fingerprint(self) -> str | None:
        """The RFC 8122 section 5 form, "SHA-256 AB:CD:...", of the DER certificate."""
        if self.der is None:
            return None
        return certificate_fingerprint(self.der)

    @classmethod
    def of(cls, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerCertificate:
        if ssl_object is None:
            return cls(None)
        der = ssl_object.getpeercert(binary_form=True)
        fields = ssl_object.getpeercert()  # empty unless the chain was verified
        if der is None or not fields:
            return cls(der)
        sip: list[str] = []
        dns: list[str] = []
        for entry in fields.get("subjectAltName", ()):
            kind, value = str(entry[0]), str(entry[1])
            if kind == "URI" and value.lower().startswith("sip:"):
                sip.append(value[4:].partition(";")[0].rpartition("@")[2].lower())
            elif kind == "DNS":
                dns.append(value.lower())
        return cls(der, True, tuple(sip), tuple(dns))


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as RFC 8122 section 5 writes it: "SHA-256 AB:CD:..."."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA-256 " + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def identity_problem(
    certificate: PeerCertificate, *, fingerprint: str | None, domain: str | None
) -> str | None:
    """Why `certificate` is not the peer expected, None when it is.

    `fingerprint` pins the certificate itself (RFC 8122 section 5 form). `domain` asks for a
    chain verified to the peer's CA that names the domain (RFC 5922 section 7.1): the host of
    a subjectAltName URI sip: entry when there is one, else a DNS entry, compared whole and
    without case; wildcards never match (section 7.2), nor does the Common Name once there
    is a subjectAltName (7.1). With neither, nothing could be checked: refused.
    """
    if certificate.der is None:
        return "presented no certificate"
    if fingerprint is None and domain is None:
        return "no tls_fingerprint or tls_ca to check its certificate against"
    if fingerprint is not None and certificate.fingerprint != fingerprint.upper():
        return f"certificate {certificate.fingerprint} does not match the pinned {fingerprint}"
    if domain is not None:
        if not certificate.chain_verified:
            return "certificate does not chain to the configured CA"
        names = certificate.sip_domains or certificate.dns_names
        if domain.lower().rstrip(".") not in names:
            shown = ", ".join(names) or "no subjectAltName"
            return f"certificate names {shown}, not {domain} (RFC 5922 section 7.2)"
    return None


class TlsPolicy(Protocol):
    """Who may talk over TLS and how they prove it: given to a TLS endpoint (mutual TLS)."""

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: our certificate, and the CAs client certificates must chain
        to (a client certificate is required)."""
        ...

    def client_context(self, destination: Address) -> tuple[ssl.SSLContext, str | None]:
        """The context to connect to `destination` with our certificate, and the server name
        to send (SNI); raises TlsRefused when nobody there may be connected to."""
        ...

    def check(self, remote: Address, certificate: PeerCertificate, *, outgoing: bool) -> str | None:
        """After the handshake: why the connection is refused, None to keep it."""
        ...

    def describe(self, remote: Address) -> str:
        """`remote` for a log line, naming the peer it belongs to."""
        ...


def tls_context(purpose: ssl.Purpose, certificate: str, private_key: str) -> ssl.SSLContext:
    """A TLS 1.2+ context presenting `certificate` (RFC 3261 section 26.2.1 asks for TLS; RFC
    8996 retires 1.0 and 1.1). The caller sets how the other side is verified."""
    server = purpose is ssl.Purpose.CLIENT_AUTH
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, private_key)
    return context


# --- TCP ------------------------------------------------------------------------------------


class TcpTransport(_Endpoint):
    """A TCP listener and the pool of connections to and from it (RFC 3261 section 18)."""

    _transport_name = "TCP"
    _tls: TlsPolicy | None = None  # set by TlsTransport

    def __init__(
        self,
        local: Address,
        on_message: MessageHandler,
        settings: TransportSettings,
        error_response: ErrorResponder,
    ) -> None:
        super().__init__(local, on_message, settings, error_response)
        self._server: asyncio.Server | None = None
        self._connections: dict[tuple[str, int], _StreamConnection] = {}  # by remote endpoint
        self._live: set[_StreamConnection] = set()
        self._connecting: dict[tuple[str, int], asyncio.Task[_StreamConnection]] = {}

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        settings: TransportSettings | None = None,
        error_response: ErrorResponder = error_response_for,
    ) -> TcpTransport:
        """Listen on `host`:`port` (an IP literal; port 0 picks one, see `local`)."""
        owner: list[TcpTransport] = []  # known once the socket tells the port
        server, local = await _listen("TCP", host, port, lambda: _StreamConnection(owner[0]))
        self = cls(local, on_message, settings or TransportSettings(), error_response)
        owner.append(self)
        await self._serve(server)
        return self

    async def _serve(self, server: asyncio.Server) -> None:
        self._server = server
        await server.start_serving()

    @property
    def connection_count(self) -> int:
        """Open connections, accepted and opened."""
        return len(self._live)

    async def send(self, message: Message, destination: Address) -> None:
        """Write on the pooled connection to `destination`, opening one if there is none;
        raises ConnectError or SendError."""
        endpoint = self._endpoint(destination)
        data = serialize(message)
        connection = self._connections.get(endpoint)
        if connection is None or connection.closing:
            connection = await self._connection_to(endpoint)
        connection.write(data)
        self._stats.sent += 1

    async def _connection_to(self, endpoint: tuple[str, int]) -> _StreamConnection:
        # Concurrent sends to one endpoint share one connection attempt.
        task = self._connecting.get(endpoint)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect(endpoint))
            self._connecting[endpoint] = task
            task.add_done_callback(functools.partial(self._connect_done, endpoint))
        return await asyncio.shield(task)

    def _connect_done(
        self, endpoint: tuple[str, int], task: asyncio.Task[_StreamConnection]
    ) -> None:
        if self._connecting.get(endpoint) is task:
            del self._connecting[endpoint]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every sender was cancelled

    async def _connect(self, endpoint: tuple[str, int]) -> _StreamConnection:
        host, port = endpoint
        remote = Address(self._transport_name, host, port)
        where = str(remote)
        if len(self._live) >= self.settings.max_connections:
            raise ConnectError(f"cannot connect to {where}: connection limit reached")
        loop = asyncio.get_running_loop()
        unspecified = ipaddress.ip_address(self._local.host).is_unspecified
        local_addr = None if unspecified else (self._local.host, 0)
        context: ssl.SSLContext | None = None
        server_name: str | None = None
        if self._tls is not None:
            try:
                context, server_name = self._tls.client_context(remote)
            except TlsRefused as exc:
                raise self._refused(remote, str(exc)) from None
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _StreamConnection(self, outgoing=True), host, port,
                    local_addr=local_addr, ssl=context,
                    server_hostname=server_name if context is not None else None,
                    ssl_handshake_timeout=self.settings.connect_timeout if context else None,
                )
        except TimeoutError as exc:
            timeout = self.settings.connect_timeout
            raise ConnectError(f"cannot connect to {where}: no answer in {timeout} s") from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise self._refused(remote, f"TLS handshake failed: {_ssl_reason(exc)}") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
        if connection.closing:
            if connection.refusal is not None:
                raise TlsRefused(f"cannot connect to {where}: {connection.refusal}")
            raise ConnectError(f"cannot connect to {where}: connection closed at once")
        return connection

    def _refused(self, remote: Address, why: str) -> TlsRefused:
        """Log a refused TLS connection naming the peer and the reason; the error to raise."""
        who = self._tls.describe(remote) if self._tls is not None else str(remote)
        logger.warning("%s: TLS with %s refused: %s", self, who, why)
        return TlsRefused(f"cannot connect to {remote}: {why}")

    def _admit_tls(self, connection: _StreamConnection, transport: asyncio.Transport,
                   peer: Address) -> str | None:
        """RFC 5922: whether the certificate just shown is the expected peer's; logged."""
        if self._tls is None:
            return None
        certificate = PeerCertificate.of(transport.get_extra_info("ssl_object"))
        why = self._tls.check(peer, certificate, outgoing=connection.outgoing)
        if why is not None:
            logger.warning("%s: TLS with %s refused: %s", self, self._tls.describe(peer), why)
        return why

    def _adopt(self, connection: _StreamConnection, peer: Address) -> bool:
        if self._closed:
            return False
        if len(self._live) >= self.settings.max_connections:
            logger.warning("%s: refusing a connection with %s: limit reached", self, peer)
            return False
        self._live.add(connection)
        self._connections[peer.host, peer.port] = connection  # the newest carries later sends
        return True

    def _forget(self, connection: _StreamConnection, peer: Address) -> None:
        if connection in self._live:
            self._live.discard(connection)
            if self._connections.get((peer.host, peer.port)) is connection:
                del self._connections[peer.host, peer.port]

    async def close(self) -> None:
        """Stop listening, abandon pending connects, close every connection."""
        self._closed = True
        for task in list(self._connecting.values()):
            task.cancel()
        for connection in list(self._live):
            connection.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class TlsTransport(TcpTransport):
    """A TLS listener and its pool of connections (RFC 3261 sections 18 and 26.2, RFC 5630):
    TCP framing inside TLS 1.2+, mutual authentication by `TlsPolicy`.

    Accepted connections complete their handshake before any byte is read as SIP; a client
    without a certificate, or whose certificate the policy refuses (RFC 5922), is cut off and
    logged with the peer's name and the reason. Outgoing connections fail the same way with
    TlsRefused, a ConnectError: the stack reports a transport failure and the request goes
    to the next target (RFC 3263 section 4.3) or ends in 503.
    """

    _transport_name = "TLS"

    def __init__(
        self,
        local: Address,
        on_message: MessageHandler,
        settings: TransportSettings,
        error_response: ErrorResponder,
        tls: TlsPolicy,
        server_context: ssl.SSLContext,
    ) -> None:
        super().__init__(local, on_message, settings, error_response)
        self._tls = tls
        self._server_context = server_context
        self._handshakes: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(  # type: ignore[override]
        cls,
        host: str,
        port: int,
        on_message: MessageHandler,
        *,
        tls: TlsPolicy,
        settings: TransportSettings | None = None,
        error_response: ErrorResponder = error_response_for,
    ) -> TlsTransport:
        """Listen on `host`:`port` (an IP literal; port 0 picks one, see `local`)."""
        context = tls.server_context()
        owner: list[TlsTransport] = []
        server, local = await _listen("TLS", host, port, lambda: _TlsAccept(owner[0]))
        self = cls(local, on_message, settings or TransportSettings(), error_response, tls,
                   context)
        owner.append(self)
        await self._serve(server)
        return self

    def _start_handshake(self, raw: asyncio.Transport) -> None:
        if self._closed or len(self._live) + len(self._handshakes) >= \
                self.settings.max_connections:
            raw.abort()
            return
        task = asyncio.get_running_loop().create_task(self._handshake(raw))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        peer = _peer_address("TLS", raw.get_extra_info("peername"))
        connection = _StreamConnection(self)
        try:
            secured = await asyncio.get_running_loop().start_tls(
                raw, connection, self._server_context, server_side=True,
                ssl_handshake_timeout=self.settings.connect_timeout,
            )
            if secured is None:
                raise ConnectionResetError("closed during the handshake")
            # start_tls leaves connection_made to its caller; bytes that came with the end of
            # the handshake wait in the connection until then.
            connection.connection_made(secured)
        except (OSError, TimeoutError, ConnectionError) as exc:
            reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else (
                f"no handshake in {self.settings.connect_timeout} s"
                if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__)
            self._refused(peer, f"TLS handshake failed: {reason}")
            raw.abort()

    async def close(self) -> None:
        for task in list(self._handshakes):
            task.cancel()
        await super().close()


class _TlsAccept(asyncio.Protocol):
    """A fresh TCP connection on a TLS listener, until its handshake starts: reading paused so
    no byte is lost before `start_tls` takes it over."""

    def __init__(self, owner: TlsTransport) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._owner._start_handshake(transport)


def _ssl_reason(exc: BaseException) -> str:
    """An SSL error as a short cause: OpenSSL's reason and verify message, not its repr."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return str(exc) or type(exc).__name__


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection: framing in, writes out, idle timer."""

    def __init__(self, owner: TcpTransport, *, outgoing: bool = False) -> None:
        self._owner = owner
        self.outgoing = outgoing
        self.refusal: str | None = None  # why a TLS peer's certificate was refused
        self._early: list[bytes] = []  # TLS: data before connection_made (see TlsTransport)
        self._answered = False  # any byte received yet
        self._framer = StreamFramer(owner.settings.framing)
        self._transport: asyncio.Transport | None = None
        self._peer: Address | None = None
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = _peer_address(self._owner._transport_name, transport.get_extra_info("peername"))
        self._peer = peer
        self.refusal = self._owner._admit_tls(self, transport, peer)
        if self.refusal is not None or not self._owner._adopt(self, peer):
            self.closing = True
            transport.abort()
            return
        self._arm_idle_timer(self._owner.settings.idle_timeout)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._owner._tls is not None and self._peer is not None and not self.closing:
            # TLS 1.3: a server refusing our certificate does so after our handshake ended,
            # often without an alert we get to read.
            if isinstance(exc, ssl.SSLError):
                self._owner._refused(self._peer, f"the peer ended TLS: {_ssl_reason(exc)}")
            elif self.outgoing and not self._answered:
                self._owner._refused(self._peer, "the peer closed the connection before any "
                                     "answer (did it refuse our certificate?)")
        self.closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._peer is not None:
            self._owner._forget(self, self._peer)

    def data_received(self, data: bytes) -> None:
        if self._peer is None and not self.closing:
            self._early.append(data)  # a moment's worth; the framer's limits apply later
            if sum(map(len, self._early)) > _EARLY_BYTES_LIMIT:
                self.abort()
            return
        if self.closing or self._peer is None:
            return
        self._answered = True
        self._last_activity = self._loop.time()
        try:
            self._framer.feed(data)
            while (event := self._framer.next_event()) is not None:
                if isinstance(event, MessageFramed):
                    answer = self._owner._accept(event.data, self._peer)
                    if answer is not None:
                        self._write_answer(answer)
                elif isinstance(event, KeepAlivePing):
                    self._transport_write(_PONG)
                if self.closing:  # the handler may have closed the endpoint
                    return
        except ProtocolError as exc:
            # The stream has no boundaries left: answer if the head is readable, then close.
            answer = self._owner._reject(self._framer.buffered, exc, self._peer)
            if answer is not None:
                self._write_answer(answer)
            self.close()

    def _write_answer(self, answer: Response) -> None:
        try:
            self.write(serialize(answer))
        except SendError as exc:
            logger.debug("%s: could not answer %s: %s", self._owner, self._peer, exc)
        else:
            self._owner._stats.sent += 1

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self.closing or transport.is_closing():
            raise SendError(f"connection to {self._peer} is closed")
        self._transport_write(data)
        if transport.get_write_buffer_size() > self._owner.settings.max_write_buffer_bytes:
            self.abort()
            raise SendError(f"connection to {self._peer} closed: the peer does not read")

    def _transport_write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)
        self._last_activity = self._loop.time()

    def close(self) -> None:
        """Close after writing what is buffered (an error answer reaches the peer)."""
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.abort()

    def _arm_idle_timer(self, delay: float) -> None:
        self._idle_timer = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        idle = self._loop.time() - self._last_activity
        remaining = self._owner.settings.idle_timeout - idle
        if remaining > 0:
            self._arm_idle_timer(remaining)
        else:
            logger.debug("%s: closing idle connection with %s", self._owner, self._peer)
            self.close()
