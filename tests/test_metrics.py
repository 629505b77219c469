"""Operator metrics (ims.metrics): counters from the stacks' messages, latency matching,
the roles' explicit hooks, bounded labels, and the /metrics HTTP endpoint on loopback."""

from __future__ import annotations

import asyncio
import http.client
import socket
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from ims.metrics import (
    LABEL_VALUES_LIMIT,
    CompositeObserver,
    MetricsServerError,
    OperatorMetrics,
    serve_metrics,
)
from ims.sip.address import Address
from ims.sip.dialog import create_initial_request
from ims.sip.ids import IdSource
from ims.sip.message import Message, Request, make_response
from ims.sip.stack import Direction, SipStack, TuEvent
from ims.sip.transaction import RequestReceived
from ims.sip.uri import parse_uri

IDS = IdSource()
BILL = parse_uri("sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org")
DAVE = parse_uri("sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org")
LOCAL, REMOTE = Address("UDP", "127.0.0.1", 5060), Address("UDP", "127.0.0.1", 5071)


def request(method: str = "OPTIONS") -> Request:
    contact = parse_uri("sip:bill@127.0.0.1:5071") if method == "INVITE" else None
    return create_initial_request(method, DAVE, from_=BILL, to=DAVE, ids=IDS, contact=contact)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_options_round_trip_counts_requests_responses_and_latency() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)

    async def main() -> None:
        box: list[SipStack] = []

        def answer(event: TuEvent) -> None:
            if isinstance(event, RequestReceived):
                box[0].respond(event.key, make_response(event.request, 200, to_tag=IDS.tag()))

        server = SipStack(answer, observer=metrics.observer("pcscf"))
        box.append(server)
        client = SipStack(lambda event: None, observer=metrics.observer("ue"))
        await client.listen("UDP", "127.0.0.1")
        server_end = (await server.listen("UDP", "127.0.0.1")).local
        assert (await client.request(request(), server_end)).status_code == 200
        await client.close()
        await server.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    requests = "ueconnect_sip_requests_total"
    assert value(registry, requests, role="ue", direction="out", method="OPTIONS") == 1
    assert value(registry, requests, role="pcscf", direction="in", method="OPTIONS") == 1
    responses = "ueconnect_sip_responses_total"
    assert value(registry, responses, role="pcscf", direction="out", method="OPTIONS",
                 **{"class": "2xx"}) == 1
    assert value(registry, responses, role="ue", direction="in", method="OPTIONS",
                 **{"class": "2xx"}) == 1
    latency = "ueconnect_sip_request_duration_seconds_count"
    assert value(registry, latency, role="pcscf", side="server", method="OPTIONS") == 1
    assert value(registry, latency, role="ue", side="client", method="OPTIONS") == 1
    assert 0 <= value(registry, "ueconnect_sip_request_duration_seconds_sum", role="ue",
                      side="client", method="OPTIONS") < 5


def test_latency_from_first_copy_and_provisional_does_not_end_it() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry, role="scscf")
    invite = request("INVITE")
    metrics.on_message("in", invite, LOCAL, REMOTE, 100.0)
    metrics.on_message("in", invite, LOCAL, REMOTE, 100.5)  # retransmission (17.2.1)
    metrics.on_message("out", make_response(invite, 180, to_tag="t"), LOCAL, REMOTE, 101.0)
    metrics.on_message("out", make_response(invite, 200, to_tag="t"), LOCAL, REMOTE, 102.0)
    metrics.on_message("out", make_response(invite, 200, to_tag="t"), LOCAL, REMOTE, 102.5)
    labels = {"role": "scscf", "side": "server", "method": "INVITE"}
    assert value(registry, "ueconnect_sip_request_duration_seconds_count", **labels) == 1
    assert value(registry, "ueconnect_sip_request_duration_seconds_sum", **labels) == 2.0
    assert value(registry, "ueconnect_sip_requests_total", role="scscf", direction="in",
                 method="INVITE") == 2  # retransmissions count as messages
    assert value(registry, "ueconnect_sip_responses_total", role="scscf", direction="out",
                 method="INVITE", **{"class": "1xx"}) == 1


def test_rfc3261_17_1_1_1_ack_has_no_response_and_no_latency_entry() -> None:
    metrics = OperatorMetrics(CollectorRegistry())
    ack = request("INVITE")
    ack = Request("ACK", ack.uri, ack.headers.replaced("CSeq", ["1 ACK"]))
    metrics.on_message("out", ack, LOCAL, REMOTE, 1.0)
    assert metrics.pending_requests == 0


def test_method_and_class_labels_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    odd = request()
    odd = Request("FROBNICATE", odd.uri, odd.headers.replaced("CSeq", ["1 FROBNICATE"]))
    metrics.on_message("in", odd, LOCAL, REMOTE, 1.0)
    metrics.on_message("out", make_response(odd, 603, to_tag="t"), LOCAL, REMOTE, 1.1)
    assert value(registry, "ueconnect_sip_requests_total", role="all", direction="in",
                 method="other") == 1
    assert value(registry, "ueconnect_sip_responses_total", role="all", direction="out",
                 method="other", **{"class": "6xx"}) == 1


def test_pending_map_is_bounded_by_size_and_age() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry, max_pending=3, max_age=10.0)
    requests = [request() for _ in range(5)]
    for i, r in enumerate(requests):
        metrics.on_message("in", r, LOCAL, REMOTE, float(i))
    assert metrics.pending_requests == 3 and metrics.evicted == 2
    late = request()
    metrics.on_message("in", late, LOCAL, REMOTE, 100.0)  # the others are too old by now
    assert metrics.pending_requests == 1 and metrics.evicted == 5
    # An evicted request's answer counts as a response, but gives no latency sample.
    metrics.on_message("out", make_response(requests[0], 200, to_tag="t"), LOCAL, REMOTE, 101.0)
    assert value(registry, "ueconnect_sip_request_duration_seconds_count", role="all",
                 side="server", method="OPTIONS") == 0


def test_role_hooks() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.registration_changed(3)
    metrics.registration_changed(2)
    metrics.registration_attempt("accepted")
    metrics.registration_attempt("challenged")
    metrics.registration_attempt("challenged")
    with pytest.raises(ValueError, match="accepted, challenged, rejected"):
        metrics.registration_attempt("maybe")  # type: ignore[arg-type]
    metrics.session_started()
    metrics.session_started()
    metrics.session_ended()
    metrics.dns_lookup("enum", ok=True)
    metrics.dns_lookup("NAPTR", ok=False)
    metrics.border_refused("unknown-peer")
    metrics.border_refused("Unknown Peer!")
    assert value(registry, "ueconnect_registrations") == 2
    assert value(registry, "ueconnect_registration_attempts_total", outcome="challenged") == 2
    assert value(registry, "ueconnect_sessions_active") == 1
    assert value(registry, "ueconnect_sessions_started_total") == 2
    assert value(registry, "ueconnect_dns_lookups_total", kind="enum") == 1
    assert value(registry, "ueconnect_dns_lookups_total", kind="naptr") == 1
    assert value(registry, "ueconnect_dns_lookup_failures_total", kind="naptr") == 1
    assert value(registry, "ueconnect_dns_lookup_failures_total", kind="enum") == 0
    assert value(registry, "ueconnect_border_refusals_total", reason="unknown-peer") == 1
    assert value(registry, "ueconnect_border_refusals_total", reason="unknown_peer_") == 1


def test_free_text_labels_fold_into_other_past_the_limit() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    for i in range(LABEL_VALUES_LIMIT + 5):
        metrics.border_refused(f"reason-{i}")
    assert value(registry, "ueconnect_border_refusals_total", reason="other") == 5
    reasons = {s.labels["reason"] for m in registry.collect() for s in m.samples
               if m.name == "ueconnect_border_refusals"}
    assert len(reasons) == LABEL_VALUES_LIMIT + 1


@dataclass
class Boom:
    def on_message(self, direction: Direction, message: Message, local: Address,
                   remote: Address, now: float) -> None:
        raise RuntimeError("boom")


def test_composite_feeds_every_observer_then_raises_the_first_failure() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    composite = CompositeObserver([Boom(), metrics.observer("pcscf")])
    with pytest.raises(RuntimeError, match="boom"):
        composite.on_message("in", request(), LOCAL, REMOTE, 1.0)
    assert value(registry, "ueconnect_sip_requests_total", role="pcscf", direction="in",
                 method="OPTIONS") == 1


def test_two_operators_keep_their_own_registries() -> None:
    alpha, beta = OperatorMetrics(CollectorRegistry()), OperatorMetrics(CollectorRegistry())
    alpha.session_started()
    assert value(alpha.registry, "ueconnect_sessions_active") == 1
    assert value(beta.registry, "ueconnect_sessions_active") == 0


def scrape(host: str, port: int) -> tuple[int, str]:
    # http.client directly: no proxy from the environment, only loopback.
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_metrics_endpoint_answers_over_http_on_loopback() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.on_message("in", request(), LOCAL, REMOTE, 1.0)
    metrics.registration_changed(4)
    server = serve_metrics(Address("TCP", "127.0.0.1", 0), registry)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        status, body = scrape("127.0.0.1", server.port)
    finally:
        server.close()
    assert status == 200
    assert ('ueconnect_sip_requests_total{direction="in",method="OPTIONS",role="all"} 1.0'
            in body)
    for name in ("ueconnect_sip_responses_total", "ueconnect_sip_request_duration_seconds",
                 "ueconnect_registrations 4.0", "ueconnect_registration_attempts_total",
                 "ueconnect_sessions_active", "ueconnect_dns_lookups_total",
                 "ueconnect_border_refusals_total"):
        assert name in body
    with pytest.raises(OSError):  # closed: the port is released, nobody answers
        scrape("127.0.0.1", server.port)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this host cannot bind the IPv6 loopback ::1")
def test_metrics_endpoint_on_ipv6_loopback() -> None:
    registry = CollectorRegistry()
    OperatorMetrics(registry).session_started()
    server = serve_metrics(Address("TCP", "::1", 0), registry)
    try:
        status, body = scrape("::1", server.port)
    finally:
        server.close()
    assert status == 200 and "ueconnect_sessions_active 1.0" in body


def test_metrics_endpoint_reports_an_address_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsServerError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve_metrics(Address("TCP", "127.0.0.1", port), CollectorRegistry())
