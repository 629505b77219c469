"""A stateful proxy that sends every initial request to one configured next hop.

The smallest useful composition of the core: SipStack + TransactionLayer + ProxyCore with a
router that Record-Routes and forwards out-of-dialog requests to a fixed next hop, and
in-dialog requests along their Route set or to their Request-URI (RFC 3261 section 16.12's
loose routing). Interop tests and the benchmark run it (`ueconnect sip proxy`); the operator
roles compose the same core with their own routers.

Several workers: each is a process with its own port (its Via and Record-Route, so responses
and in-dialog requests come back to the worker holding the transaction) and a share of the
listening port through SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from dataclasses import dataclass

from ims.sip.address import Address, address_of_uri
from ims.sip.errors import LocalProtocolError
from ims.sip.message import Request, Response
from ims.sip.proxy import Forward, ProxyConfig, ProxyCore, Target
from ims.sip.stack import SipStack, TuEvent
from ims.sip.transaction import TransactionLayer
from ims.sip.transport import TransportSettings
from ims.sip.uri import SipUri, Uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FixedRoute:
    """The router: Record-Route, then the next hop for requests outside a dialog.

    A Request-URI that names this proxy's host and port (with any user part, as sipp's
    built-in scenarios send even their BYE) also goes to the next hop: the next hop is where
    "us" leads.
    """

    next_hop: Address
    local: tuple[SipUri, ...]

    def __call__(self, request: Request, source: Address) -> Forward | Response:
        in_dialog = request.to.tag is not None
        if request.headers.get("Route") is not None:
            return Forward((Target(request.uri),))  # along the remaining Route set
        if self._names_us(request.uri) or not in_dialog:
            return Forward((Target(request.uri, self.next_hop),), record_route=not in_dialog)
        return Forward((Target(request.uri),))  # in-dialog: to the remote target

    def _names_us(self, uri: Uri) -> bool:
        if not isinstance(uri, SipUri):
            return False
        host = uri.host.lower()
        port = uri.port if uri.port is not None else 5060
        return any(host == mine.host.lower() and port == mine.port for mine in self.local)


def resolve_literal(uri: Uri) -> Address | None:
    """Next hop of a URI with an IP literal host; None (no route) otherwise."""
    try:
        return address_of_uri(uri)
    except LocalProtocolError:
        return None


def _ignore(event: TuEvent) -> None:
    return None


async def serve(
    listen: Address,
    next_hop: Address,
    *,
    own_port: int | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run one proxy worker until `stop` is set (forever when None).

    With `own_port`, the worker also binds listen.host:own_port, names itself by it (Via,
    Record-Route) and shares `listen` with other workers (SO_REUSEPORT).
    """
    layer = TransactionLayer(check_messages=False)
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    shared = SipUri(host=host, port=listen.port)
    me = shared if own_port is None else SipUri(host=host, port=own_port)
    config = ProxyConfig(uri=me, aliases=() if own_port is None else (shared,))
    stack = SipStack(_ignore, layer=layer)
    router = FixedRoute(next_hop, (config.uri, *config.aliases))
    stack.core = ProxyCore(layer, config, router, resolve_literal)
    if own_port is not None:
        # The first endpoint of a kind carries the sends: our own port, so replies find us.
        await stack.listen(listen.transport, listen.host, own_port)
        await stack.listen(
            listen.transport, listen.host, listen.port, settings=TransportSettings(reuse_port=True)
        )
    else:
        await stack.listen(listen.transport, listen.host, listen.port)
    logger.info("proxy on %s forwarding to %s", me, next_hop)
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await stack.close()


def _worker(listen: Address, next_hop: Address, own_port: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers with SIGTERM
    asyncio.run(serve(listen, next_hop, own_port=own_port))


def run(listen: Address, next_hop: Address, workers: int = 1) -> None:
    """Run `workers` proxy processes in the foreground until interrupted."""
    if workers == 1:
        asyncio.run(serve(listen, next_hop))
        return
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(
            target=_worker, args=(listen, next_hop, listen.port + 1 + i), name=f"proxy-{i}"
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
