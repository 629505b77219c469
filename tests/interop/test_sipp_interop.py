"""Our SIP core against sipp, a real third-party peer (issue 2, item 4):

- sipp's built-in uac scenario through our stateful proxy to sipp's uas: 500 calls, 0 failed,
  0 unexpected messages (the proxy runs as `ueconnect sip proxy`, a separate process);
- our user agent registers with HTTP digest at sipp acting as registrar, then completes a
  call against sipp acting as callee (scenario files in tests/interop/scenarios/).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.sipp import Endpoint, free_port
from ims.sip.address import Address
from ims.sip.transaction import TimerSettings
from ims.sip.uri import SipUri, TelUri
from ims.sip.useragent import UserAgent
from tests.interop.sipp import (
    ALPHA_REALM,
    BILL_IMPI,
    digest_registrar_variables,
    run_sipp_client,
    scenario,
    sipp_or_skip,
    sipp_server,
)

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]


def _wait_udp_listening(port: int, within: float = 10.0) -> None:
    """Wait until something is bound to 127.0.0.1:port/udp (a bind probe fails)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return  # taken: the proxy is up
        finally:
            probe.close()
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}/udp after {within} s")


def test_sipp_uac_through_our_proxy_to_sipp_uas_500_calls(tmp_path: Path) -> None:
    sipp_or_skip()
    with sipp_server(tmp_path / "uas", "uas", max_calls=None, deadline=60.0) as uas:
        proxy_port = free_port("127.0.0.1")
        proxy = subprocess.Popen(
            [
                sys.executable, "-m", "ims", "sip", "proxy",
                "--listen", f"127.0.0.1:{proxy_port}",
                "--next-hop", f"{uas.run.local.host}:{uas.run.local.port}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            _wait_udp_listening(proxy_port)
            result = run_sipp_client(
                tmp_path / "uac",
                Endpoint("127.0.0.1", proxy_port),
                "uac",
                max_calls=500,
                rate=100,
                deadline=45.0,
                trace_messages=False,
            )
        finally:
            proxy.terminate()
            _out, err = proxy.communicate(timeout=10)
    assert result.stats is not None, result.describe()
    assert result.stats.successful_calls == 500, result.describe()
    assert result.stats.failed_calls == 0, result.describe()
    assert result.stats.unexpected_messages == 0, result.describe()
    assert "Traceback" not in err, err


def test_our_ua_registers_with_digest_then_calls_sipp(tmp_path: Path) -> None:
    sipp_or_skip()
    password = "bill-secret-1"

    async def scenario_run(registrar: Endpoint, callee: Endpoint) -> None:
        bill = UserAgent(
            SipUri(host=ALPHA_REALM, user="+15550100001"),
            display_name="Bill",
            timers=TimerSettings(t1=0.1, t2=1.0, t4=1.0),
        )
        await bill.start()
        try:
            bill.outbound_proxy = Address("UDP", registrar.host, registrar.port)
            registered = await bill.register(
                SipUri(host=ALPHA_REALM), username=BILL_IMPI, password=password, expires=3600
            )
            assert registered.expires == 3600
            bill.outbound_proxy = None
            call = await bill.call(
                SipUri(host=callee.host, user="service", port=callee.port),
                to=TelUri("+15550100002"),
                body=b"v=0\r\no=bill 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
                b"t=0 0\r\nm=application 40002 UDP 0\r\n",
                content_type="application/sdp",
            )
            assert b"m=application" in call.remote_body
            await asyncio.sleep(0.2)
            bye = await call.bye()
            assert bye.status_code == 200
        finally:
            await bill.close()

    variables = digest_registrar_variables(password)
    with (
        sipp_server(tmp_path / "registrar", scenario("uas_register_digest.xml"), variables=variables) as registrar,
        sipp_server(tmp_path / "callee", scenario("uas_call.xml")) as callee,
    ):
        asyncio.run(asyncio.wait_for(scenario_run(registrar.run.local, callee.run.local), 30))
        registrar_result = registrar.wait(timeout=20)
        callee_result = callee.wait(timeout=20)
    assert registrar_result.ok, registrar_result.describe()
    assert callee_result.ok, callee_result.describe()
    assert callee_result.stats is not None and callee_result.stats.successful_calls == 1
