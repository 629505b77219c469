"""The sipp scenario files and launcher the interop tests build on, driven by sipp itself,
and the Kamailio anchor of the proxy benchmark on a short ramp. Loopback only, seconds each.
Skipped with the reason when sipp (or, for the proxy tests, kamailio) is missing."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from bench.proxy_cps import (
    KAMAILIO,
    KAMAILIO_CFG,
    KAMAILIO_MODULES,
    ProxyLaunch,
    RampSettings,
    RunningProxy,
    measure,
)
from bench.sipp import Endpoint, free_port
from tests.interop.sipp import (
    ALPHA_REALM,
    BILL_IMPI,
    FIXED_NONCE,
    LOOPBACK,
    SippResult,
    digest_registrar_variables,
    run_sipp_client,
    scenario,
    sipp_server,
)

pytestmark = pytest.mark.interop

PASSWORD = "bill-secret"


def kamailio_or_skip() -> None:
    reason = KAMAILIO.missing()
    if reason is not None:
        pytest.skip(reason)


def authorization(password: str, *, realm: str = ALPHA_REALM, nonce: str = FIXED_NONCE) -> str:
    """RFC 2617 section 3.2.2 credentials with qop=auth for REGISTER sip:ALPHA_REALM, nonce=
    before cnonce= (see the scenario's note on sipp 3.6.1)."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    uri, cnonce, nc = f"sip:{ALPHA_REALM}", "0a4f113b", "00000001"
    ha1 = md5(f"{BILL_IMPI}:{realm}:{password}")
    ha2 = md5(f"REGISTER:{uri}")
    response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{BILL_IMPI}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc={nc}'
    )


def register(tmp_path: Path, credentials: str) -> tuple[SippResult, SippResult]:
    with sipp_server(
        tmp_path, scenario("uas_register_digest.xml"),
        variables=digest_registrar_variables(PASSWORD),
    ) as registrar:  # fmt: skip
        client = run_sipp_client(
            tmp_path,
            registrar.run.local,
            scenario("uac_register_digest.xml"),
            service="+15550100001",
            variables=(("domain", ALPHA_REALM), ("authorization", credentials)),
            deadline=8,
        )
        server = registrar.wait(timeout=5)
    return server, client


# --- uas_register_digest.xml ---------------------------------------------------------------------


def test_registrar_challenges_then_accepts_right_credentials_rfc3261_22_4(tmp_path: Path) -> None:
    server, client = register(tmp_path, authorization(PASSWORD))
    assert server.ok, server.describe()
    assert client.ok, client.describe()
    trace = server.messages()
    assert "SIP/2.0 401 Unauthorized" in trace
    assert (
        f'WWW-Authenticate: Digest realm="{ALPHA_REALM}", nonce="{FIXED_NONCE}", '
        'algorithm=MD5, qop="auth"'
    ) in trace
    assert "SIP/2.0 200 OK" in trace and "expires=3600" in trace


def test_registrar_refuses_a_wrong_password_with_403_and_fails(tmp_path: Path) -> None:
    server, client = register(tmp_path, authorization("wrong"))
    assert server.exit_code == 1 and server.stats is not None, server.describe()
    assert server.stats.failed_calls == 1
    assert "SIP/2.0 403 Forbidden" in server.messages()
    assert not client.ok


def test_registrar_refuses_credentials_for_another_realm_rfc2617_3_2_2(tmp_path: Path) -> None:
    server, _ = register(
        tmp_path, authorization(PASSWORD, realm="ims.mnc002.mcc001.3gppnetwork.org")
    )
    assert server.exit_code == 1, server.describe()
    assert "SIP/2.0 403 Forbidden" in server.messages()


def test_registrar_refuses_credentials_that_do_not_echo_the_nonce_rfc2617_3_2_2(
    tmp_path: Path,
) -> None:
    server, _ = register(tmp_path, authorization(PASSWORD, nonce="made-up"))
    assert server.exit_code == 1, server.describe()
    assert "SIP/2.0 403 Forbidden" in server.messages()
    assert "Failed regexp match" in server.errors  # the nonce check named the defect


# --- uas_call.xml --------------------------------------------------------------------------------


def test_called_ua_answers_sipp_builtin_uac_with_100_180_200_sdp(tmp_path: Path) -> None:
    with sipp_server(tmp_path, scenario("uas_call.xml"), max_calls=2) as callee:
        caller = run_sipp_client(tmp_path, callee.run.local, max_calls=2, rate=20)
        result = callee.wait(timeout=8)
    assert caller.ok, caller.describe()
    assert result.ok and result.stats is not None, result.describe()
    assert result.stats.successful_calls == 2
    trace = result.messages()
    for line in ("SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "Content-Type: application/sdp"):
        assert line in trace
    # RFC 3264 section 6: the answer mirrors the offer's one m= line (audio, RTP/AVP 0 here).
    assert "m=audio 40000 RTP/AVP 0" in trace


def test_called_ua_behind_kamailio_copies_record_route_rfc3261_12_1_1(tmp_path: Path) -> None:
    kamailio_or_skip()
    with sipp_server(tmp_path, scenario("uas_call.xml"), max_calls=2) as callee:
        listen = Endpoint(LOOPBACK, free_port())
        launch = ProxyLaunch(listen, callee.run.local, 1, tmp_path / "kamailio")
        with RunningProxy(KAMAILIO, launch) as proxy:
            proxy.wait_ready()
            caller = run_sipp_client(tmp_path, listen, max_calls=2, rate=20)
        result = callee.wait(timeout=8)
    assert caller.ok, caller.describe()
    assert result.ok, result.describe()
    trace = result.messages()
    # The proxy record-routed the INVITE (RFC 3261 section 16.6 step 4) and the callee's 2xx
    # carries that Record-Route back (section 12.1.1).
    record_route = f"Record-Route: <sip:{listen};lr>"
    assert trace.count(record_route) >= 2 * 3  # INVITE in, 180 and 200 out, per call


# --- the proxy benchmark's Kamailio anchor -------------------------------------------------------


def test_kamailio_config_passes_kamailios_own_check_with_the_bench_defines(tmp_path: Path) -> None:
    kamailio_or_skip()
    launch = ProxyLaunch(Endpoint(LOOPBACK, 25060), Endpoint(LOOPBACK, 25070), 2, tmp_path)
    argv = KAMAILIO.command(launch)
    done = subprocess.run([*argv, "-c"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "udp: 127.0.0.1 [127.0.0.1]:25060" in done.stdout + done.stderr
    assert KAMAILIO_CFG.is_file() and KAMAILIO_MODULES.is_dir()


def test_short_ramp_through_kamailio_is_clean(tmp_path: Path) -> None:
    kamailio_or_skip()
    settings = RampSettings(start_cps=50, max_cps=100, step_seconds=1.0, refine_steps=0)
    result = measure(KAMAILIO, 1, settings, tmp_path)
    assert result.skipped is None
    assert [verdict for _, verdict in result.steps] == ["clean", "clean"]
    assert result.best is not None and result.best.successful == 100
    assert result.best.proxy_cpu_seconds > 0  # the proxy's workers were accounted
    assert "ceiling" in result.stop_reason
