"""Two operators calling across over mutual TLS (docs/operator-guide.md, "TLS between
operators"; RFC 3261 section 26.2, RFC 3263 section 4.1 SIPS+D2T, RFC 5922).

Alpha's roles listen on 127.0.16.2, Beta's on 127.0.16.3, the embedded DNS server and the UEs
on 127.0.16.1 (the two operators need distinct hosts: an operator counts requests from its own
hosts as internal). Certificates are made with the `openssl` command line in tmp_path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.sipp import free_udp_tcp_port
from ims.config import BorderConfig, Role, load_config
from ims.dns import worlds
from ims.dns.server import start_server
from ims.operator import BorderTls, Operator, OperatorError
from ims.sip.headers import NameAddress
from ims.sip.message import Response, parse_message, serialize
from ims.sip.transaction import TimerSettings
from ims.sip.transport import TlsTransport
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import Call, CallFailed, IncomingCall, UserAgent
from ims.store import new_subscriber, open_store
from ims.trace import read_trace
from tests.test_sip_tls import OPENSSL, Cert, make_cert

FAST = TimerSettings(t1=0.02, t2=0.16, t4=0.2)
ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
BETA = "ims.mnc002.mcc001.3gppnetwork.org"
UE_HOST = "127.0.16.1"
HOSTS = {"alpha": "127.0.16.2", "beta": "127.0.16.3"}
DOMAINS = {"alpha": ALPHA, "beta": BETA}
PLMNS = {"alpha": ("Alpha", "001-01"), "beta": ("Beta", "001-02")}
PEOPLE = {"bill": ("alpha", "+15550100001"), "dave": ("beta", "+15550100002")}
HELP = [("Require", "ueconnect"), ("Supported", "ueconnect")]
WRONG = "SHA-256 " + ":".join(["AB"] * 32)


@dataclass
class Ports:
    pcscf: int
    scscf: int
    border: int
    tls: int


def _config(op: str, ports: Ports, dns_port: int, certs: dict[str, Cert],
            peer_keys: str, border_tls: bool = True) -> str:
    name, plmn = PLMNS[op]
    host = HOSTS[op]
    other = "beta" if op == "alpha" else "alpha"
    listen = f'"udp:{host}:{ports.border}"'
    own = ""
    if border_tls:
        listen += f', "tls:{host}:{ports.tls}"'
        own = (f'tls_certificate = "{certs[op].certificate}"\n'
               f'tls_private_key = "{certs[op].key}"\n')
    return f"""
[operator]
name = "{name}"
plmn = "{plmn}"
mnc_digits = 2

[store]
backend = "sqlite"
path = "{op}.sqlite"

[dns]
server = "127.0.16.1:{dns_port}"
enum_suffix = "e164.arpa"
timeout = 1.0

[pcscf]
listen = ["udp:{host}:{ports.pcscf}"]
keepalive = 30

[scscf]
listen = ["udp:{host}:{ports.scscf}"]
min_expires = 60

[border]
listen = [{listen}]
{own}
[[border.peers]]
name = "{PLMNS[other][0]}"
plmn = "{PLMNS[other][1]}"
admit_from = ["{HOSTS[other]}/32"]
{peer_keys}

[trace]
path = "{op}-trace.jsonl"

[log]
level = "info"
"""


def _keys(cert: Cert, *, fingerprint: str | None = None, ca: bool = True) -> str:
    lines = [f'tls_fingerprint = "{fingerprint or cert.fingerprint}"']
    if ca:
        lines.append(f'tls_ca = "{cert.certificate}"')  # self-signed: its own CA
    return "\n".join(lines) + "\n"


@dataclass
class World:
    ops: dict[str, Operator]
    ues: dict[str, UserAgent]


@asynccontextmanager
async def world(tmp_path: Path, *, alpha_keys: str | None = None, beta_keys: str | None = None,
                alpha_tls: bool = True) -> AsyncIterator[World]:
    if OPENSSL is None:
        pytest.skip("the openssl command line is missing (Debian package openssl)")
    certs = {op: make_cert(tmp_path, op, f"DNS:{DOMAINS[op]}") for op in DOMAINS}
    ports = {op: Ports(*(free_udp_tcp_port(HOSTS[op]) for _ in range(4))) for op in HOSTS}
    zone_ops = [
        worlds.Operator(
            PLMNS[op][0], "001", PLMNS[op][1][-2:], DOMAINS[op],
            worlds.Role("ns1", "127.0.16.1", "::1", 53),
            (worlds.Role("pcscf", HOSTS[op], "::1", ports[op].pcscf),
             worlds.Role("scscf", HOSTS[op], "::1", ports[op].scscf)),
            (worlds.Border("border1", HOSTS[op], "::1", ports[op].border, 10, 60,
                           ports[op].tls),),
        )
        for op in HOSTS
    ]
    zones = tmp_path / "zones"
    zones.mkdir()
    for file_name, text in worlds.render_world(worlds.World("tls", tuple(zone_ops))).items():
        (zones / file_name).write_text(text, encoding="ascii")
    keys = {"alpha": alpha_keys if alpha_keys is not None else _keys(certs["beta"]),
            "beta": beta_keys if beta_keys is not None else _keys(certs["alpha"])}
    async with AsyncExitStack() as stack:
        dns = await stack.enter_async_context(await start_server(zones, "127.0.16.1", 0))
        ops: dict[str, Operator] = {}
        for op in HOSTS:
            path = tmp_path / f"{op}.toml"
            path.write_text(_config(op, ports[op], dns.port, certs, keys[op],
                                    border_tls=alpha_tls or op != "alpha"))
            config = load_config(path)
            store = stack.enter_context(open_store(config.store))
            for name, (home, number) in PEOPLE.items():
                if home == op:
                    store.subscribers.add(new_subscriber(
                        f"{name}@{DOMAINS[op]}", [f"sip:{number}@{DOMAINS[op]}"],
                        f"secret-{name}", config.realm, now=time.time()))
            ops[op] = await stack.enter_async_context(
                Operator.start(config, store=store, timers=FAST))
        ues: dict[str, UserAgent] = {}
        for name, (op, number) in PEOPLE.items():
            ua = UserAgent(SipUri(host=DOMAINS[op], user=number), timers=FAST,
                           outbound_proxy=ops[op].address(Role.PCSCF))
            await ua.start(UE_HOST)
            stack.push_async_callback(ua.close)
            await ua.register(SipUri(host=DOMAINS[op]), username=f"{name}@{DOMAINS[op]}",
                              password=f"secret-{name}")
            ues[name] = ua
        yield World(ops, ues)


def _tls_endpoint(operator: Operator) -> TlsTransport:
    for element in operator.elements_of(Role.BORDER):
        for transport in element.stack.transports:
            if isinstance(transport, TlsTransport):
                return transport
    raise AssertionError("the border serves no TLS endpoint")


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


DAVE = f"sip:+15550100002@{BETA};user=phone"


def test_bill_calls_dave_over_mutual_tls_between_borders_rfc3263_4_1_sips(
        tmp_path: Path) -> None:
    """Each border pins the other (tls_fingerprint) and checks its domain against its
    certificate (tls_ca, RFC 5922); the INVITE crosses on TLS (SIPS+D2T / _sips._tcp)."""
    async def scenario() -> None:
        async with world(tmp_path) as w:
            task = asyncio.create_task(w.ues["bill"].call(parse_uri(DAVE), extra=HELP))
            incoming: IncomingCall = await asyncio.wait_for(w.ues["dave"].incoming.get(), 10)
            vias = incoming.request.headers.get_all("Via")
            # Alpha's border hop was TLS (RFC 3261 section 18.1.1: Via names the transport).
            assert any(v.startswith("SIP/2.0/TLS 127.0.16.2") for v in vias), vias
            answered = await incoming.accept()
            call = await task
            alpha_tls, beta_tls = _tls_endpoint(w.ops["alpha"]), _tls_endpoint(w.ops["beta"])
            assert alpha_tls.stats.sent >= 1 and beta_tls.stats.received >= 1
            assert beta_tls.connection_count == 1
            await asyncio.wait_for(answered.acked.wait(), 5)
            response = await call.bye()
            assert response.status_code == 200

    run(scenario())


def _beta_entry(call: Call) -> NameAddress:
    """Beta's border entry in Bill's route set: the one the peer sees, with the token."""
    return next(r for r in call.dialog.route_set
                if isinstance(r.uri, SipUri) and r.uri.host == HOSTS["beta"] and r.uri.user)


def test_ack_and_bye_cross_over_tls_too_rfc3261_16_6_item_4_rfc5658(tmp_path: Path) -> None:
    """Both borders record-route towards the peer with `sip:...;transport=tls` at their tls:
    listener (RFC 3261 section 16.6 item 4: reachable over the transport the next request
    uses; RFC 5630: not sips:, the leg to the UE is not TLS), and with their plain URI towards
    their own side (double Record-Route, RFC 5658): the ACK and the BYEs of either
    UE cross between the borders on TLS, not UDP."""
    calls: tuple[str, str] = ("", "")

    async def scenario() -> None:
        nonlocal calls
        async with world(tmp_path) as w:
            task = asyncio.create_task(w.ues["bill"].call(parse_uri(DAVE), extra=HELP))
            incoming: IncomingCall = await asyncio.wait_for(w.ues["dave"].incoming.get(), 10)
            # What Dave's side learns about Alpha: its tls: entry (with the token) above its
            # plain one, and Beta's plain entry above Beta's tls: one.
            rr = incoming.request.name_addrs("Record-Route")
            alpha = [r.uri for r in rr if isinstance(r.uri, SipUri)
                     and r.uri.host == HOSTS["alpha"]]
            assert len(alpha) == 2 and alpha[0].user and alpha[0].param("transport") == "tls"
            assert alpha[0].scheme == "sip" and alpha[1].param("transport") is None
            answered = await incoming.accept()
            call = await task
            beta_entry = _beta_entry(call).uri
            assert isinstance(beta_entry, SipUri)
            assert beta_entry.scheme == "sip" and beta_entry.param("transport") == "tls"
            assert beta_entry.port == _tls_endpoint(w.ops["beta"]).local.port
            await asyncio.wait_for(answered.acked.wait(), 5)
            response = await call.bye()
            assert response.status_code == 200
            # A second call, Dave hangs up: his BYE goes Beta to Alpha on TLS as well.
            task = asyncio.create_task(w.ues["bill"].call(parse_uri(DAVE), extra=HELP))
            incoming = await asyncio.wait_for(w.ues["dave"].incoming.get(), 10)
            answered = await incoming.accept()
            second = await task
            await asyncio.wait_for(answered.acked.wait(), 5)
            response = await answered.bye()
            assert response.status_code == 200
            await asyncio.wait_for(second.ended.wait(), 5)
            calls = (call.dialog.id.call_id, second.dialog.id.call_id)

    run(scenario())
    # What each border received from the other, as its trace shows it (source transport).
    received = {
        op: [(e.call_id, e.method, e.source.split(":")[0])
             for e in read_trace(tmp_path / f"{op}-trace.jsonl")
             if e.role == "border" and e.direction == "in" and e.method is not None
             and e.source.split(":")[1] == HOSTS["beta" if op == "alpha" else "alpha"]]
        for op in HOSTS
    }
    first, second_call = calls
    for method in ("INVITE", "ACK", "BYE"):
        assert (first, method, "tls") in received["beta"], (method, received["beta"])
    assert (second_call, "BYE", "tls") in received["alpha"], received["alpha"]
    assert all(transport == "tls" for _, _, transport in received["alpha"] + received["beta"])


def test_in_dialog_bye_over_udp_for_a_tls_dialog_is_refused_403(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A BYE with Beta's route token of a dialog set up over TLS, sent over UDP from Alpha's
    own address (which Beta admits): Beta answers 403 naming why, Dave's call stays up."""
    async def scenario() -> None:
        async with world(tmp_path) as w:
            task = asyncio.create_task(w.ues["bill"].call(parse_uri(DAVE), extra=HELP))
            incoming: IncomingCall = await asyncio.wait_for(w.ues["dave"].incoming.get(), 10)
            answered = await incoming.accept()
            call = await task
            await asyncio.wait_for(answered.acked.wait(), 5)
            _, bye = call.dialog.create_bye(ids=w.ues["bill"].ids)
            loop = asyncio.get_running_loop()
            received: asyncio.Queue[bytes] = asyncio.Queue()

            class Catch(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                    received.put_nowait(data)

            transport, _ = await loop.create_datagram_endpoint(
                Catch, local_addr=(HOSTS["alpha"], 0))
            try:
                port = transport.get_extra_info("sockname")[1]
                headers = bye.headers.replaced("Route", [f"<{_beta_entry(call).uri}>"])
                headers = headers.replaced(
                    "Via", [f"SIP/2.0/UDP {HOSTS['alpha']}:{port};branch=z9hG4bK-udp-bye"])
                border = w.ops["beta"].address(Role.BORDER)
                assert border.transport == "UDP"
                transport.sendto(serialize(bye.with_headers(headers)), (border.host, border.port))
                answer = parse_message(await asyncio.wait_for(received.get(), 5))
            finally:
                transport.close()
            assert isinstance(answer, Response)
            assert answer.status_code == 403
            assert "TLS" in answer.reason and "UDP" in answer.reason
            assert not answered.ended.is_set()
            response = await call.bye()  # the real one, over TLS, still ends the call
            assert response.status_code == 200

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert any("set up over TLS" in r.getMessage() for r in caplog.records)


def test_wrong_fingerprint_refused_caller_gets_503(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A certificate mismatch: logged naming the peer and the reason, the request fails over
    and ends in 503 with Retry-After, nothing reaches Dave."""
    async def scenario() -> None:
        async with world(tmp_path, alpha_keys=f'tls_fingerprint = "{WRONG}"\n') as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri(DAVE), extra=HELP)
            assert failed.value.status_code == 503
            assert failed.value.response.headers.get("Retry-After") is not None
            assert w.ues["dave"].incoming.empty()
            assert _tls_endpoint(w.ops["beta"]).stats.received == 0

    with caplog.at_level(logging.WARNING):
        run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "TLS with peer Beta" in r.getMessage()]
    assert refusals and "does not match the pinned " + WRONG in refusals[0]


def test_peer_certificate_naming_another_domain_refused_rfc5922_7_2(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Beta admits Alpha by address, but Alpha's connection shows a certificate for a domain
    that is not Alpha's: Beta cuts it off (admission by certificate on top of the address)."""
    async def scenario() -> None:
        other = make_cert(tmp_path, "other", "DNS:ims.mnc009.mcc001.3gppnetwork.org")
        beta_keys = f'tls_ca = "{other.certificate}"\n'
        async with world(tmp_path, beta_keys=beta_keys) as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri(DAVE), extra=HELP)
            assert failed.value.status_code == 503
            assert w.ues["dave"].incoming.empty()

    with caplog.at_level(logging.WARNING):
        run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    # Alpha's certificate does not chain to the tls_ca Beta holds for Alpha: Beta refuses
    # the handshake and says who; Alpha's side reports the failed handshake for peer Beta.
    assert any("TLS with peer Alpha" in m and "handshake failed" in m for m in messages)
    assert any("TLS with peer Beta" in m for m in messages)


def test_tls_peer_without_a_tls_listener_is_not_sent_over_udp(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A peer with TLS keys is reached over TLS only: with no tls: listener on our border the
    request ends in 503 instead of leaving over UDP, and the start warns about it."""
    async def scenario() -> None:
        async with world(tmp_path, alpha_tls=False) as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri(DAVE), extra=HELP)
            assert failed.value.status_code == 503
            assert w.ues["dave"].incoming.empty()

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert any("reached over TLS only" in r.getMessage() for r in caplog.records)


def test_unloadable_certificate_is_an_operator_error(tmp_path: Path) -> None:
    """A tls_certificate OpenSSL cannot read fails the start with the file named."""
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    config = BorderConfig((), (), broken, broken, None)
    with pytest.raises(OperatorError, match=r"\[border\] TLS keys: tls_certificate .*broken"):
        BorderTls(config, "alpha.toml")


def test_openssl_client_with_a_valid_certificate_from_an_unadmitted_address_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`openssl s_client` as a real TLS peer holding Alpha's certificate, but connecting from
    an address Beta does not admit for Alpha: the certificate alone does not let it in."""
    async def scenario() -> None:
        async with world(tmp_path) as w:
            beta_tls = _tls_endpoint(w.ops["beta"])
            assert OPENSSL is not None
            alpha_cert = tmp_path / "alpha.pem"
            process = await asyncio.create_subprocess_exec(
                OPENSSL, "s_client", "-connect", f"{HOSTS['beta']}:{beta_tls.local.port}",
                "-quiet", "-cert", str(alpha_cert), "-key", str(tmp_path / "alpha.key"),
                "-CAfile", str(tmp_path / "beta.pem"),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            options = (f"OPTIONS sip:{BETA} SIP/2.0\r\nVia: SIP/2.0/TLS {UE_HOST}:5061;"
                       "branch=z9hG4bK-x1\r\nMax-Forwards: 70\r\nFrom: <sip:x@invalid>;tag=1\r\n"
                       f"To: <sip:{BETA}>\r\nCall-ID: tls-x1\r\nCSeq: 1 OPTIONS\r\n"
                       "Content-Length: 0\r\n\r\n")
            try:
                out, _ = await asyncio.wait_for(process.communicate(options.encode()), 10)
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
            assert b"SIP/2.0" not in out
            assert beta_tls.stats.received == 0 and beta_tls.connection_count == 0

    with caplog.at_level(logging.WARNING):
        run(scenario())
    assert any("(not a peer)" in r.getMessage() and "not a peer operator" in r.getMessage()
               for r in caplog.records)
