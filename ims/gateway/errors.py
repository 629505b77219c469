"""The connectivity gateway's error family.

As in ims.pcp: `GatewayUsageError` is "we misused the API" (a bad address, an unknown
allocation), `RelayRefused` is a relay that cannot serve a request it understood (table full,
no port to bind). A peer that breaks the rules of an allocation (a datagram from an endpoint
it does not permit) is not an error: the relay drops the datagram and counts it.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error raised by ims.gateway."""


class GatewayUsageError(GatewayError, ValueError):
    """A value the caller passed is not valid (an address, a port, a lifetime, a config)."""


class UnknownAllocation(GatewayUsageError, KeyError):
    """No live relay allocation has this id (it was released, expired or never existed)."""

    def __init__(self, allocation_id: int) -> None:
        super().__init__(
            f"no relay allocation {allocation_id} (released, expired, or never allocated)"
        )
        self.allocation_id = allocation_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RelayRefused(GatewayError):
    """The relay cannot open an allocation now; the call gets a 5xx from the gateway."""


class RelayCapacityExceeded(RelayRefused):
    """Every allocation the relay is configured for is in use."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the relay already holds its maximum of {limit} allocations; release some or raise "
            "max_allocations in the relay configuration"
        )
        self.limit = limit


class RelayPortUnavailable(RelayRefused):
    """The operating system refused a relay port (address not local, ports exhausted)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot bind a UDP relay port on {address}: {reason}")
        self.address = address
        self.reason = reason
