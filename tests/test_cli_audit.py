"""The command line as a newcomer and a strict reviewer meet it (session-3 audit, T2).

Each test pins a behaviour the audit found wrong: exit status 2 for usage, 1 for a runtime
failure, 130 for an interruption, 0 for a serving command told to stop; one-line messages that
name the problem and the fix; no traceback; --help that says what a command does, with
examples. Everything here runs in-process or on this file's own loopback address (127.0.10.1),
never on the demo world's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ims.cli import build_parser, main, testbed, trace, ue

HOST = "127.0.10.1"  # this audit's own loopback address (tests may run beside the demo world)
REALM = "ims.mnc001.mcc001.3gppnetwork.org"
OPERATOR = ('[operator]\nname = "Tee"\nplmn = "001-01"\nmnc_digits = 2\n'
            '[store]\npath = "{store}"\n[pcscf]\nlisten = ["udp:{host}:{port}"]\n'
            '[scscf]\nlisten = ["udp:{host}:{scscf_port}"]\n')


def _loopback_ok() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((HOST, 0))
        except OSError:
            return False
    return True


needs_loopback = pytest.mark.skipif(not _loopback_ok(),
                                    reason=f"cannot bind {HOST} (127.0.0.0/8 not on lo here)")


@contextlib.contextmanager
def silent_registrar() -> Iterator[socket.socket]:
    """A UDP socket on HOST that takes every REGISTER and never answers: a P-CSCF that is
    down but whose host does not send ICMP errors, so the REGISTER would run to Timer F."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _received(sock: socket.socket) -> int:
    count = 0
    with contextlib.suppress(BlockingIOError):
        while sock.recv(65535):
            count += 1
    return count


def ue_file(tmp_path: Path, pcscf_port: int) -> Path:
    path = tmp_path / "bill.toml"
    path.write_text(
        f'[ue]\nimpu = "sip:+15550100001@{REALM}"\nimpi = "bill@{REALM}"\npassword = "pw"\n'
        f'home_domain = "{REALM}"\npcscf = "{HOST}:{pcscf_port}"\nbind_host = "{HOST}"\n',
        encoding="utf-8")
    return path


def operator_file(tmp_path: Path, store: str = "op.sqlite", port: int = 5600) -> Path:
    path = tmp_path / "op.toml"
    path.write_text(OPERATOR.format(store=store, host=HOST, port=port, scscf_port=port + 2),
                    encoding="utf-8")
    return path


def ue_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["ue", *argv])


# -- Ctrl-C never prints a traceback ------------------------------------------------------------


def test_ctrl_c_while_the_commands_load_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Importing the command modules takes most of a second (the demo pulls in the operator):
    # Ctrl-C then used to escape main() as a KeyboardInterrupt traceback.
    real = importlib.import_module

    def interrupted(name: str, package: str | None = None) -> Any:
        if name == "ims.cli.demo":
            raise KeyboardInterrupt
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert main(["--help"]) == 130
    assert capsys.readouterr().err == "ueconnect: interrupted\n"


# -- ue: Ctrl-C/SIGTERM while the registrar is silent ---------------------------------------------


@needs_loopback
@pytest.mark.parametrize(("argv", "code"), [
    (["listen"], ue.EXIT_OK),                        # a serving command told to stop: 0
    (["register", "--stay"], ue.EXIT_OK),
    (["register"], 130),                             # a finite command cut short: 130
    (["connect", "+15550100002", "--mno", "001-02"], 130),
])  # fmt: skip
def test_ue_stops_at_once_when_told_to_during_registration(tmp_path: Path, argv: list[str],
                                                           code: int) -> None:
    # RFC 3261 section 17.1.2.2: an unanswered REGISTER ends after Timer F, 64*T1 = 32 s. Ctrl-C
    # used to set an event nobody awaited until then.
    with silent_registrar() as registrar:
        config = ue_file(tmp_path, registrar.getsockname()[1])

        async def body() -> tuple[int, float]:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(0.3, stop.set)
            started = time.monotonic()
            result = await asyncio.wait_for(
                ue.run(ue_args("--config", str(config), *argv), stop=stop, out=io.StringIO(),
                       err=(err := io.StringIO())), 10)
            assert "stopped before the registrar answered" in err.getvalue() or result == 130
            return result, time.monotonic() - started

        result, took = asyncio.run(body())
        assert _received(registrar) >= 1  # it did try to register
    assert result == code
    assert took < 5, f"took {took:.1f} s to stop"


@needs_loopback
def test_ue_connect_interrupted_still_prints_its_json_object(tmp_path: Path) -> None:
    with silent_registrar() as registrar:
        config = ue_file(tmp_path, registrar.getsockname()[1])

        async def body() -> tuple[int, str]:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(0.3, stop.set)
            out = io.StringIO()
            code = await asyncio.wait_for(ue.run(
                ue_args("--config", str(config), "connect", "+15550100002", "--mno", "001-02",
                        "--json"), stop=stop, out=out, err=io.StringIO()), 10)
            return code, out.getvalue()

        code, out = asyncio.run(body())
    assert code == 130
    outcome = json.loads(out)
    assert outcome["ok"] is False and outcome["error"] == "interrupted"


@needs_loopback
@pytest.mark.parametrize(("argv", "message"), [
    (["not a peer", "--mno", "001-02"], "is neither a number, a URI nor user@domain"),
    (["+15550100002", "--mno", "1-2"], "--mno '1-2' is not an operator identifier"),
    (["+15550100002", "--mno", "001-02", "--application", "a b"],
     "--application 'a b' is not a SIP token (RFC 3261 section 25.1)"),
])  # fmt: skip
def test_ue_connect_usage_errors_come_before_anything_is_sent(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    # They used to surface only after registering: 32 s later when the P-CSCF was down.
    with silent_registrar() as registrar:
        config = ue_file(tmp_path, registrar.getsockname()[1])
        err = io.StringIO()
        started = time.monotonic()
        code = asyncio.run(ue.run(ue_args("--config", str(config), "connect", *argv),
                                  out=io.StringIO(), err=err))
        assert time.monotonic() - started < 2
        assert _received(registrar) == 0
    assert code == ue.EXIT_USAGE
    assert err.getvalue().startswith("ueconnect ue connect: ") and message in err.getvalue()


def test_ue_with_a_broken_file_fails_like_mno(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # One rule for every command: a config file with problems is a failure (1), not usage (2).
    bad = ue_file(tmp_path, 5600)
    bad.write_text(bad.read_text().replace('password = "pw"', 'passwrd = "pw"'))
    assert main(["ue", "--config", str(bad), "register"]) == 1
    err = capsys.readouterr().err
    assert "ue.passwrd (line 4): unknown key; did you mean 'password'?" in err
    assert err.endswith(f"{bad}: 2 problems\n")
    # An action is still required: usage, said before the file is read.
    assert main(["ue", "--config", str(tmp_path / "none.toml")]) == 2
    assert "give an ACTION" in capsys.readouterr().err


# -- reading commands do not create a store ------------------------------------------------------


def _subscriber(*argv: str) -> int:
    args = build_parser().parse_args(["subscriber", *argv])
    return int(args.func(args))


def _permission(*argv: str) -> int:
    args = build_parser().parse_args(["permission", *argv])
    return int(args.func(args))


def test_listing_a_store_that_does_not_exist_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = operator_file(tmp_path, store="nowhere/op.sqlite")
    assert _subscriber("list", "--config", str(config)) == 0
    assert "no store there yet: `ueconnect subscriber add` creates it" in capsys.readouterr().out
    assert _subscriber("remove", "--config", str(config), f"bill@{REALM}") == 1
    assert "there is no store at" in capsys.readouterr().err
    assert _permission("rules", "--config", str(config), "tel:+15550100001") == 1
    assert "no subscriber tel:+15550100001" in capsys.readouterr().err
    assert _permission("decisions", "--config", str(config), "tel:+15550100001") == 1
    assert not (tmp_path / "nowhere").exists()


def test_subscriber_and_permission_report_every_problem_of_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # They used to prefix the first problem only, and leave out the count `mno --check` gives.
    bad = tmp_path / "bad.toml"
    bad.write_text('[operator]\nname = 1\n[bogus]\n', encoding="utf-8")
    for command in (["subscriber", "list"], ["permission", "rules", "x@y.z"]):
        args = build_parser().parse_args([*command, "--config", str(bad)])
        assert args.func(args) == 1
        lines = capsys.readouterr().err.splitlines()
        assert all(line.startswith(f"{bad}: ") for line in lines), lines
        assert "operator.name (line 2): 1 is not a string" in "\n".join(lines)
        assert lines[-1] == f"{bad}: 5 problems"


def test_subscriber_add_refuses_the_same_public_identity_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # tel:+1-555-010-0001 is tel:+15550100001 (RFC 3966 visual separators): the store would
    # keep it once, silently.
    config = operator_file(tmp_path)
    assert _subscriber("add", "--config", str(config), "--impi", f"bill@{REALM}",
                       "--impu", "tel:+15550100001", "--impu", "tel:+1-555-010-0001",
                       "--password", "pw") == 1
    err = capsys.readouterr().err
    assert err == ("ueconnect subscriber add: --impu tel:+1-555-010-0001 is given twice (first "
                   "as tel:+15550100001); give each public identity once\n")
    assert not (tmp_path / "op.sqlite").exists()


def test_permission_limit_out_of_range_is_an_argparse_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = operator_file(tmp_path)
    with pytest.raises(SystemExit) as exited:
        _permission("decisions", "--config", str(config), "x@y.z", "--limit", "0")
    assert exited.value.code == 2
    assert "argument --limit: 0 is out of range; give 1 to 10000" in capsys.readouterr().err


# -- mno -----------------------------------------------------------------------------------------


def _mno(*argv: str) -> int:
    args = build_parser().parse_args(["mno", *argv])
    return int(args.func(args))


def test_mno_role_twice_or_not_configured(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = operator_file(tmp_path)
    # Twice used to start the P-CSCF twice, failing on its own address ("in use").
    assert _mno("--config", str(config), "--role", "pcscf", "--role", "pcscf") == 2
    assert capsys.readouterr().err == ("ueconnect mno: --role pcscf is given twice; give each "
                                       "role once\n")
    assert _mno("--config", str(config), "--role", "border", "--check") == 1
    err = capsys.readouterr().err
    assert f"{config} has no [border] section for --role border; add the section, or drop" in err
    assert not (tmp_path / "op.sqlite").exists()  # refused before anything ran


def test_check_refuses_a_pcscf_or_border_without_scscf(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # `--check` said "OK (roles: pcscf)"; the operator then refused to start ("the P-CSCF needs
    # [scscf]"), also with --role pcscf alone.
    config = operator_file(tmp_path)
    config.write_text(config.read_text().split("[scscf]")[0])
    for extra in ((), ("--role", "pcscf")):
        assert _mno("--config", str(config), "--check", *extra) == 1
        assert capsys.readouterr().err == (
            f"{config}: pcscf: needs [scscf] in the same file (where registrations go); add "
            "[scscf] with its listen address (`--role pcscf` then runs only the pcscf here)\n"
            f"{config}: 1 problem\n")
    # --list-open reads the store only: it still works.
    assert _mno("--config", str(config), "--list-open") == 0


def test_mno_usage_is_named_before_the_file_is_read(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _mno("--config", str(tmp_path / "none.toml"), "--json") == 2
    assert capsys.readouterr().err == "ueconnect mno: --json goes with --list-open\n"


@needs_loopback
def test_mno_address_in_use_says_what_to_do(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        config = operator_file(tmp_path, port=taken.getsockname()[1])
        assert _mno("--config", str(config)) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"ueconnect mno: cannot run: {config}: cannot listen on udp:{HOST}:")
    assert err.endswith("another process holds that address (another `ueconnect mno` of this "
                        "file, or a role run twice?): stop it, or give this listener another "
                        "port")


# -- testbed and demo option values --------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["testbed", "up", "--netem-delay", "-5"], "argument --netem-delay: -5 ms is out of range"),
    (["testbed", "up", "--netem-delay", "abc"], "'abc' is not a whole number of milliseconds"),
    (["testbed", "up", "--prefix", "10.0.0.0/8"], "namespace prefix '10.0.0.0/8' must start"),
    (["demo", "--testbed", "--delay", "-5"], "argument --delay: -5 ms is out of range"),
    (["demo", "--testbed", "--prefix", "uec-Bad-"], "namespace prefix 'uec-Bad-' must start"),
])  # fmt: skip
def test_testbed_option_values_are_usage_errors_before_anything_runs(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # They used to reach TestbedOptions (testbed up: exit 1 after the root check) or the world
    # (demo --testbed: after creating --out).
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_documented_testbed_prefix_still_parses() -> None:
    args = build_parser().parse_args(["testbed", "up", "--prefix", "uec-lab1-",
                                      "--netem-delay", "20"])
    assert args.prefix == "uec-lab1-" and args.netem_delay == 20
    assert testbed.namespace_prefix("uec-") == "uec-"


# -- trace ----------------------------------------------------------------------------------------


def test_trace_of_a_file_that_is_no_trace_says_so_in_a_few_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = operator_file(tmp_path)  # a config file given by mistake
    wrong.write_text(wrong.read_text() * 3)  # 30 lines that are not blank, none JSON
    args = build_parser().parse_args(["trace", str(wrong), "--list"])
    assert args.func(args) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == trace.MAX_PROBLEMS_SHOWN + 2, lines
    assert lines[-2] == f"{wrong}: 20 more malformed lines skipped"
    assert lines[-1].startswith(f"ueconnect trace: {wrong} is not a ladder trace")


# -- configuration files: what --check can see ----------------------------------------------------


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    assert _mno("--config", str(path), "--check") == 1
    return capsys.readouterr().err


BASE = ('[operator]\nname = "A"\nplmn = "001-01"\nmnc_digits = 2\n'
        f'[scscf]\nlisten = ["udp:{HOST}:5602"]\n')


def test_check_refuses_a_store_path_that_cannot_be_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--check` said OK; the operator then failed to start ("unable to open database file").
    (tmp_path / "dir").mkdir()
    err = _check(tmp_path, BASE + '[store]\npath = "dir"\n', capsys)
    assert f'store.path (line 8): "dir" is a directory ({tmp_path / "dir"}); give a file' in err
    (tmp_path / "notes.txt").write_text("not a database\n")
    err = _check(tmp_path, BASE + '[store]\npath = "notes.txt"\n', capsys)
    assert f"{tmp_path / 'notes.txt'} is not an SQLite database" in err
    # A real store, or none yet, is fine.
    sqlite3.connect(tmp_path / "real.sqlite").execute("CREATE TABLE t (x)").connection.close()
    for store in ("real.sqlite", "new/op.sqlite"):
        (tmp_path / "c.toml").write_text(BASE + f'[store]\npath = "{store}"\n')
        assert _mno("--config", str(tmp_path / "c.toml"), "--check") == 0


def test_check_refuses_a_trace_path_the_operator_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The trace file is created, its directory is not: the operator used to fail at start.
    err = _check(tmp_path, BASE + '[trace]\npath = "missing/t.jsonl"\n', capsys)
    assert f"the directory {tmp_path / 'missing'} does not exist; create it" in err
    err = _check(tmp_path, BASE + f'[trace]\npath = "{tmp_path}"\n', capsys)
    assert "is a directory" in err


def test_a_directory_given_as_the_config_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _mno("--config", str(tmp_path), "--check") == 1
    assert capsys.readouterr().err == (
        f"{tmp_path}: is a directory; give the path of an operator TOML file in it\n"
        f"{tmp_path}: 1 problem\n")


def test_a_ue_file_given_to_mno_and_an_operator_file_given_to_ue_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A newcomer's swap used to list every section as unknown and every required one missing.
    ue_toml, operator_toml = ue_file(tmp_path, 5600), operator_file(tmp_path)
    assert _mno("--config", str(ue_toml), "--check") == 1
    assert capsys.readouterr().err == (
        f"{ue_toml}: ue (line 1): this is a UE file, not an operator's: `ueconnect ue --config "
        f"{ue_toml}` reads it; `ueconnect mno` needs an operator file such as "
        f"docs/examples/alpha.toml\n{ue_toml}: 1 problem\n")
    assert main(["ue", "--config", str(operator_toml), "--check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{operator_toml}: operator (line 1): this is an operator's file, not "
                          f"a UE's: `ueconnect mno --config {operator_toml}` reads it")
    assert err.endswith(f"{operator_toml}: 1 problem\n")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero on this system")
def test_a_config_that_never_ends_is_refused_not_read_forever(
    capsys: pytest.CaptureFixture[str]
) -> None:
    # `--config /dev/zero` (or a runaway pipe) used to hang, reading without end.
    assert _mno("--config", "/dev/zero", "--check") == 1
    assert capsys.readouterr().err.startswith("/dev/zero: larger than 1 MiB, more than any "
                                              "configuration holds; give the path of an "
                                              "operator TOML file\n")


def test_mnc_digits_as_a_string_is_named_as_the_wrong_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _check(tmp_path, BASE.replace("mnc_digits = 2", 'mnc_digits = "2"'), capsys)
    assert 'operator.mnc_digits (line 4): "2" is not an integer (write it bare: 2)' in err


# -- --help: what the command does, its defaults, an example -------------------------------------


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    def walk(prog: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, Any]]:
        yield prog, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(f"{prog} {name}", child)

    yield from walk("ueconnect", build_parser())


# The groups others own (sip, dns, pcp) are audited by their own tasks.
OURS = ("ueconnect", "ueconnect mno", "ueconnect subscriber", "ueconnect permission",
        "ueconnect trace", "ueconnect testbed", "ueconnect demo", "ueconnect ue")


@pytest.mark.parametrize("prog", [prog for prog, _ in _parsers()
                                  if prog == "ueconnect" or prog.startswith(OURS[1:])])
def test_every_help_page_says_what_it_does_and_shows_an_example(prog: str) -> None:
    parser = dict(_parsers())[prog]
    text = parser.format_help()
    assert parser.description, f"{prog} --help has no description"
    assert "\nexamples:\n  " in text, f"{prog} --help has no example"
    examples = text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
    assert set(prog.split()) <= set(examples.split()), examples
    assert max(len(line) for line in text.splitlines()) <= 100, "help lines stay readable"

