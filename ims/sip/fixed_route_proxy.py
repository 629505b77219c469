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
import gc
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

# Live transactions one worker keeps before it answers new requests 503 (RFC 3261 21.5.4).
# Each relayed call holds four (INVITE and BYE, server and client side), most of them for
# 64*T1 = 32 s after the call (Timers L, M, J: RFC 6026 and RFC 3261 17.2.2), about 1.6 kB
# each with the call's response context, as measured (they keep only what those timers need);
# so 50 000 bound a worker near 80 MB and let it absorb bursts of a few thousand calls per
# second. The layer's own default (10 000) caps sustained relaying far
# lower, which is right for the roles' embedded stacks but not for a proxy.
MAX_TRANSACTIONS = 50_000
_GC_GEN0_THRESHOLD = 10_000  # allocations between young-generation collections (default 700)


@dataclass(frozen=True, slots=True)
class FixedRoute:
    """The router: Record-Route, then the next hop for requests outside a dialog.

    A Request-URI that names this proxy's host and port (with any user part, as sipp's
    built-in scenarios send even their BYE) also goes to the next hop: the next hop is where
    "us" leads; so does an in-dialog request without a Route whose remote target is a host
    name, which this proxy cannot resolve.
    """

    next_hop: Address
    local: tuple[SipUri, ...]

    def __call__(self, request: Request, source: Address) -> Forward | Response:
        in_dialog = request.to.tag is not None
        if request.headers.get("Route") is not None:
            return Forward((Target(request.uri),))  # along the remaining Route set
        if self._names_us(request.uri) or not in_dialog:
            return Forward((Target(request.uri, self.next_hop),), record_route=not in_dialog)
        if resolve_literal(request.uri) is None:
            # A remote target named by a host name (this proxy does no DNS), as sipp's
            # branchc sends its BYE without the Record-Route: the next hop is the only route.
            return Forward((Target(request.uri, self.next_hop),))
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
    max_transactions: int = MAX_TRANSACTIONS,
) -> None:
    """Run one proxy worker until `stop` is set (forever when None).

    With `own_port`, the worker also binds listen.host:own_port, names itself by it (Via,
    Record-Route) and shares `listen` with other workers (SO_REUSEPORT). Beyond
    `max_transactions` live transactions new requests get 503 with Retry-After.
    """
    layer = TransactionLayer(check_messages=False, max_transactions=max_transactions)
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


def _tune_gc() -> None:
    """Collector settings for a proxy process (its entry points only, never a library call).

    A proxy allocates a few hundred small objects per message and keeps a transaction's for
    half a minute; with the default gen-0 threshold (700) the collector ran some 150 times a
    second at 800 calls/s and took about a tenth of the CPU. Objects from start-up (modules,
    tables) are frozen out of every later collection, and collections run less often."""
    gc.freeze()
    gc.set_threshold(_GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def _worker(
    listen: Address, next_hop: Address, own_port: int | None, max_transactions: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers with SIGTERM
    _tune_gc()
    asyncio.run(serve(listen, next_hop, own_port=own_port, max_transactions=max_transactions))


def run(
    listen: Address,
    next_hop: Address,
    workers: int = 1,
    *,
    max_transactions: int = MAX_TRANSACTIONS,
) -> None:
    """Run `workers` proxy processes in the foreground until interrupted; each keeps at most
    `max_transactions` live transactions."""
    if workers == 1:
        _tune_gc()
        asyncio.run(serve(listen, next_hop, max_transactions=max_transactions))
        return
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(
            target=_worker,
            args=(listen, next_hop, listen.port + 1 + i, max_transactions),
            name=f"proxy-{i}",
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
