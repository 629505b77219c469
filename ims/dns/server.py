"""The embedded authoritative server: `Authority` behind asyncio UDP and TCP on one port.

The adapter only moves bytes: every DNS rule lives in ims.dns.authority.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import cast

from ims.dns.authority import Authority
from ims.dns.zones import ZoneSet, load_zone_set

log = logging.getLogger(__name__)

# 53530: 5353 is mDNS, 53 needs root; the demo world's nameserver (dns_zones/loopback).
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 53530
TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 section 6.2.3: servers close idle connections
_BIND_ATTEMPTS = 20  # port 0: UDP picks a port, TCP must get the same one


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            reply = self.authority.respond_wire(data, over_tcp=False)
        except Exception:  # a bug must not take the server down for everyone else
            log.exception("internal error answering a UDP query from %s", addr)
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


async def _serve_tcp(
    authority: Authority,
    connections: set[asyncio.StreamWriter],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """RFC 1035 section 4.2.2 / RFC 7766: two-octet length, then the message; many per
    connection, closed after an idle period."""
    connections.add(writer)
    try:
        while True:
            try:
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", header)
                wire = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            try:
                reply = authority.respond_wire(wire, over_tcp=True)
            except Exception:
                log.exception("internal error answering a TCP query")
                return
            if reply is None:
                continue
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    finally:
        connections.discard(writer)
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


@dataclass
class DnsServer:
    """A running server; `close()` stops it, `port` is the bound port (useful with port 0)."""

    zone_set: ZoneSet
    address: str
    port: int
    _udp: asyncio.DatagramTransport
    _tcp: asyncio.Server
    _connections: set[asyncio.StreamWriter]

    def close(self) -> None:
        self._udp.close()
        self._tcp.close()
        for writer in list(self._connections):
            writer.close()

    async def wait_closed(self) -> None:
        await self._tcp.wait_closed()

    async def __aenter__(self) -> DnsServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()


async def start_server(
    zones: Path | ZoneSet,
    address: str = DEFAULT_ADDRESS,
    port: int = DEFAULT_PORT,
    *,
    udp_payload: int | None = None,
) -> DnsServer:
    """Serve a zone directory (or a loaded `ZoneSet`) on UDP and TCP `address`:`port`.

    Raises ZoneFileError before binding when a zone file is broken, OSError when the port is
    taken. With port 0 the system picks a port free for both UDP and TCP.
    """
    zone_set = zones if isinstance(zones, ZoneSet) else load_zone_set(zones)
    authority = (
        Authority(zone_set) if udp_payload is None else Authority(zone_set, udp_payload=udp_payload)
    )
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    connections: set[asyncio.StreamWriter] = set()
    last_error: OSError | None = None
    for _ in range(_BIND_ATTEMPTS if port == 0 else 1):
        udp, _protocol = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(authority), local_addr=(address, port), family=family
        )
        bound = udp.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(
                lambda r, w: _serve_tcp(authority, connections, r, w), address, bound,
                family=family,
                reuse_address=True,
            )
        except OSError as exc:
            udp.close()
            last_error = exc
            continue
        log.info("DNS server on %s port %d (UDP and TCP)", address, bound)
        return DnsServer(zone_set, address, bound, udp, tcp, connections)
    assert last_error is not None
    raise last_error
