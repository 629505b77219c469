"""The REGISTER client (RFC 3261 section 10.2, 22; RFC 3608, RFC 3455, RFC 5626)."""

from __future__ import annotations

import itertools

import pytest

from ims.sip.dialog import SENT_BY_PLACEHOLDER
from ims.sip.digest import (
    DigestClient,
    DigestServer,
    DigestServerConfig,
    Failed,
    Ok,
    Password,
    parse_credentials,
)
from ims.sip.headers import NameAddress, parse_name_addr
from ims.sip.ids import IdSource, RandomSource, new_branch
from ims.sip.message import Request, Response, make_response, parse_message, serialize
from ims.sip.registration import (
    InvalidRegistrationConfig,
    RegisterClient,
    Registered,
    RegistrationConfig,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationState,
    SendRequest,
    Unregistered,
    refresh_interval,
)
from ims.sip.uri import SipUri, parse_sip_uri, parse_uri

DOMAIN = "ims.mnc001.mcc001.3gppnetwork.org"
BILL = f"sip:+15550100001@{DOMAIN}"
IMPI = f"+15550100001@{DOMAIN}"
CONTACT = "sip:+15550100001@127.0.0.1:5070"
PCSCF = f"<sip:pcscf.{DOMAIN};lr>"
SERVICE_ROUTE = f"<sip:orig@scscf.{DOMAIN};lr>"
INSTANCE = "urn:uuid:00000000-0000-1000-8000-00aa00bb00cc"
PASSWORD = "bill-secret"


def fixed_ids(byte: int = 0) -> IdSource:
    return IdSource(lambda size: bytes([byte]) * size)


def counting_random() -> RandomSource:
    counter = itertools.count(1)
    return lambda size: next(counter).to_bytes(size, "big")


def config(**kw: object) -> RegistrationConfig:
    base: dict[str, object] = {
        "registrar": parse_sip_uri(f"sip:{DOMAIN}"),
        "aor": parse_uri(BILL),
        "contact": parse_sip_uri(CONTACT),
    }
    base.update(kw)
    return RegistrationConfig(**base)  # type: ignore[arg-type]


def digest_client() -> DigestClient:
    cnonces = (f"cnonce{i}" for i in itertools.count())
    return DigestClient(IMPI, PASSWORD, cnonce_source=lambda: next(cnonces))


def digest_server(lifetime: float = 300.0) -> DigestServer:
    return DigestServer(
        DigestServerConfig(realm=DOMAIN, secret_key=b"k" * 32, nonce_lifetime=lifetime),
        random_bytes=lambda n: b"\x07" * n,
    )


def events(client: RegisterClient) -> list[RegistrationEvent]:
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def sent(client: RegisterClient) -> Request:
    evs = events(client)
    assert len(evs) == 1 and isinstance(evs[0], SendRequest), evs
    return evs[0].request


def ok(request: Request, *extra: tuple[str, str], expires: int | None = None) -> Response:
    """A registrar's 200 listing our contact with `expires` (or the requested one)."""
    requested = request.header_int("Expires") or 0
    contact = f"<{CONTACT}>;expires={requested if expires is None else expires}"
    return make_response(request, 200, to_tag="reg", extra=[("Contact", contact), *extra])


def challenge(request: Request, server: DigestServer, now: float, *, code: int = 401,
              stale: bool = False) -> Response:
    name = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
    values = server.challenge_values(now, stale=stale)
    return make_response(request, code, to_tag="reg", extra=[(name, v) for v in values])


def verify(request: Request, server: DigestServer, now: float,
           header: str = "Authorization") -> object:
    value = request.headers.get(header)
    assert value is not None, f"no {header}"
    return server.verify(
        parse_credentials(value),
        method="REGISTER",
        request_uri=str(request.uri),
        secret=Password(PASSWORD),
        now=now,
    )


# --- the REGISTER request (10.2) -----------------------------------------------------------


def test_register_exact_headers_rfc3261_10_2() -> None:
    client = RegisterClient(
        config(route_set=(parse_name_addr(PCSCF),), instance_id=INSTANCE, reg_id=1),
        ids=fixed_ids(),
    )
    client.register(now=0.0)
    request = sent(client)
    z = "a" * 26
    assert serialize(request).decode() == (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {SENT_BY_PLACEHOLDER};branch=z9hG4bK{z};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"Route: {PCSCF}\r\n"
        f"To: <{BILL}>\r\n"
        f"From: <{BILL}>;tag=aaaaaaaaaaaaa\r\n"
        f"Call-ID: {z}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f'Contact: <{CONTACT}>;+sip.instance="<{INSTANCE}>";reg-id=1\r\n'
        "Expires: 3600\r\n"
        "Supported: path\r\n"
        "Supported: outbound\r\n"
        "Content-Length: 0\r\n"
        "\r\n"
    )
    assert parse_message(serialize(request)) == request
    assert client.state is RegistrationState.REGISTERING
    assert client.get_timer() is None


def test_without_reg_id_no_outbound_option_tag_rfc5626_4_2_1() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    request = sent(client)
    assert request.headers.get_all("Supported") == ["path"]
    assert request.headers.get("Contact") == f"<{CONTACT}>"


def test_registrar_request_uri_has_no_user_rfc3261_10_2() -> None:
    with pytest.raises(InvalidRegistrationConfig, match="user part"):
        config(registrar=parse_sip_uri(f"sip:bill@{DOMAIN}"))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"expires": 0}, "expires"),
        ({"reg_id": 1}, "needs instance_id"),
        ({"instance_id": "uuid-no-urn"}, "URN"),
        ({"instance_id": INSTANCE, "reg_id": 0}, "reg_id"),
    ],
)
def test_config_is_validated(kw: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidRegistrationConfig, match=match):
        config(**kw)


# --- 401 / 407 with digest (22.2) ----------------------------------------------------------


def test_401_then_200_with_digest_rfc3261_22_2() -> None:
    server = digest_server()
    client = RegisterClient(config(), ids=IdSource(counting_random()), digest=digest_client())
    client.register(0.0)
    first = sent(client)
    assert "Authorization" not in first.headers
    client.receive_response(challenge(first, server, 0.0), now=0.1)
    second = sent(client)
    # Same Call-ID and From tag, CSeq + 1, a new branch (sections 10.2, 8.1.3.5).
    assert second.call_id == first.call_id
    assert second.from_.tag == first.from_.tag
    assert second.cseq.number == first.cseq.number + 1
    assert second.top_via.branch != first.top_via.branch
    verdict = verify(second, server, 0.2)
    assert isinstance(verdict, Ok) and verdict.username == IMPI
    client.receive_response(ok(second), now=0.3)
    (event,) = events(client)
    assert isinstance(event, Registered)
    assert event.expires == 3600
    assert client.state is RegistrationState.REGISTERED


def test_wrong_password_fails_after_one_retry_rfc3261_22_2() -> None:
    server = digest_server()
    client = RegisterClient(
        config(), ids=fixed_ids(), digest=DigestClient(IMPI, "wrong", cnonce_source=lambda: "c")
    )
    client.register(0.0)
    first = sent(client)
    client.receive_response(challenge(first, server, 0.0), now=0.0)
    second = sent(client)
    assert isinstance(verify(second, server, 0.0), Failed)
    client.receive_response(challenge(second, server, 0.0), now=0.0)
    (event,) = events(client)
    assert isinstance(event, RegistrationFailed)
    assert event.status_code == 401
    assert "check username and password" in event.reason
    assert client.state is RegistrationState.FAILED


def test_stale_nonce_answered_without_failing_rfc7616_3_3() -> None:
    server = digest_server()
    client = RegisterClient(config(), ids=fixed_ids(), digest=digest_client())
    client.register(0.0)
    client.receive_response(challenge(sent(client), server, 0.0), now=0.0)
    second = sent(client)
    client.receive_response(challenge(second, server, 1.0, stale=True), now=1.0)
    third = sent(client)
    assert isinstance(verify(third, server, 1.0), Ok)


def test_407_answered_with_proxy_authorization_rfc3261_22_3() -> None:
    server = digest_server()
    client = RegisterClient(config(), ids=fixed_ids(), digest=digest_client())
    client.register(0.0)
    client.receive_response(challenge(sent(client), server, 0.0, code=407), now=0.0)
    second = sent(client)
    assert "Authorization" not in second.headers
    assert isinstance(verify(second, server, 0.0, "Proxy-Authorization"), Ok)


def test_challenge_without_credentials_configured_fails() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    client.receive_response(challenge(sent(client), digest_server(), 0.0), now=0.0)
    (event,) = events(client)
    assert isinstance(event, RegistrationFailed) and "none are set" in event.reason


def test_malformed_challenge_fails_with_reason() -> None:
    client = RegisterClient(config(), ids=fixed_ids(), digest=digest_client())
    client.register(0.0)
    request = sent(client)
    bad = make_response(request, 401, to_tag="r", extra=[("WWW-Authenticate", 'Digest realm="x')])
    client.receive_response(bad, now=0.0)
    (event,) = events(client)
    assert isinstance(event, RegistrationFailed) and event.status_code == 401


# --- 423 (10.2.8) --------------------------------------------------------------------------


def test_423_retries_with_min_expires_rfc3261_10_2_8() -> None:
    client = RegisterClient(config(expires=60), ids=fixed_ids())
    client.register(0.0)
    first = sent(client)
    client.receive_response(
        make_response(first, 423, to_tag="r", extra=[("Min-Expires", "1800")]), now=0.0
    )
    second = sent(client)
    assert second.headers.get("Expires") == "1800"
    assert second.cseq.number == 2
    client.receive_response(ok(second), now=0.0)
    assert isinstance(events(client)[0], Registered)
    # Refreshes keep the raised lifetime.
    client.handle_timer(now=1200.0)
    assert sent(client).headers.get("Expires") == "1800"


@pytest.mark.parametrize("extra", [[], [("Min-Expires", "30")]])
def test_423_without_usable_min_expires_fails_rfc3261_10_2_8(extra: list[tuple[str, str]]) -> None:
    client = RegisterClient(config(expires=60), ids=fixed_ids())
    client.register(0.0)
    client.receive_response(make_response(sent(client), 423, to_tag="r", extra=extra), now=0.0)
    (event,) = events(client)
    assert isinstance(event, RegistrationFailed) and event.status_code == 423


# --- 200: expiry, Service-Route, P-Associated-URI (10.2.4, RFC 3608, RFC 3455) -------------


def test_service_route_and_associated_uris_learned_rfc3608_rfc3455() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    request = sent(client)
    client.receive_response(
        ok(
            request,
            ("Service-Route", SERVICE_ROUTE),
            ("Service-Route", f"<sip:scscf2.{DOMAIN};lr>"),
            ("P-Associated-URI", f"<{BILL}>"),
            ("P-Associated-URI", "<tel:+15550100001>"),
            ("Require", "outbound"),
        ),
        now=10.0,
    )
    (event,) = events(client)
    assert isinstance(event, Registered)
    assert [str(r) for r in event.service_route] == [SERVICE_ROUTE, f"<sip:scscf2.{DOMAIN};lr>"]
    assert [str(u.uri) for u in event.associated_uris] == [BILL, "tel:+15550100001"]
    assert event.outbound
    assert client.service_route == event.service_route


def test_service_route_replaced_by_refresh_rfc3608_6() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    client.receive_response(ok(sent(client), ("Service-Route", SERVICE_ROUTE)), now=0.0)
    events(client)
    client.register(5.0)
    client.receive_response(ok(sent(client)), now=5.0)
    assert client.service_route == ()


def test_granted_expiry_from_our_contact_rfc3261_10_2_4() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    request = sent(client)
    response = make_response(
        request,
        200,
        to_tag="r",
        extra=[
            ("Contact", "<sip:other@127.0.0.9>;expires=9000"),
            ("Contact", f"<{CONTACT}>;expires=1000"),
            ("Expires", "7000"),
        ],
    )
    client.receive_response(response, now=100.0)
    (event,) = events(client)
    assert isinstance(event, Registered)
    assert event.expires == 1000 and event.expires_at == 1100.0
    assert client.granted_expires == 1000


def test_granted_expiry_falls_back_to_expires_header_rfc3261_10_2_4() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    request = sent(client)
    client.receive_response(make_response(request, 200, extra=[("Expires", "900")]), now=0.0)
    (event,) = events(client)
    assert isinstance(event, Registered) and event.expires == 900


def test_malformed_200_fails_cleanly() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    request = sent(client)
    bad = make_response(request, 200, extra=[("Contact", f"<{CONTACT}>;expires=soon")])
    client.receive_response(bad, now=0.0)
    (event,) = events(client)
    assert isinstance(event, RegistrationFailed) and "malformed" in event.reason


# --- refresh timer -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "interval"), [(3600, 3000.0), (1201, 601.0), (1200, 600.0), (60, 30.0)]
)
def test_refresh_interval_ts24229_5_1_1_4_1(granted: int, interval: float) -> None:
    assert refresh_interval(granted) == interval


def test_refresh_before_expiry_reuses_nonce() -> None:
    server = digest_server(lifetime=7200.0)
    client = RegisterClient(config(), ids=IdSource(counting_random()), digest=digest_client())
    client.register(0.0)
    client.receive_response(challenge(sent(client), server, 0.0), now=0.0)
    second = sent(client)
    assert isinstance(verify(second, server, 0.0), Ok)
    client.receive_response(ok(second), now=0.0)
    events(client)
    assert client.get_timer() == 3000.0
    client.handle_timer(now=2999.0)
    assert events(client) == []
    client.handle_timer(now=3000.0)
    refresh = sent(client)
    assert client.state is RegistrationState.REFRESHING
    assert client.get_timer() is None
    assert refresh.cseq.number == 3 and refresh.call_id == second.call_id
    # The nonce is reused with the next nonce-count (no 401 round trip).
    assert parse_credentials(refresh.headers.get("Authorization") or "").nc == 2
    assert isinstance(verify(refresh, server, 3000.0), Ok)
    client.receive_response(ok(refresh, expires=1800), now=3000.5)
    (event,) = events(client)
    assert isinstance(event, Registered) and event.expires_at == 4800.5
    assert client.get_timer() == 3000.5 + 1200.0


def test_refresh_with_expired_nonce_reauthenticates() -> None:
    server = digest_server(lifetime=60.0)
    client = RegisterClient(config(), ids=fixed_ids(), digest=digest_client())
    client.register(0.0)
    client.receive_response(challenge(sent(client), server, 0.0), now=0.0)
    client.receive_response(ok(sent(client)), now=0.0)
    events(client)
    client.handle_timer(3000.0)
    refresh = sent(client)
    assert verify(refresh, server, 3000.0).__class__.__name__ == "Stale"
    # A server that forgets to say stale=true still gets one fresh answer.
    client.receive_response(challenge(refresh, server, 3000.0), now=3000.0)
    again = sent(client)
    assert isinstance(verify(again, server, 3000.0), Ok)
    client.receive_response(ok(again), now=3000.0)
    assert isinstance(events(client)[0], Registered)


def test_failed_refresh_reports_and_stops_timer() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    client.receive_response(ok(sent(client)), now=0.0)
    events(client)
    client.handle_timer(3000.0)
    refresh = sent(client)
    client.receive_response(
        make_response(refresh, 503, to_tag="r", extra=[("Retry-After", "30 (maintenance)")]),
        now=3000.0,
    )
    (event,) = events(client)
    assert event == RegistrationFailed(503, "Service Unavailable", 30)
    assert client.get_timer() is None and client.state is RegistrationState.FAILED


# --- failures, timeouts, strays ------------------------------------------------------------


def test_403_fails_with_status_and_reason() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    request = sent(client)
    client.receive_response(make_response(request, 403, "Roaming Not Allowed"), now=0.0)
    assert events(client) == [RegistrationFailed(403, "Roaming Not Allowed", None)]


def test_transaction_timeout_is_408_rfc3261_8_1_3_1() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    sent(client)
    client.transaction_timeout(now=32.0)
    (event,) = events(client)
    assert isinstance(event, RegistrationFailed) and event.status_code == 408
    client.transaction_timeout(now=33.0)  # nothing pending: ignored
    assert events(client) == []


def test_stray_and_provisional_responses_ignored() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    request = sent(client)
    old = request.with_headers(request.headers.replaced("CSeq", ["0 REGISTER"]))
    client.receive_response(ok(old), now=0.0)
    client.receive_response(make_response(request, 100), now=0.0)
    assert events(client) == [] and client.state is RegistrationState.REGISTERING
    client.receive_response(ok(request), now=0.0)
    assert isinstance(events(client)[0], Registered)


# --- unregister (10.2.2) -------------------------------------------------------------------


def test_unregister_sends_expires_zero_rfc3261_10_2_2() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    client.receive_response(ok(sent(client), ("Service-Route", SERVICE_ROUTE)), now=0.0)
    events(client)
    client.unregister(now=10.0)
    request = sent(client)
    assert request.headers.get("Expires") == "0"
    assert request.headers.get("Contact") == f"<{CONTACT}>"
    assert request.cseq.number == 2
    states = [client.state]
    client.receive_response(make_response(request, 200, to_tag="r"), now=10.1)
    assert events(client) == [Unregistered()]
    states.append(client.state)
    assert states == [RegistrationState.UNREGISTERING, RegistrationState.UNREGISTERED]
    assert client.get_timer() is None and client.service_route == ()


def test_unregister_waits_for_pending_register_rfc3261_10_2() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.register(0.0)
    first = sent(client)
    client.unregister(now=0.5)
    assert events(client) == []  # no new REGISTER before the final response
    client.receive_response(ok(first), now=1.0)
    evs = events(client)
    assert isinstance(evs[0], Registered)
    assert isinstance(evs[1], SendRequest) and evs[1].request.headers.get("Expires") == "0"


def test_unregister_when_never_registered_is_immediate() -> None:
    client = RegisterClient(config(), ids=fixed_ids())
    client.unregister(0.0)
    assert events(client) == [Unregistered()]


def test_unregister_is_authenticated_too() -> None:
    server = digest_server()
    client = RegisterClient(config(), ids=fixed_ids(), digest=digest_client())
    client.register(0.0)
    client.receive_response(challenge(sent(client), server, 0.0), now=0.0)
    client.receive_response(ok(sent(client)), now=0.0)
    events(client)
    client.unregister(1.0)
    request = sent(client)
    assert isinstance(verify(request, server, 1.0), Ok)


def test_branch_helper_matches_client_branches() -> None:
    client = RegisterClient(config(), ids=fixed_ids(3))
    client.register(0.0)
    assert sent(client).top_via.branch == new_branch(lambda n: b"\x03" * n)


def test_registered_event_fields_are_frozen() -> None:
    event = Registered(1, 1.0, (), (NameAddress(SipUri("x")),), False)
    with pytest.raises(AttributeError):
        event.expires = 2  # type: ignore[misc]
