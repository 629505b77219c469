"""RFC 4475 torture messages: every 3.1.1 message parses and is valid; every other message
gets what the RFC says an element does with it (tests/data/rfc4475_expected.toml)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ims.sip.checks import Drop, Reject, Valid, check_bytes
from ims.sip.message import parse_message, serialize

DATA = Path(__file__).parent / "data"
VECTORS = DATA / "rfc4475"
EXPECTED: dict[str, dict[str, object]] = tomllib.loads(
    (DATA / "rfc4475_expected.toml").read_text(encoding="utf-8")
)


def _ids() -> list[str]:
    return sorted(EXPECTED)


def test_every_vector_file_has_an_expectation() -> None:
    files = {p.name for p in VECTORS.glob("*.sip")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", _ids())
def test_rfc4475_verdict(name: str) -> None:
    expected = EXPECTED[name]
    verdict = check_bytes((VECTORS / name).read_bytes())
    check = str(expected["check"])
    if check == "valid":
        assert isinstance(verdict, Valid), f"{expected['section']}: {verdict}"
    elif check == "drop":
        assert isinstance(verdict, Drop), f"{expected['section']}: {verdict}"
    else:
        assert isinstance(verdict, Reject), f"{expected['section']}: {verdict}"
        assert verdict.status_code == int(check.split()[0])


@pytest.mark.parametrize("name", [n for n in _ids() if n.startswith("3.1.1.")])
def test_rfc4475_3_1_1_valid_messages_roundtrip(name: str) -> None:
    message = parse_message((VECTORS / name).read_bytes())
    assert parse_message(serialize(message)) == message


def test_sip_check_cli_prints_the_verdict_per_file() -> None:
    names = _ids()
    result = subprocess.run(
        [sys.executable, "-m", "ims", "sip", "check", *(str(VECTORS / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == len(names)
    for name, line in zip(names, lines, strict=True):
        path, _, verdict = line.partition("\t")
        assert Path(path).name == name
        check = str(EXPECTED[name]["check"])
        if check in ("valid", "drop"):
            assert verdict == check
        else:
            assert verdict.split()[0] == check.split()[0]
    assert result.returncode == 1  # some vectors are invalid by design
