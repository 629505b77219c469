"""`ueconnect subscriber add|list|remove` (ims/cli/subscriber.py)."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from ims.cli import subscriber
from ims.store.sqlite import SqliteStore

REALM = "ims.mnc001.mcc001.3gppnetwork.org"
BILL = f"bill@{REALM}"
PASSWORD = "Pw-only-in-HA1-9c1e"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "alpha.toml"
    path.write_text('[operator]\nname = "Alpha"\nplmn = "001-01"\nmnc_digits = 2\n'
                    '[scscf]\nlisten = ["udp:127.0.1.2:5102"]\n', encoding="utf-8")
    return path


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ueconnect")
    subscriber.register(parser.add_subparsers())
    args = parser.parse_args(["subscriber", *argv])
    return int(args.func(args))


def add_bill(config: Path, *extra: str) -> int:
    return run("add", "--config", str(config), "--impi", BILL, "--impu", "tel:+15550100001",
               "--impu", f"sip:+15550100001@{REALM};user=phone", "--display-name", "Bill",
               *extra)


def test_add_list_remove(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert add_bill(config, "--password", PASSWORD) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'added {BILL} "Bill": tel:+15550100001, sip:+15550100001@{REALM}')
    assert run("list", "--config", str(config)) == 0
    assert capsys.readouterr().out == (
        f'{BILL} "Bill": tel:+15550100001, sip:+15550100001@{REALM}\n')
    assert run("remove", "--config", str(config), BILL) == 0
    assert capsys.readouterr().out.startswith(f"removed {BILL}")
    assert run("list", "--config", str(config)) == 0
    assert capsys.readouterr().out.startswith("no subscribers in ")


def test_password_never_echoed_nor_stored(config: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(PASSWORD + "\n", encoding="utf-8")
    assert add_bill(config, "--password-file", str(secret_file)) == 0
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err
    db = tmp_path / "alpha.sqlite"
    with SqliteStore(db) as store:
        found = store.subscribers.get("tel:+15550100001")
    assert found is not None and found.secret_for(REALM) is not None
    blobs = b"".join(p.read_bytes() for p in tmp_path.glob("alpha.sqlite*"))
    assert PASSWORD.encode() not in blobs


def test_password_from_stdin(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert add_bill(config, "--password-file", "-") == 0


def test_no_password_without_a_terminal(config: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert add_bill(config) == 1
    assert "no password: give --password-file" in capsys.readouterr().err


def test_duplicate_is_named(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert add_bill(config, "--password", "x") == 0
    capsys.readouterr()
    assert run("add", "--config", str(config), "--impi", f"carol@{REALM}",
               "--impu", "tel:+1-555-010-0001", "--password", "y") == 1
    err = capsys.readouterr().err
    assert f"tel:+15550100001 is already a public identity (of {BILL})" in err


def test_bad_identities_are_named(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A malformed option value is a usage error: exit 2 (ims/cli/__init__.py), not 1.
    assert run("add", "--config", str(config), "--impi", "bill", "--impu", "tel:+15550100001",
               "--password", "x") == 2
    assert "--impi 'bill': not a private identity; expected user@realm" in \
        capsys.readouterr().err
    assert run("add", "--config", str(config), "--impi", BILL, "--impu", "tel:5550100001",
               "--password", "x") == 2
    assert "--impu 'tel:5550100001'" in capsys.readouterr().err


def test_unknown_on_remove(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("remove", "--config", str(config), f"nobody@{REALM}") == 1
    assert f"no subscriber with identity nobody@{REALM}" in capsys.readouterr().err


def test_bad_config_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[operator]\n", encoding="utf-8")
    assert run("list", "--config", str(path)) == 1
    assert "operator.name (line 1): missing" in capsys.readouterr().err
