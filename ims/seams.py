"""The two seams the S-CSCF hands `Require: ueconnect` requests to.

- The permission function (issue 5) decides whether the caller may connect to the callee:
  from the callee's standing rules, else by asking the callee's UE.
  The S-CSCF also hands it the requests addressed to it (`PermissionEndpoint`).
- The connectivity gateway (issue 6) prepares this operator's side of the data path (a PCP
  PEER mapping on the CGN, or a relay) and may rewrite the offer accordingly.

Each is a typing Protocol; the defaults here allow and change nothing, and say so in the log
every time they are asked (a missing function must never pass unnoticed).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ims.extension import TargetMno
from ims.sip.message import Request, Response

__all__ = [
    "ConnectRequest",
    "ConnectivityGateway",
    "Leg",
    "LoggingGateway",
    "LoggingPermission",
    "Permission",
    "PermissionEndpoint",
    "PermissionFunction",
    "Refusal",
    "SessionGateway",
]

logger = logging.getLogger(__name__)


class Leg(enum.StrEnum):
    """Which side of the call this operator serves."""

    ORIGINATING = "originating"  # the caller is our subscriber
    TERMINATING = "terminating"  # the callee is our subscriber


@dataclass(frozen=True)
class ConnectRequest:
    """A UE's request for help, as the S-CSCF sees it.

    `caller` is the asserted identity (P-Asserted-Identity), `callee` the Request-URI,
    `target_mno` what the caller's UE named, `request` the INVITE as it will be forwarded.
    """

    leg: Leg
    caller: str
    callee: str
    call_id: str
    target_mno: TargetMno | None
    request: Request


@dataclass(frozen=True)
class Permission:
    """The permission function's verdict; a refusal carries the final response to send
    (status 4xx/6xx and a reason phrase naming why, e.g. 603 "Decline (not permitted)") and
    the header fields it needs (Reason, RFC 3326; Unsupported for a 420)."""

    allowed: bool
    status_code: int = 603
    reason: str = "Decline"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Refusal:
    """The gateway cannot prepare the data path: the final response to answer."""

    status_code: int
    reason: str


class PermissionFunction(Protocol):
    async def check(self, request: ConnectRequest) -> Permission:
        """Whether the caller may connect to the callee (may ask the callee's UE)."""
        ...


class PermissionEndpoint(Protocol):
    def receive(self, request: Request) -> Response | None:
        """A request the S-CSCF received out of any dialog: the function's answer when the
        request is for it (an answer MESSAGE to its URI, a rules PUBLISH, docs/extension.md
        sections 5.3 and 6.3), None when it is not."""
        ...


class ConnectivityGateway(Protocol):
    async def prepare(self, request: ConnectRequest) -> Request | Refusal:
        """Open this operator's side; returns the request to forward (its offer possibly
        rewritten) or a Refusal."""
        ...

    async def release(self, call_id: str) -> None:
        """Release everything opened for the call (BYE, failure, expiry)."""
        ...


@runtime_checkable
class SessionGateway(ConnectivityGateway, Protocol):
    """A gateway that also follows the session it prepared (ims.gateway.service): the S-CSCF
    hands it the 2xx answering the INVITE, refreshes, and calls `release` when the INVITE
    failed on every branch, when the request was refused after `prepare`, and on the BYE.
    A plain ConnectivityGateway (LoggingGateway) is only asked to `prepare`."""

    def complete(self, call_id: str, response: Response) -> Response | Awaitable[Response]:
        """A 2xx to an INVITE this gateway prepared (retransmissions included): the response
        to forward, its answer possibly rewritten. When that needs the network (a PCP round
        trip) it returns an awaitable of that response instead, and the S-CSCF holds the 2xx
        meanwhile (ims.sip.proxy.Hold); a retransmission of an answer already completed gets
        the same rewrite at once. The awaitable never raises: a gateway that cannot help
        returns the response it was given."""
        ...

    async def refresh(self, request: Request) -> None:
        """An in-dialog request other than BYE: the session lives on (RFC 4028)."""
        ...


class LoggingPermission:
    """The default permission function: allows, and logs that it did."""

    async def check(self, request: ConnectRequest) -> Permission:
        logger.warning(
            "no permission function configured (issue 5): allowing %s -> %s (Call-ID %s)",
            request.caller, request.callee, request.call_id,
        )
        return Permission(True)


class LoggingGateway:
    """The default gateway: opens nothing, forwards the offer unchanged, and logs that."""

    async def prepare(self, request: ConnectRequest) -> Request | Refusal:
        logger.warning(
            "no connectivity gateway configured (issue 6): %s side of %s -> %s left as offered "
            "(Call-ID %s)",
            request.leg, request.caller, request.callee, request.call_id,
        )
        return request.request

    async def release(self, call_id: str) -> None:
        logger.warning(
            "no connectivity gateway configured (issue 6): nothing to release for Call-ID %s",
            call_id,
        )
