"""The connection a game uses: datagrams over the ICE-selected pair of one ueconnect session.

A `Connection` is one confirmed INVITE dialog (the session the operators opened the data path
for) plus its ICE agent. Datagrams go with `send`/`recv`; `path` says where they go;
`path_changes` receives a `PathChanged` when that changes. Ending it is `close()` (BYE, then
the sockets) from either side; when the peer ends it (its BYE) or consent is lost (RFC 7675),
the connection closes itself and `recv()` raises `ConnectionClosed` (no end marker: a
datagram API has no in-band end, so the end is an exception carrying why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ims.sip.errors import SipError
from ims.sip.useragent import Call
from ue_ua.errors import ConnectionClosed
from ue_ua.ice import IceAgent, Path, PathChanged, PathKind

__all__ = ["Connection", "ConnectionClosed", "Path", "PathChanged", "PathKind", "SetupTimings"]

logger = logging.getLogger(__name__)

BYE_TIMEOUT = 10.0  # seconds close() waits for the BYE's final response
PEER_ENDED = "the peer ended the session (BYE)"


@dataclass(frozen=True, slots=True)
class SetupTimings:
    """Where a connection's setup time went, in milliseconds (for benchmarks).

    - `gather_ms`: gathering the local candidates (binding on `bind_host`, and the STUN
      server's answer when one is configured).
    - `signalling_ms`: caller, INVITE sent -> 2xx received (through both operators, the
      permission inquiry included); callee, INVITE received -> 200 sent, which contains the
      callee's `gather_ms` (it gathers while answering).
    - `checks_ms`: the ICE connectivity checks (RFC 8445 section 7), from their start
      (caller: once the 2xx is in; callee: once the 200 is sent) until a pair was selected.

    Caller: gather, signalling and checks follow each other, so their sum is `setup_ms` less
    a little bookkeeping. Callee: signalling then checks, `gather_ms` inside signalling."""

    gather_ms: float
    signalling_ms: float
    checks_ms: float


class Connection:
    """One ueconnect session's datagram connection (made by UeClient.connect or accepted).

    `peer` is the peer's identity as the signalling names it, `role` "caller" or "callee",
    `path` the selected path (None once closed), `setup_ms` the time from the INVITE (callee:
    from receiving it) until the checks selected a pair, `timings` its split (SetupTimings),
    `dropped_unvalidated` the datagrams dropped because they did not come from the peer."""

    def __init__(
        self,
        *,
        call: Call,
        ice: IceAgent,
        path: Path,
        setup_ms: float,
        timings: SetupTimings,
        peer: str,
        role: Literal["caller", "callee"],
        on_closed: Callable[[Connection], None] | None = None,
    ) -> None:
        self.call = call
        self.ice = ice
        self.path: Path | None = path
        self.setup_ms = setup_ms
        self.timings = timings
        self.peer = peer
        self.role = role
        self.path_changes: asyncio.Queue[PathChanged] = asyncio.Queue()
        self._on_closed = on_closed
        self._closing = False
        self._done = asyncio.Event()
        ice.on_path_change = self._path_gone
        self._watcher = asyncio.get_running_loop().create_task(self._watch_peer_bye())

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def dropped_unvalidated(self) -> int:
        """Datagrams dropped so far because their source is not the remote address of a pair
        of this session: someone else who learnt the UE's address and port."""
        return self.ice.dropped_unvalidated

    @property
    def call_id(self) -> str:
        return self.call.dialog.id.call_id

    async def send(self, data: bytes) -> None:
        """Send one datagram (ConnectionClosed once closed)."""
        await self.ice.send(data)

    async def recv(self) -> bytes:
        """The next datagram; raises ConnectionClosed when the connection ends (here, by the
        peer's BYE, or by consent loss) — also while waiting."""
        return await self.ice.recv()

    async def close(self) -> None:
        """End the session: BYE (RFC 3261 section 15.1.1; the operators release what they
        opened for it), then close the sockets. Idempotent; either side may call it."""
        await self._end("closed locally", send_bye=True)
        await self._done.wait()

    async def wait_closed(self) -> None:
        """Wait until the connection has ended (either side)."""
        await self._done.wait()

    # -- inside ---------------------------------------------------------------------------------

    async def _end(self, why: str, *, send_bye: bool) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            if send_bye and not self.call.ended.is_set():
                try:
                    response = await asyncio.wait_for(self.call.bye(), BYE_TIMEOUT)
                    logger.info("BYE for %s: %d %s", self.call_id, response.status_code,
                                response.reason)
                except (SipError, TimeoutError) as exc:
                    logger.warning("BYE for %s failed: %s (the operators release the "
                                   "session at its expiry)", self.call_id, exc)
            await self.ice.close(why)
        finally:
            self.path = None
            if self._watcher is not asyncio.current_task():
                self._watcher.cancel()
            self._done.set()
            if self._on_closed is not None:
                self._on_closed(self)

    async def _watch_peer_bye(self) -> None:
        await self.call.ended.wait()
        if self._closing:
            return
        self.path_changes.put_nowait(PathChanged(None, None, PEER_ENDED))
        await self._end(PEER_ENDED, send_bye=False)

    def _path_gone(self, event: PathChanged) -> None:
        # Another pair selected: tell the game. Consent lost (RFC 7675 section 5.1): tell the
        # game, then end the session so the operators release it.
        self.path = event.path
        self.path_changes.put_nowait(event)
        if event.path is None and not self._closing:
            task = asyncio.get_running_loop().create_task(
                self._end(event.reason, send_bye=True))
            task.add_done_callback(_log_failure)

    def __repr__(self) -> str:
        return f"Connection({self.role} {self.peer}, {self.path}, closed={self._closing})"


def _log_failure(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            logger.error("ending a connection failed", exc_info=task.exception())

