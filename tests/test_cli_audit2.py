"""The command line's remaining rough edges (session-3 audit, W2).

Each test pins a behaviour the audit found wrong: `sip check | head` exited with a traceback,
an unreadable or endless file was read without end or called a usage error, malformed option
values (a number, an identity, a host name where an IP literal belongs) exited 1 instead of 2,
`testbed status` could not tell "partial" from "cannot say", help pages lacked examples and
defaults, and a refused registration named an API class to CLI users. Everything here runs
in-process or on this file's own loopback address (127.0.17.1), never on the demo world's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ims.cli import build_parser, main, testbed, ue
from ims.cli import sip as sip_cli
from ims.testbed.state import STATE_FILE
from ims.trace import MAX_LINE_BYTES, TraceFileError, read_trace
from tests.test_trace import proxied_call
from ue_ua.errors import RegistrationFailed

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.17.1"  # this audit's own loopback address
REALM = "ims.mnc001.mcc001.3gppnetwork.org"
BILL = f"bill@{REALM}"
OPTIONS = ('[operator]\nname = "Tee"\nplmn = "001-01"\nmnc_digits = 2\n'
           '[store]\npath = "op.sqlite"\n[pcscf]\nlisten = ["udp:{host}:{pcscf}"]\n'
           '[scscf]\nlisten = ["udp:{host}:{scscf}"]\n')
# A request without Via: `sip check` answers it "400 Missing Via header".
NO_VIA = b"OPTIONS sip:a@example.com SIP/2.0\r\n\r\n"


def _loopback_ok() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((HOST, 0))
        except OSError:
            return False
    return True


needs_loopback = pytest.mark.skipif(not _loopback_ok(),
                                    reason=f"cannot bind {HOST} (127.0.0.0/8 not on lo here)")


def _usage_exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's usage error for `argv`: asserts exit 2 and returns the message."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


# -- 1. sip check ---------------------------------------------------------------------------------


def test_sip_check_into_a_closed_pipe_exits_quietly_with_141(tmp_path: Path) -> None:
    # `ueconnect sip check FILES | head -1`: the reader goes away after one line. It used to
    # end with a BrokenPipeError traceback; now it stops quietly, 141 (128 + SIGPIPE) as a
    # process killed by SIGPIPE shows under `set -o pipefail`.
    message = tmp_path / "m.sip"
    message.write_bytes(NO_VIA)
    files = [str(message)] * 3000  # some 100 KiB of output: more than a pipe buffers
    process = subprocess.Popen([sys.executable, "-m", "ims", "sip", "check", *files],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does after its line
    try:
        code = process.wait(timeout=30)
        err = process.stderr.read().decode()
    finally:
        process.kill()
        process.stderr.close()
    assert first == f"{message}\t400 Missing Via header\n".encode()
    assert code == sip_cli.EXIT_BROKEN_PIPE == 141
    assert err == ""  # no traceback, not even "Exception ignored ... BrokenPipeError"


def test_dns_generate_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    # `ueconnect dns generate | head -0`: the same traceback, the same quiet 141.
    process = subprocess.Popen(
        [sys.executable, "-m", "ims", "dns", "generate", "--out", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # closed before the command prints its first line
    try:
        code = process.wait(timeout=30)
        err = process.stderr.read().decode()
    finally:
        process.kill()
        process.stderr.close()
    assert (code, err) == (141, "")


def test_sip_check_unreadable_file_is_a_failure_not_usage_and_the_rest_is_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A missing file is a runtime failure (1, as `ueconnect trace` and `mno --config` say it),
    # not a usage error (2): the command line was right, the file is not there.
    message = tmp_path / "m.sip"
    message.write_bytes(NO_VIA)
    missing = tmp_path / "none.sip"
    assert main(["sip", "check", str(missing), str(message)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{message}\t400 Missing Via header\n"
    assert err == (f"ueconnect sip check: cannot read {missing}: No such file or directory; "
                   "give a file holding one SIP message\n")


def test_sip_check_reads_at_most_a_bounded_amount_of_dev_zero(
        capsys: pytest.CaptureFixture[str]) -> None:
    # It used to read /dev/zero without end (f.read()): now 1 MiB and a one-line refusal.
    started = time.monotonic()
    assert main(["sip", "check", "/dev/zero"]) == 1
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == (
        "ueconnect sip check: /dev/zero is larger than 1 MiB, more than one SIP message; "
        "give a file holding one message\n")


# -- 2. dns: usage errors exit 2, addresses are IP literals --------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["dns", "enum", "abc"], "not an E.164 number 'abc'"),
    (["dns", "locate", "001-0x"], "not an MNO identifier '001-0x'"),
    (["dns", "locate", "--sips", "--transport", "udp", REALM],
     "a sips: URI cannot use transport=udp"),
])  # fmt: skip
def test_dns_malformed_lookup_values_are_usage_errors(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any query is sent (nothing listens on HOST port 9): usage, exit 2.
    assert main([*argv, "--server", HOST, "--port", "9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ueconnect dns {argv[1]}: ") and message in err


@pytest.mark.parametrize("argv", [
    ["dns", "serve", "--address", "localhost"],
    ["dns", "enum", "+15550100002", "--server", "localhost"],
    ["dns", "locate", "001-02", "--server", "localhost"],
    ["pcp", "serve", "--listen", "localhost", "--external", "198.51.100.1", "--dry-run"],
    ["pcp", "request", "--server", "localhost", "--internal-port", "4000"],
])  # fmt: skip
def test_host_names_are_refused_naming_the_fix(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # `dns serve --address localhost` bound whatever the resolver picked; `pcp request
    # --server localhost` ended in a ValueError traceback. A host name is refused: exit 2.
    err = _usage_exit(argv, capsys)
    assert "'localhost' is not an IP address; give an IP literal, e.g. 127.0.0.1 or ::1" in err


def test_dns_client_port_zero_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_exit(["dns", "enum", "+15550100002", "--port", "0"], capsys)
    assert "argument --port: port 0 is out of range 1..65535" in err


# -- pcp: option values the command refuses are usage errors ------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["pcp", "serve", "--listen", HOST, "--external", "198.51.100.1", "--control", "x",
      "--dry-run"], "'x' is not an IP address"),
    (["pcp", "serve", "--listen", HOST, "--external", "198.51.100.1", "--quota", "0",
      "--dry-run"], "quota must be at least 1"),
    (["pcp", "request", "--server", HOST, "--internal-port", "4000", "--peer", "nope"],
     "'nope' is not ADDRESS:PORT"),
    (["pcp", "request", "--server", HOST, "--internal-port", "4000", "--lifetime", "0"],
     "deleting (--lifetime 0) needs the mapping's --nonce"),
])  # fmt: skip
def test_pcp_refused_option_values_exit_2(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ueconnect pcp {argv[1]}: ") and message in err


# -- 3. help pages: description, examples, defaults ----------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


PAGES = [("sip",), ("sip", "check"), ("sip", "proxy"), ("dns",), ("dns", "serve"),
         ("dns", "check"), ("dns", "generate"), ("dns", "enum"), ("dns", "locate"), ("pcp",),
         ("pcp", "serve"), ("pcp", "request"), ("testbed", "status")]


@pytest.mark.parametrize("path", PAGES, ids=" ".join)
def test_help_page_has_examples_and_names_every_default(path: tuple[str, ...]) -> None:
    parser = build_parser()
    for name in path:
        parser = _subparsers(parser)[name]
    page = parser.format_help()
    assert parser.description and "\nexamples:\n  ueconnect " in page.replace("sudo ", "")
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
            assert action.help and "default" in action.help, (path, action.option_strings)


def test_exit_statuses_are_on_the_help_pages() -> None:
    parser = build_parser()
    sip = _subparsers(_subparsers(parser)["sip"])["check"].format_help()
    assert "141 the reader of the output went away" in sip
    status = _subparsers(_subparsers(parser)["testbed"])["status"].format_help()
    assert "0 up; 1 partial" in status and "3 down" in status and "4 unknown" in status


# -- 4. testbed status: LSB codes; up/down cannot run here -> 2 ----------------------------------


def _testbed(*argv: str) -> int:
    args = build_parser().parse_args(["testbed", *argv])
    return int(args.func(args))


def test_testbed_status_unknown_is_4_not_partial(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    # LSB status action: 1 is "dead and pid file exists" (here PARTIAL), 4 "status unknown".
    # Not root, a tool missing or an unreadable state is "cannot say", not PARTIAL.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _testbed("status", "--state-dir", str(tmp_path)) == testbed.STATUS_UNKNOWN == 4
    assert "needs root" in capsys.readouterr().err
    monkeypatch.setattr(testbed, "check_host", lambda plan: None)  # as if root with the tools
    (tmp_path / STATE_FILE).write_text("{")
    assert _testbed("status", "--state-dir", str(tmp_path)) == testbed.STATUS_UNKNOWN
    assert "ueconnect testbed status: " in capsys.readouterr().err


@pytest.mark.parametrize("action", ["up", "down"])
def test_testbed_up_down_that_cannot_run_here_exit_2_like_demo(
        action: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr("ims.testbed.builder.shutil.which", lambda tool: None)
    assert _testbed(action, "--state-dir", str(tmp_path)) == testbed.EXIT_CANNOT_RUN_HERE == 2
    assert "'ip' is not installed: install the Debian package iproute2" in \
        capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# -- 5. subscriber add: a malformed identity is a usage error ------------------------------------


@pytest.mark.parametrize(("option", "value"), [("--impi", "bill"),
                                               ("--impu", "tel:5550100001")])
def test_subscriber_add_malformed_identity_exits_2(
        option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "op.toml"
    config.write_text(OPTIONS.format(host=HOST, pcscf=5600, scscf=5602), encoding="utf-8")
    argv = {"--impi": BILL, "--impu": "tel:+15550100001", option: value}
    assert main(["subscriber", "add", "--config", str(config), "--impi", argv["--impi"],
                 "--impu", argv["--impu"], "--password", "pw"]) == 2
    assert f"ueconnect subscriber add: {option} '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "op.sqlite").exists()  # refused before the store


# -- 6. trace: bounded reading ------------------------------------------------------------------


def test_trace_of_dev_zero_ends_with_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    # It used to read /dev/zero without end (stream.read()); now at most 256 MiB, line by line.
    started = time.monotonic()
    assert main(["trace", "/dev/zero"]) == 1
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert "ueconnect trace: trace file /dev/zero: larger than 256 MiB, more than a trace " \
        "holds (a recorder stops at 64 MiB by default)" in err


def test_read_trace_skips_an_overlong_line_and_reads_on(tmp_path: Path) -> None:
    good = proxied_call()[0].to_json()
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"x" * (MAX_LINE_BYTES + 10) + b"\n" + good.encode() + b"\n")
    problems: list[str] = []
    entries = read_trace(path, on_problem=lambda p: problems.append(str(p)))
    assert [e.line for e in entries] == [2]  # the line after the long one, read and numbered
    assert problems == [f"{path}:1: skipped malformed trace line: longer than 1 MiB, more "
                        "than any trace line"]


def test_read_trace_refuses_a_file_over_the_cap(tmp_path: Path) -> None:
    good = proxied_call()[0].to_json() + "\n"
    path = tmp_path / "t.jsonl"
    path.write_text(good * 10, encoding="ascii")
    assert len(read_trace(path, max_bytes=len(good) * 10)) == 10
    with pytest.raises(TraceFileError, match="larger than 1000 bytes, more than a trace"):
        read_trace(path, max_bytes=1000)


# -- 7. a refused registration names the UE's configuration, not an API class -------------------


@pytest.mark.parametrize(("status", "hint"), [
    (403, "check impi and password in the UE's configuration"),
    (401, "check impi and password in the UE's configuration"),
    (408, "no answer: check pcscf in the UE's configuration and that the operator runs"),
    (503, "check impi, password and pcscf in the UE's configuration"),
])  # fmt: skip
def test_registration_failed_hint_fits_api_and_cli(status: int, hint: str) -> None:
    text = str(RegistrationFailed(status, "Whatever"))
    assert text == f"registration failed: {status} Whatever ({hint})"
    assert "UeConfig" not in text


def _free_udp_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@needs_loopback
def test_ue_register_with_a_wrong_password_says_check_the_ues_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real operator (P-CSCF and S-CSCF on HOST) answers the wrong password 403.
    from ims.config import load_config
    from ims.operator import Operator

    pcscf, scscf = _free_udp_ports(2)
    config = tmp_path / "op.toml"
    config.write_text(OPTIONS.format(host=HOST, pcscf=pcscf, scscf=scscf), encoding="utf-8")
    assert main(["subscriber", "add", "--config", str(config), "--impi", BILL, "--impu",
                 f"sip:+15550100001@{REALM}", "--password", "right"]) == 0
    ue_toml = tmp_path / "bill.toml"
    ue_toml.write_text(
        f'[ue]\nimpu = "sip:+15550100001@{REALM}"\nimpi = "{BILL}"\npassword = "wrong"\n'
        f'home_domain = "{REALM}"\npcscf = "{HOST}:{pcscf}"\nbind_host = "{HOST}"\n',
        encoding="utf-8")
    capsys.readouterr()

    async def body() -> tuple[int, str]:
        async with Operator.start(load_config(config)):
            err = io.StringIO()
            args = build_parser().parse_args(["ue", "--config", str(ue_toml), "register"])
            code = await asyncio.wait_for(ue.run(args, out=io.StringIO(), err=err), 20)
            return code, err.getvalue()

    code, err = asyncio.run(body())
    assert code == ue.EXIT_FAILED
    assert err.startswith("ueconnect ue register: registration failed: 403 Forbidden")
    assert "(check impi and password in the UE's configuration)" in err
    assert "UeConfig" not in err
