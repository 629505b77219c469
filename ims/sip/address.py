"""Where a message comes from or goes to: a transport and a socket address."""

from __future__ import annotations

from dataclasses import dataclass

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
