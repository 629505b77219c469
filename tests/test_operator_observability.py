"""Trace and metrics wired into the operators: two operators on loopback with [trace] (one
shared file) and [metrics]; Bill (Alpha) calls Dave (Beta) and hangs up; the ladder drawn by
`ueconnect trace` and the /metrics endpoints show what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ims.config import Role, TraceConfig
from ims.operator import Operator, OperatorError
from ims.registrar import RegisteredContacts
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import CallFailed, IncomingCall, UserAgent
from ims.store import Binding, Store
from ims.trace import build_ladder, calls, read_trace
from tests.test_operator_flows import (
    DOMAINS,
    FAST,
    NETS,
    PASSWORD,
    PEOPLE,
    Plan,
    _config_text,
    _free_port,
    _impi,
    start_operators,
)

MAIN = Path(__file__).resolve().parent.parent
BILL, DAVE = "+15550100001", "+15550100002"


@dataclass
class World:
    alpha: Operator
    beta: Operator
    stores: dict[str, Store]
    ues: dict[str, UserAgent]
    trace: Path


@asynccontextmanager
async def observed_world(
    tmp_path: Path, *, register: tuple[str, ...] = ("bill", "dave"), metrics: bool = True
) -> AsyncIterator[World]:
    """Alpha and Beta as in test_operator_flows, both tracing to one file (and with
    [metrics] on a free loopback port each); Bill, Carol, Dave and Eve as our UserAgents."""
    trace = tmp_path / "trace.jsonl"
    extra = {}
    for n, net in NETS.items():
        extra[n] = f'\n[trace]\npath = "{trace}"\n'
        if metrics:
            port = _free_port(f"127.0.{net}.1")
            extra[n] += f'\n[metrics]\nlisten = "127.0.{net}.1:{port}"\n'
    async with AsyncExitStack() as stack:
        ops, stores = await start_operators(stack, tmp_path, extra=extra)
        ues: dict[str, UserAgent] = {}
        for name, (op, number) in PEOPLE.items():
            ua = UserAgent(SipUri(host=DOMAINS[op], user=number), timers=FAST,
                           outbound_proxy=ops[op].address(Role.PCSCF))
            await ua.start("127.0.0.1")
            stack.push_async_callback(ua.close)
            ues[name] = ua
        for name in register:
            await ues[name].register(SipUri(host=DOMAINS[PEOPLE[name][0]]),
                                     username=_impi(name), password=PASSWORD.format(name))
        yield World(ops["alpha"], ops["beta"], stores, ues, trace)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def scrape(operator: Operator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The operator's /metrics over HTTP: (sample name, sorted labels) -> value."""
    server = operator.metrics_server
    assert server is not None
    with urllib.request.urlopen(server.url, timeout=5) as response:
        text = response.read().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def ueconnect(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ims", *args], cwd=MAIN, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def bill_calls_dave(w: World) -> str:
    """Bill calls Dave by number, Dave answers, Bill hangs up; the Call-ID."""
    task = asyncio.create_task(w.ues["bill"].call(parse_uri(f"tel:{DAVE}")))
    incoming: IncomingCall = await asyncio.wait_for(w.ues["dave"].incoming.get(), 5)
    answered = await incoming.accept()
    call = await task
    await asyncio.wait_for(answered.acked.wait(), 5)
    assert (await call.bye()).status_code == 200
    await asyncio.wait_for(answered.ended.wait(), 5)
    await asyncio.sleep(0.1)  # the last 200 (BYE) reaches every recorder
    return incoming.request.call_id


COLUMNS = (f"UE {BILL}", "Alpha P-CSCF", "Alpha S-CSCF", "Alpha Border", "Beta Border",
           "Beta S-CSCF", "Beta P-CSCF", f"UE {DAVE}")


def test_traced_call_across_operators_draws_every_hop(tmp_path: Path) -> None:
    metrics: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}

    async def scenario() -> None:
        async with observed_world(tmp_path) as w:
            call_id = await bill_calls_dave(w)
            metrics["alpha"] = await asyncio.to_thread(scrape, w.alpha)
            metrics["beta"] = await asyncio.to_thread(scrape, w.beta)
            metrics["call_id"] = {(call_id, ()): 0.0}

    run(scenario())
    (call_id,) = (key[0] for key in metrics["call_id"])
    trace = tmp_path / "trace.jsonl"

    listing = ueconnect("trace", str(trace), "--list")
    (line,) = (x for x in listing.splitlines() if call_id in x)
    assert " INVITE " in line and f"tel:{DAVE}" in line

    # The ladder as the CLI draws it: the eight columns in the order the INVITE meets them.
    drawing = ueconnect("trace", str(trace), "--call-id", call_id, "--width", "240")
    header = drawing.splitlines()[3]
    positions = [header.index(name) for name in COLUMNS]
    assert positions == sorted(positions), header
    labels = [x.replace("|", " ").split()[0] for x in drawing.splitlines()[5::2]]
    assert labels[0] == "INVITE" and "BYE" in labels
    assert labels.index("ACK") < labels.index("BYE")

    # Each request walks the whole chain hop by hop, in order.
    ladder = build_ladder(read_trace(trace), call_id)
    assert ladder.participants == COLUMNS
    chain = [(i, i + 1) for i in range(len(COLUMNS) - 1)]
    for method in ("INVITE", "ACK", "BYE"):
        hops = [(a.source, a.destination) for a in ladder.arrows
                if a.label.startswith(method + " ") and not a.retransmission]
        assert hops == chain, (method, hops)
    methods = [a.label.split()[0] for a in ladder.arrows]
    assert methods[0] == "INVITE"
    assert methods.index("ACK") > max(i for i, m in enumerate(methods) if m == "INVITE")
    assert methods.index("BYE") > max(i for i, m in enumerate(methods) if m == "ACK")
    assert ladder.arrows[-1].label == "200 OK" and ladder.arrows[-1].destination == 0

    alpha, beta = metrics["alpha"], metrics["beta"]

    def invites(direction: str, role: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("ueconnect_sip_requests_total",
                (("direction", direction), ("method", "INVITE"), ("role", role)))

    # One INVITE through each element, no retransmission on a quiet loopback.
    for m in (alpha, beta):
        for role in ("pcscf", "scscf", "border"):
            assert m[invites("in", role)] == 1.0 and m[invites("out", role)] == 1.0, role
    for m in (alpha, beta):
        assert m[("ueconnect_registrations", ())] == 1.0  # Bill at Alpha, Dave at Beta
        assert m[("ueconnect_registration_attempts_total", (("outcome", "challenged"),))] == 1
        assert m[("ueconnect_registration_attempts_total", (("outcome", "accepted"),))] == 1
        assert m[("ueconnect_sessions_started_total", ())] == 1.0
        assert m[("ueconnect_sessions_active", ())] == 0.0
    # Alpha's border found Beta: ENUM for the tel: URI, then RFC 3263 for Beta's domain.
    assert alpha[("ueconnect_dns_lookups_total", (("kind", "enum"),))] == 1.0
    assert alpha[("ueconnect_dns_lookups_total", (("kind", "rfc3263"),))] == 1.0
    assert alpha[("ueconnect_sip_request_duration_seconds_count",
                  (("method", "INVITE"), ("role", "pcscf"), ("side", "server")))] == 1.0


def test_unknown_number_and_intruder_are_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with observed_world(tmp_path, register=("bill",)) as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri("tel:+15550109999"))
            assert failed.value.status_code == 404
            intruder = UserAgent(SipUri(host="127.0.0.1", user="mallory"), timers=FAST,
                                 outbound_proxy=w.beta.address(Role.BORDER))
            await intruder.start("127.0.0.1")
            try:
                with pytest.raises(CallFailed) as refused:
                    await intruder.call(parse_uri(f"sip:{DAVE}@{DOMAINS['beta']}"))
                assert refused.value.status_code == 403
            finally:
                await intruder.close()
            alpha = await asyncio.to_thread(scrape, w.alpha)
            beta = await asyncio.to_thread(scrape, w.beta)
            assert alpha[("ueconnect_dns_lookup_failures_total", (("kind", "enum"),))] == 1.0
            assert beta[("ueconnect_border_refusals_total", (("reason", "not-a-peer"),))] == 1.0
            assert alpha[("ueconnect_sessions_started_total", ())] == 0.0

    run(scenario())


def test_trace_only_operator_serves_no_metrics(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with observed_world(tmp_path, register=("bill",), metrics=False) as w:
            assert w.alpha.metrics is None and w.alpha.metrics_server is None
            assert {r.value for r in w.alpha.recorders} == {"pcscf", "scscf", "border"}
        # Closed on exit: every recorder's file descriptor released.
        assert not w.alpha.recorders

    run(scenario())
    entries = read_trace(tmp_path / "trace.jsonl")
    (register,) = (c for c in calls(entries) if c.method == "REGISTER")
    assert register.participants == (f"UE {BILL}", "Alpha P-CSCF", "Alpha S-CSCF")


def test_metrics_address_in_use_is_an_operator_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with observed_world(tmp_path, register=()) as w:
            config = w.alpha.config
            assert w.alpha.metrics_server is not None
            # Alpha's [metrics] port is taken (by Alpha): a second Alpha cannot serve there.
            with pytest.raises(OperatorError, match=r"\[metrics\] cannot serve metrics"):
                async with Operator.start(config, store=w.stores["alpha"], roles=()):
                    pass

    run(scenario())


def test_unwritable_trace_path_is_an_operator_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with observed_world(tmp_path, register=(), metrics=False) as w:
            config = dataclasses.replace(
                w.alpha.config, trace=TraceConfig(tmp_path / "missing" / "t.jsonl"))
            with pytest.raises(OperatorError, match=r"\[trace\] trace file .*missing"):
                async with Operator.start(config, store=w.stores["alpha"],
                                          roles=(Role.SCSCF,)):
                    pass

    run(scenario())


def _binding(aor: str, contact: str, expires_at: float) -> Binding:
    return Binding(aor=aor, contact=contact, expires_at=expires_at, call_id="c", cseq=1,
                   q=None, path=(), instance_id=None, reg_id=None, registered_via=None,
                   supports=())


def test_registered_contacts_follow_refresh_removal_and_expiry() -> None:
    contacts = RegisteredContacts()
    now = time.time()
    bill, carol = "sip:+15550100001@a", "sip:+15550100003@a"
    contacts.update("bill", [_binding(bill, "sip:b1@x", now + 10),
                             _binding(bill, "sip:b2@x", now + 20)])
    contacts.update("carol", [_binding(carol, "sip:c@x", now + 10)])
    assert contacts.count(now) == 3
    # A refresh moves the expiry: the old due time no longer removes it.
    contacts.update("carol", [_binding(carol, "sip:c@x", now + 100)])
    assert contacts.count(now + 15) == 2  # Bill's b1 expired, Carol refreshed
    # RFC 3261 section 10.3 step 8: the 200 lists every binding; one left out is gone.
    contacts.update("bill", [])
    assert contacts.count(now + 15) == 1
    assert contacts.count(now + 101) == 0


def test_mno_cli_prints_where_each_role_listens_and_stops_on_sigint(tmp_path: Path) -> None:
    plan = Plan(1, *(_free_port(f"127.0.1.{i}") for i in (1, 2, 3)))
    metrics_port = _free_port("127.0.1.1")
    config = tmp_path / "alpha.toml"
    config.write_text(
        _config_text("Alpha", "001-01", plan, 53530, "")
        + f'\n[metrics]\nlisten = "127.0.1.1:{metrics_port}"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "ims", "mno", "--config", str(config)], cwd=MAIN,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(20, process.kill)  # readline() must not wait forever
    watchdog.start()
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(8)]  # the summary's 8 lines
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert process.returncode == 0, err
    text = "".join(lines) + out
    assert "Alpha (PLMN 001-01, ims.mnc001.mcc001.3gppnetwork.org) running" in lines[0]
    assert f"P-CSCF   sip:127.0.1.1:{plan.pcscf}  (udp:127.0.1.1:{plan.pcscf}, " \
           f"tcp:127.0.1.1:{plan.pcscf})" in text
    assert f"S-CSCF   sip:127.0.1.2:{plan.scscf}" in text
    assert f"border   sip:127.0.1.3:{plan.border}" in text
    assert f"metrics  http://127.0.1.1:{metrics_port}/metrics" in text
    assert "trace    off (no [trace])" in text
    assert text.rstrip().endswith("ueconnect mno: Alpha stopped")
