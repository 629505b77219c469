"""Where a message comes from or goes to: a transport and a socket address."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ims.sip.errors import LocalProtocolError
from ims.sip.uri import SipUri, Uri

RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "WS", "WSS"})


@dataclass(frozen=True, slots=True)
class Address:
    """A transport endpoint: "UDP" / "TCP" / "TLS", a host (IP literal, no brackets), a port."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """Reliable transports get no retransmissions (RFC 3261 section 17.1.1.2)."""
        return self.transport in RELIABLE_TRANSPORTS

    @property
    def hostport(self) -> str:
        """"host:port" with IPv6 literals in brackets (RFC 5118), as Via and URIs want them."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.hostport}"


def address_of_uri(uri: Uri, default_transport: str = "UDP") -> Address:
    """The next-hop Address of a SIP URI whose host is an IP literal (RFC 3263 section 4 is
    the DNS locator's job; this is the no-DNS case): transport from the transport parameter,
    port from the URI or the transport's default (5060, 5061 for TLS/sips)."""
    if not isinstance(uri, SipUri):
        raise LocalProtocolError(f"cannot send to {uri}: not a sip: or sips: URI")
    host = uri.host_for_connect
    if not _is_ip_literal(host):
        raise LocalProtocolError(f"cannot send to {uri}: host is not an IP address (use DNS)")
    param = uri.param("transport")
    transport = (param or ("TLS" if uri.secure else default_transport)).upper()
    port = uri.port if uri.port is not None else (5061 if transport == "TLS" else 5060)
    return Address(transport, host, port)


def _is_ip_literal(host: str) -> bool:
    return ip_version(host) is not None


def _is_canonical_ipv4(host: str) -> bool:
    """A dotted quad as `ipaddress` prints it: four decimal octets, no leading zeros. Checked
    by hand because this runs for every datagram sent and received, and `ipaddress` costs
    several times more; anything else takes the `ipaddress` path."""
    parts = host.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not (0 < len(part) <= 3 and part.isdigit() and part.isascii()):
            return False
        if (part[0] == "0" and len(part) > 1) or int(part) > 255:
            return False
    return True


def ip_version(host: str) -> int | None:
    """4 or 6 when `host` is an IP literal (without brackets), None for a name."""
    if _is_canonical_ipv4(host):
        return 4
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def canonical_ip(host: str) -> str:
    """The IP literal `host` in its canonical text form (IPv6 compressed, lower case); raises
    ValueError for anything that is not an IP literal."""
    if _is_canonical_ipv4(host):
        return host
    return ipaddress.ip_address(host).compressed
