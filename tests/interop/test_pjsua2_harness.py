"""The pjsua2 UE harness against sipp on loopback, plus its own pure parts.

Each interop test starts sipp (Debian sip-tester) and the harness as subprocesses bound to
127.0.0.1, with every run bounded by a timeout of a few seconds.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.pjsua2_runner import (
    HARNESS,
    UeArgs,
    free_ports,
    pjsua2_skip_reason,
    run_ue,
    start_ue,
)
from tests.interop.pjsua2_ue import (
    EXIT_TIMEOUT,
    EXIT_USAGE,
    parse_options,
    split_message_head,
)

SCENARIOS = Path(__file__).with_name("scenarios")
SIPP_TIMEOUT = 8  # seconds; sipp gives up (and fails) past this


def _need_pjsua2() -> None:
    reason = pjsua2_skip_reason()
    if reason is not None:
        pytest.skip(reason)


def _need_sipp() -> str:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.skip("sipp not on PATH (Debian package sip-tester provides /usr/bin/sipp)")
    return sipp


# --- a minimal sipp launcher (loopback only, one call, bounded) --------------------------------


@dataclass(frozen=True)
class SippResult:
    exit_code: int
    successful: int
    failed: int
    screen: str
    messages: str

    def describe(self) -> str:
        return (f"sipp exit {self.exit_code}, {self.successful} successful, "
                f"{self.failed} failed\n{self.screen[-3000:]}\n--- messages ---\n"
                f"{self.messages[-4000:]}")


def _udp_bound(port: int) -> bool:
    """Whether some socket is bound to 127.0.0.1:port/UDP (Linux /proc/net/udp)."""
    try:
        table = Path("/proc/net/udp").read_text()
    except OSError:
        return True  # cannot tell; sipp's retransmissions cover the gap anyway
    wanted = f"0100007F:{port:04X}"
    return any(line.split()[1] == wanted for line in table.splitlines()[1:] if line.split())


class Sipp:
    def __init__(self, sipp: str, scenario: list[str], port: int, workdir: Path,
                 remote: str | None = None) -> None:
        self.port = port
        self.message_file = workdir / f"sipp_{port}_messages.log"
        argv = [sipp, *scenario, "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-nostdin",
                "-timeout", f"{SIPP_TIMEOUT}s", "-timeout_error",
                "-trace_msg", "-message_file", str(self.message_file)]
        if remote is not None:
            argv.append(remote)
        self.process = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)

    def wait_bound(self, within: float = 3.0) -> None:
        deadline = time.monotonic() + within
        while not _udp_bound(self.port) and time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            time.sleep(0.02)

    def wait_bound_tcp(self, within: float = 3.0) -> None:
        deadline = time.monotonic() + within
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return  # sipp accepts and drops this probe connection
            except OSError:
                time.sleep(0.02)

    def finish(self) -> SippResult:
        try:
            screen, _ = self.process.communicate(timeout=SIPP_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            screen, _ = self.process.communicate(timeout=5)
        # The last statistics screen holds the cumulative column.
        successful = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", screen)
        failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", screen)
        messages = (self.message_file.read_text(errors="replace")
                    if self.message_file.exists() else "")
        return SippResult(
            exit_code=self.process.returncode,
            successful=int(successful[-1]) if successful else -1,
            failed=int(failed[-1]) if failed else -1,
            screen=screen, messages=messages,
        )


# --- interop: the harness against sipp ----------------------------------------------------------


@pytest.mark.interop
def test_pjsua2_calls_sipp_uas_with_custom_header_and_sends_bye(tmp_path: Path) -> None:
    sipp_bin = _need_sipp()
    _need_pjsua2()
    sipp_port, ue_port = free_ports(2)
    sipp = Sipp(sipp_bin, ["-sn", "uas"], sipp_port, tmp_path)
    sipp.wait_bound()
    run = run_ue(UeArgs(local_port=ue_port, call=f"sip:service@127.0.0.1:{sipp_port}",
                        headers=("X-Foo: bar",), hangup_after=0.1, timeout=5.0), tmp_path)
    result = sipp.finish()

    assert run.ok, run.describe()
    assert run.first("confirmed")["code"] == 200, run.describe()
    disconnected = run.first("disconnected")
    assert disconnected["was_confirmed"] and disconnected["by_us"], run.describe()
    states = [e["state"] for e in run.named("call_state")]
    assert states.index("CONFIRMED") < states.index("DISCONNECTED"), states
    assert run.first("result")["ok"] is True

    assert result.exit_code == 0 and result.successful == 1, result.describe()
    assert re.search(r"^X-Foo: bar\r?$", result.messages, re.M), result.describe()
    assert re.search(r"^BYE sip:", result.messages, re.M), result.describe()
    # Media is offered inactive, so the harness never sends RTP (RFC 3264 §5.1).
    assert re.search(r"^a=inactive\r?$", result.messages, re.M), result.describe()


@pytest.mark.interop
def test_pjsua2_sends_via_outbound_proxy_over_tcp(tmp_path: Path) -> None:
    # sipp stands in for the P-CSCF: the INVITE keeps Dave's URI as Request-URI and reaches
    # the proxy through a pre-loaded Route (RFC 3261 §8.1.2, loose routing).
    sipp_bin = _need_sipp()
    _need_pjsua2()
    sipp_port, ue_port = free_ports(2)
    sipp = Sipp(sipp_bin, ["-sn", "uas", "-t", "t1"], sipp_port, tmp_path)
    sipp.wait_bound_tcp()
    run = run_ue(UeArgs(local_port=ue_port, tcp=True,
                        proxy=f"sip:127.0.0.1:{sipp_port};transport=tcp;lr",
                        call="sip:+15550100002@ims.mnc002.mcc001.3gppnetwork.org",
                        hangup_after=0.0, timeout=5.0), tmp_path)
    result = sipp.finish()

    assert run.ok, run.describe()
    assert result.exit_code == 0 and result.successful == 1, result.describe()
    assert re.search(r"^INVITE sip:\+15550100002@ims\.mnc002\.mcc001\.3gppnetwork\.org SIP/2\.0",
                     result.messages, re.M), result.describe()
    assert re.search(rf"^Route: <sip:127\.0\.0\.1:{sipp_port};transport=tcp;lr>",
                     result.messages, re.M), result.describe()
    assert re.search(r"^Via: SIP/2\.0/TCP 127\.0\.0\.1:", result.messages, re.M), result.describe()


@pytest.mark.interop
def test_pjsua2_registers_and_unregisters_with_sipp_registrar(tmp_path: Path) -> None:
    sipp_bin = _need_sipp()
    _need_pjsua2()
    sipp_port, ue_port = free_ports(2)
    scenario = str(SCENARIOS / "pjsua2_register_uas.xml")
    sipp = Sipp(sipp_bin, ["-sf", scenario], sipp_port, tmp_path)
    sipp.wait_bound()
    run = run_ue(UeArgs(local_port=ue_port, register=f"sip:127.0.0.1:{sipp_port}",
                        user="+15550100001", password="secret",
                        domain="ims.mnc001.mcc001.3gppnetwork.org", timeout=5.0), tmp_path)
    result = sipp.finish()

    assert run.ok, run.describe()
    registered = run.first("registered")
    assert registered["code"] == 200 and registered["expires"] > 0, run.describe()
    assert run.first("unregistered")["code"] == 200, run.describe()
    assert result.exit_code == 0 and result.successful == 1, result.describe()
    assert re.search(r"^From: .*sip:\+15550100001@ims\.mnc001\.mcc001\.3gppnetwork\.org",
                     result.messages, re.M), result.describe()


@pytest.mark.interop
def test_pjsua2_answers_sipp_uac_and_reports_received_headers(tmp_path: Path) -> None:
    sipp_bin = _need_sipp()
    _need_pjsua2()
    sipp_port, ue_port = free_ports(2)
    ue = start_ue(UeArgs(local_port=ue_port, answer=True, timeout=6.0), tmp_path)
    assert ue.wait_for("waiting_for_call", within=5.0) is not None, ue.wait().describe()
    sipp = Sipp(sipp_bin, ["-sn", "uac", "-s", "+15550100002"], sipp_port, tmp_path,
                remote=f"127.0.0.1:{ue_port}")
    result = sipp.finish()
    run = ue.wait()

    assert run.ok, run.describe()
    incoming = run.first("incoming_call")
    assert incoming["method"] == "INVITE"
    assert incoming["request_uri"] == f"sip:+15550100002@127.0.0.1:{ue_port}"
    assert incoming.header("subject") == ["Performance Test"], run.describe()
    assert incoming.header("Call-ID") and incoming.header("Via"), run.describe()
    disconnected = run.first("disconnected")
    assert disconnected["was_confirmed"] and not disconnected["by_us"], run.describe()
    assert result.exit_code == 0 and result.successful == 1, result.describe()
    assert re.search(r"^a=inactive\r?$", result.messages, re.M), result.describe()


@pytest.mark.interop
def test_pjsua2_refuses_incoming_call_with_requested_status(tmp_path: Path) -> None:
    sipp_bin = _need_sipp()
    _need_pjsua2()
    sipp_port, ue_port = free_ports(2)
    ue = start_ue(UeArgs(local_port=ue_port, answer=True, answer_code=486, timeout=6.0),
                  tmp_path)
    assert ue.wait_for("waiting_for_call", within=5.0) is not None, ue.wait().describe()
    sipp = Sipp(sipp_bin, ["-sn", "uac"], sipp_port, tmp_path, remote=f"127.0.0.1:{ue_port}")
    result = sipp.finish()
    run = ue.wait()

    assert run.ok, run.describe()
    assert run.first("disconnected")["code"] == 486, run.describe()
    assert "confirmed" not in [e.name for e in run.events]
    # sipp's uac scenario wants a 200, so from its side the call failed.
    assert result.failed == 1, result.describe()
    assert re.search(r"^SIP/2.0 486 ", result.messages, re.M), result.describe()


@pytest.mark.interop
def test_pjsua2_gives_up_within_timeout_when_nobody_answers(tmp_path: Path) -> None:
    _need_pjsua2()
    silent_port, ue_port = free_ports(2)  # nothing listens on silent_port
    started = time.monotonic()
    run = run_ue(UeArgs(local_port=ue_port, call=f"sip:nobody@127.0.0.1:{silent_port}",
                        timeout=2.0), tmp_path)
    elapsed = time.monotonic() - started

    assert run.exit_code == EXIT_TIMEOUT and not run.killed, run.describe()
    assert elapsed < 2.0 + 1.5, f"took {elapsed:.2f}s for --timeout 2"
    assert run.first("result")["ok"] is False
    # The teardown cancelled the unanswered INVITE: the call is reported as ended.
    assert run.named("disconnected"), run.describe()


# --- the harness's own parts (no peer, no pjsua2 needed) -----------------------------------------


def test_usage_call_and_answer_together_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, str(HARNESS), "--local-port", "5060", "--call", "sip:a@127.0.0.1",
         "--answer"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == EXIT_USAGE
    assert "--call and --answer" in done.stderr
    assert '"event": "result"' in done.stdout


@pytest.mark.parametrize("bad", ["X-Foo bar", ": bar", "X Foo: bar"])
def test_usage_malformed_header_is_refused(bad: str) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_options(["--local-port", "5060", "--call", "sip:a@127.0.0.1", "--header", bad])
    assert caught.value.code == EXIT_USAGE


def test_usage_register_needs_user_and_domain() -> None:
    with pytest.raises(SystemExit) as caught:
        parse_options(["--local-port", "5060", "--register", "sip:127.0.0.1"])
    assert caught.value.code == EXIT_USAGE


def test_runner_argv_is_understood_by_the_harness() -> None:
    args = UeArgs(local_port=40000, register="sip:127.0.0.1:5060", user="bill",
                  password="pw", domain="ims.mnc001.mcc001.3gppnetwork.org",
                  proxy="sip:127.0.0.1:5070;lr", call="sip:+15550100002@127.0.0.1",
                  headers=("X-Foo: bar", "X-Baz: a:b"), hangup_after=0.5, timeout=3.0,
                  tcp=True)
    options = parse_options(args.argv()[2:])
    assert options.local_port == 40000 and options.tcp
    assert options.registration is not None and options.registration.user == "bill"
    assert options.id_uri == "sip:bill@ims.mnc001.mcc001.3gppnetwork.org"
    assert options.proxy == "sip:127.0.0.1:5070;lr"
    assert options.headers == (("X-Foo", "bar"), ("X-Baz", "a:b"))
    assert options.hangup_after == 0.5 and options.timeout == 3.0
    assert options.answer_code == 200 and not options.answer


def test_rfc3261_7_3_1_folded_header_is_unfolded_and_order_kept() -> None:
    message = ("INVITE sip:+15550100002@127.0.0.1 SIP/2.0\r\n"
               "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
               "Subject: I know you're there,\r\n"
               "   pick up the phone\r\n"
               "X-Foo: bar\r\n"
               "x-foo: baz\r\n"
               "\r\n"
               "v=0\r\nX-Not-A-Header: body\r\n")
    start, headers = split_message_head(message)
    assert start == "INVITE sip:+15550100002@127.0.0.1 SIP/2.0"
    assert headers == [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1"),
        ("Subject", "I know you're there, pick up the phone"),
        ("X-Foo", "bar"),
        ("x-foo", "baz"),
    ]

