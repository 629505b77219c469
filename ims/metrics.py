"""Prometheus metrics of one operator: SIP traffic per role, registrations, sessions, DNS,
border refusals, and how long requests wait for their final response.

`OperatorMetrics` holds the metrics on a `CollectorRegistry` given to it (one per operator:
two operators in one process keep apart). Message counts and latencies come from the stacks:
`metrics.observer("pcscf")` is a `MessageObserver` (ims.sip.stack) for that role's stack.
Facts no message shows come through explicit calls the roles make: `registration_changed`,
`registration_attempt`, `dns_lookup`, `border_refused`, `session_started`, `session_ended`.
`CompositeObserver` lets a stack feed both a trace and the metrics; `serve_metrics` answers
Prometheus scrapes over HTTP.

Every label set is bounded: methods outside RFC 3261 and its extensions count as "other",
response classes are 1xx..6xx, and free-text labels (roles, DNS kinds, refusal reasons) keep
their first `LABEL_VALUES_LIMIT` distinct values, then fold into "other".
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

from ims.sip.address import Address
from ims.sip.errors import ProtocolError
from ims.sip.message import Message, Request
from ims.sip.stack import Direction, MessageObserver

logger = logging.getLogger(__name__)

METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER",  # RFC 3261
    "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})
"""Methods counted under their own name; any other is counted as "other"."""

RegistrationOutcome = Literal["accepted", "challenged", "rejected"]
REGISTRATION_OUTCOMES: tuple[RegistrationOutcome, ...] = ("accepted", "challenged", "rejected")

LABEL_VALUES_LIMIT = 32
OTHER = "other"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 32.0, 64.0, 180.0)
"""Seconds; up to Timer B/F (64*T1 = 32 s) and a ringing INVITE's 3 minutes (Timer C)."""

DEFAULT_MAX_PENDING = 10_000
DEFAULT_MAX_AGE = 300.0  # s: a request unanswered this long is no latency sample any more

_LABEL_RE = re.compile(r"[^a-z0-9_.-]+")


class _BoundedLabel:
    """Normalises free-text label values and keeps at most `limit` distinct ones."""

    def __init__(self, limit: int = LABEL_VALUES_LIMIT) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, text: str) -> str:
        value = _LABEL_RE.sub("_", text.strip().lower())[:40] or OTHER
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


@dataclass(frozen=True, slots=True)
class _Started:
    epoch: float
    method: str


_PendingKey = tuple[str, str, str, str, str]  # role, side, Call-ID, top Via branch, CSeq


class OperatorMetrics:
    """The metrics of one operator on `registry`. Its own `on_message` counts under the role
    `role`; `observer(name)` gives the observer of another role sharing these metrics."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        role: str = "all",
        max_pending: int = DEFAULT_MAX_PENDING,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.registry = registry
        self._roles = _BoundedLabel()
        self._dns_kinds = _BoundedLabel()
        self._reasons = _BoundedLabel()
        self._role = self._roles(role)
        self._pending: OrderedDict[_PendingKey, _Started] = OrderedDict()
        self._max_pending = max_pending
        self._max_age = max_age
        self.evicted = 0  # requests dropped from latency matching (map full or too old)
        self.requests = Counter(
            "ueconnect_sip_requests", "SIP requests received (in) and sent (out), "
            "retransmissions included", ("role", "direction", "method"), registry=registry)
        self.responses = Counter(
            "ueconnect_sip_responses", "SIP responses received (in) and sent (out) by class, "
            "for requests of `method`", ("role", "direction", "method", "class"),
            registry=registry)
        self.latency = Histogram(
            "ueconnect_sip_request_duration_seconds", "From a request to its final response: "
            "side=server from receiving it to answering, side=client from sending it to the "
            "answer", ("role", "side", "method"), buckets=LATENCY_BUCKETS, registry=registry)
        self.registrations = Gauge(
            "ueconnect_registrations", "Registered contacts now", registry=registry)
        self.registration_attempts = Counter(
            "ueconnect_registration_attempts", "REGISTER requests by outcome", ("outcome",),
            registry=registry)
        self.sessions = Gauge(
            "ueconnect_sessions_active", "Sessions now established", registry=registry)
        self.sessions_started = Counter(
            "ueconnect_sessions_started", "Sessions established", registry=registry)
        self.dns_lookups = Counter(
            "ueconnect_dns_lookups", "DNS lookups by kind", ("kind",), registry=registry)
        self.dns_failures = Counter(
            "ueconnect_dns_lookup_failures", "DNS lookups without a usable answer, by kind",
            ("kind",), registry=registry)
        self.border_refusals = Counter(
            "ueconnect_border_refusals", "Requests the border refused, by reason", ("reason",),
            registry=registry)

    @property
    def pending_requests(self) -> int:
        """Requests awaiting their final response for a latency sample (bounded)."""
        return len(self._pending)

    # -- messages --

    def observer(self, role: str) -> MessageObserver:
        """The MessageObserver of role `role` ("pcscf", "scscf", "border"): its messages
        count under that role label."""
        return _RoleObserver(self, self._roles(role))

    def on_message(
        self, direction: Direction, message: Message, local: Address, remote: Address, now: float
    ) -> None:
        self.count(self._role, direction, message, now)

    def count(self, role: str, direction: Direction, message: Message, now: float) -> None:
        """Count one message of `role` (an already bounded label) and match latencies."""
        if isinstance(message, Request):
            method = message.method if message.method in METHODS else OTHER
            self.requests.labels(role, direction, method).inc()
            if message.method != "ACK":  # ACK has no response (RFC 3261 section 17.1.1.1)
                key = _pending_key(role, "server" if direction == "in" else "client", message)
                if key is not None:
                    self._start(key, _Started(now, method), now)
            return
        cseq_method = _cseq_method(message)
        method = cseq_method if cseq_method in METHODS else OTHER
        status = message.status_code
        klass = f"{status // 100}xx" if 100 <= status <= 699 else OTHER
        self.responses.labels(role, direction, method, klass).inc()
        if status >= 200:
            key = _pending_key(role, "server" if direction == "out" else "client", message)
            started = self._pending.pop(key, None) if key is not None else None
            if started is not None and key is not None:
                self.latency.labels(role, key[1], started.method).observe(
                    max(0.0, now - started.epoch))

    def _start(self, key: _PendingKey, started: _Started, now: float) -> None:
        if key in self._pending:
            return  # a retransmission: the first copy started the clock
        pending = self._pending
        while pending:
            oldest = next(iter(pending.values()))
            if now - oldest.epoch <= self._max_age and len(pending) < self._max_pending:
                break
            pending.popitem(last=False)
            self.evicted += 1
        pending[key] = started

    # -- facts the roles report --

    def registration_changed(self, current: int) -> None:
        """The registrar's number of registered contacts is now `current`."""
        self.registrations.set(current)

    def registration_attempt(self, outcome: RegistrationOutcome) -> None:
        """A REGISTER was answered: "accepted" (2xx), "challenged" (401/407), "rejected"."""
        if outcome not in REGISTRATION_OUTCOMES:
            raise ValueError(f"registration outcome {outcome!r} is not one of "
                             f"{', '.join(REGISTRATION_OUTCOMES)}")
        self.registration_attempts.labels(outcome).inc()

    def dns_lookup(self, kind: str, ok: bool) -> None:
        """A DNS lookup of `kind` ("enum", "naptr", "srv", "a", "aaaa", "plmn") ended."""
        label = self._dns_kinds(kind)
        self.dns_lookups.labels(label).inc()
        if not ok:
            self.dns_failures.labels(label).inc()

    def border_refused(self, reason: str) -> None:
        """The border refused a request for `reason` (a short word: "unknown-peer", ...)."""
        self.border_refusals.labels(self._reasons(reason)).inc()

    def session_started(self) -> None:
        self.sessions.inc()
        self.sessions_started.inc()

    def session_ended(self) -> None:
        self.sessions.dec()


@dataclass(frozen=True, slots=True)
class _RoleObserver:
    metrics: OperatorMetrics
    role: str

    def on_message(
        self, direction: Direction, message: Message, local: Address, remote: Address, now: float
    ) -> None:
        self.metrics.count(self.role, direction, message, now)


def _cseq_method(message: Message) -> str:
    try:
        return message.cseq.method
    except ProtocolError:
        return OTHER


def _pending_key(role: str, side: str, message: Message) -> _PendingKey | None:
    """A request and its responses share Call-ID, CSeq and the top Via branch at each hop
    (RFC 3261 section 17.1.3, 17.2.3)."""
    call_id = message.headers.get("Call-ID")
    cseq = message.headers.get("CSeq")
    try:
        branch = message.top_via.branch
    except ProtocolError:
        return None
    if call_id is None or cseq is None or branch is None:
        return None
    return role, side, call_id.strip(), branch, " ".join(cseq.split())


class CompositeObserver:
    """A MessageObserver feeding several (a trace and the metrics). Each observer sees every
    message even when another fails; the first failure is raised afterwards, for the stack
    to count."""

    def __init__(self, observers: Iterable[MessageObserver]) -> None:
        self.observers = tuple(observers)

    def on_message(
        self, direction: Direction, message: Message, local: Address, remote: Address, now: float
    ) -> None:
        failure: Exception | None = None
        for observer in self.observers:
            try:
                observer.on_message(direction, message, local, remote, now)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


# ----------------------------------------------------------------------------------------------
# The /metrics endpoint
# ----------------------------------------------------------------------------------------------


class ListenAddress(Protocol):
    """Where to listen: an ims.config.HostPort or an ims.sip.address.Address."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class MetricsServer:
    """A running /metrics endpoint (an HTTP server in a daemon thread)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; returns once the thread has ended."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


class MetricsServerError(Exception):
    """The /metrics endpoint could not be opened."""


def serve_metrics(address: ListenAddress, registry: CollectorRegistry) -> MetricsServer:
    """Serve `registry` for Prometheus over HTTP on `address` (port 0 picks a free one: read
    `.port`). Raises MetricsServerError when the address cannot be bound."""
    handler = MetricsHandler.factory(registry)
    server_class: type[ThreadingHTTPServer] = (
        _ThreadingHTTPServer6 if ":" in address.host else ThreadingHTTPServer
    )
    try:
        server = server_class((address.host, address.port), handler)
    except OSError as exc:
        raise MetricsServerError(
            f"cannot serve metrics on {address.host}:{address.port}: {exc.strerror}"
        ) from exc
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"metrics {address.host}:{server.server_address[1]}",
                              daemon=True)
    thread.start()
    return MetricsServer(server, thread)


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6
