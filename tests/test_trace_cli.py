"""`ueconnect trace FILE [--call-id ID | --list] [--width N] [--html OUT]` (ims.cli.trace)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ims.cli import trace as trace_cli
from tests.test_trace import EXPECTED_LADDER, PROXY, UA1, entry, proxied_call


def ueconnect(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ueconnect")
    trace_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    later = entry(60.0, "in", UA1, PROXY, "OPTIONS sip:dave@127.0.0.1 SIP/2.0", "7 OPTIONS",
                  "b9", call_id="call-2")
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in [*proxied_call(), later]),
                    encoding="ascii")
    return path


def test_list_shows_each_call(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ueconnect("trace", str(trace_file), "--list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["START", "(UTC)", "MSGS", "METHOD", "CALL-ID", "FROM", "->", "TO"]
    assert out[1].split() == ["2023-11-14T22:13:20.000000Z", "13", "INVITE", "call-1",
                              "sip:bill@127.0.0.1", "->", "sip:dave@127.0.0.1"]
    assert out[2].split()[1:4] == ["1", "OPTIONS", "call-2"]


def test_render_a_call(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ueconnect("trace", str(trace_file), "--call-id", "call-1", "--width", "70") == 0
    assert capsys.readouterr().out == EXPECTED_LADDER


def test_default_is_the_most_recent_call(trace_file: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert ueconnect("trace", str(trace_file), "--width", "70") == 0
    out = capsys.readouterr().out
    assert out.startswith("Call-ID: call-2\n") and "OPTIONS sip:dave" in out


def test_html_output(trace_file: Path, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "ladder.html"
    assert ueconnect("trace", str(trace_file), "--call-id", "call-1", "--html", str(page)) == 0
    assert "<svg" in page.read_text(encoding="utf-8")


def test_unknown_call_id_names_known_ones(trace_file: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert ueconnect("trace", str(trace_file), "--call-id", "nope") == 1
    err = capsys.readouterr().err
    assert "no call with Call-ID 'nope'" in err and "call-1" in err and "call-2" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ueconnect("trace", str(tmp_path / "absent.jsonl"), "--list") == 1
    assert "absent.jsonl: no such file" in capsys.readouterr().err


def test_malformed_line_reported_with_its_number_and_skipped(
        trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = trace_file.read_text(encoding="ascii").splitlines(keepends=True)
    lines.insert(2, "this is not json\n")
    trace_file.write_text("".join(lines), encoding="ascii")
    assert ueconnect("trace", str(trace_file), "--list") == 0
    captured = capsys.readouterr()
    assert f"{trace_file}:3: skipped malformed trace line: not JSON" in captured.err
    assert " 13 " in captured.out  # the rest of the call is still there


def test_empty_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="ascii")
    assert ueconnect("trace", str(path)) == 1
    assert "has no SIP calls" in capsys.readouterr().err
    assert ueconnect("trace", str(path), "--list") == 0


def test_list_and_call_id_are_exclusive_and_width_is_checked(trace_file: Path) -> None:
    with pytest.raises(SystemExit):
        ueconnect("trace", str(trace_file), "--list", "--call-id", "call-1")
    with pytest.raises(SystemExit):
        ueconnect("trace", str(trace_file), "--width", "5")
