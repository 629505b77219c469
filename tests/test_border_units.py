"""Border and extension units: sealed tokens, Record-Route folding, Target-MNO parsing, and
`ueconnect mno` starting and stopping on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Coroutine
from pathlib import Path

import pytest

from ims.border import Border
from ims.config import BorderConfig
from ims.dns.locator import Locator, LocatorConfig
from ims.extension import InvalidTargetMno, parse_target_mno
from ims.pcscf import open_token, seal_token
from ims.sip.address import Address
from ims.sip.message import Headers, Request, Response
from ims.sip.proxy import Defer, Forward
from ims.sip.uri import SipUri

KEY = b"k" * 32


def test_sealed_token_round_trip_and_tamper() -> None:
    token = seal_token(KEY, b'["<sip:127.0.1.2:5102;lr>"]')
    assert open_token(KEY, token) == b'["<sip:127.0.1.2:5102;lr>"]'
    assert open_token(b"x" * 32, token) is None  # another operator's key
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert open_token(KEY, forged) is None
    assert open_token(KEY, "!!not-base64") is None


def test_sealed_token_hides_what_it_carries_topology_hiding() -> None:
    """A Record-Route token names internal hosts and ports: a peer operator must not read them
    (base64 of the token holds neither the host nor the port), and every flip of a bit is
    refused; the same payload seals to the same token (a flow keeps its token)."""
    import base64

    payload = b'["<sip:127.0.1.2:5102;lr>"]'
    token = seal_token(KEY, payload)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"127.0.1.2" not in raw and b"5102" not in raw
    assert seal_token(KEY, payload) == token
    assert seal_token(KEY, payload + b" ") != token
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("=")
        assert open_token(KEY, forged) is None, i
    assert open_token(KEY, "AAAA") is None  # shorter than the tag


@pytest.mark.parametrize(
    ("value", "mno_id", "params"),
    [
        ("001-02", "001-02", ()),
        ("00102", "00102", ()),
        (" ims.mnc002.mcc001.3gppnetwork.org;x=1 ", "ims.mnc002.mcc001.3gppnetwork.org",
         (("x", "1"),)),
        ("Beta.Example.", "beta.example", ()),
    ],
)
def test_target_mno_parses(value: str, mno_id: str, params: tuple[object, ...]) -> None:
    parsed = parse_target_mno(value)
    assert parsed.mno_id == mno_id
    assert parsed.params == params


@pytest.mark.parametrize("value", ["", "01-2", "001-0002", "not a domain", "x;=bad"])
def test_target_mno_rejects_with_400(value: str) -> None:
    with pytest.raises(InvalidTargetMno) as error:
        parse_target_mno(value)
    assert error.value.status_code == 400
    assert "Target-MNO" in error.value.reason


def _border() -> Border:
    def never(request: Request, work: Awaitable[Forward | Response]) -> Defer:
        if isinstance(work, Coroutine):
            work.close()
        return Defer(0)

    return Border(
        SipUri(host="127.0.1.3", port=5104),
        config=BorderConfig((), (), None, None, None),
        home_domain="ims.mnc001.mcc001.3gppnetwork.org",
        internal_hosts={"127.0.1.1", "127.0.1.2"},
        scscf=Address("UDP", "127.0.1.2", 5102),
        locator=Locator(LocatorConfig.for_server("127.0.0.1", 53530)),
        key=KEY,
        defer=never,
    )


def test_record_route_fold_hides_internal_hosts_and_unfold_restores() -> None:
    border = _border()
    rr = ["<sip:127.0.1.1:5100;lr>", "<sip:127.0.1.2:5102;lr>", "<sip:127.0.1.3:5104;lr>",
          "<sip:127.0.2.3:5204;lr>"]
    response = Response(200, "OK", Headers.of(*(("Record-Route", v) for v in rr)))
    folded = border._fold_response(response)
    values = folded.headers.get_all("Record-Route")
    assert len(values) == 2 and values[1] == rr[3]
    assert "127.0.1.1" not in values[0] and "127.0.1.2" not in values[0]
    assert values[0].endswith("@127.0.1.3:5104;lr>")
    # The token holds the internal entries nearest first, as a Route set going in wants them.
    token = folded.name_addrs("Record-Route")[0].sip_uri.user
    assert token is not None
    assert border._open(token) == [rr[1], rr[0]]
    assert border._open(token[:-1] + "A") in (None, [rr[1], rr[0]])


def test_unfold_puts_internal_entries_back_after_ours() -> None:
    border = _border()
    mine = f"<{border._token_uri(['<sip:127.0.1.2:5102;lr>', '<sip:127.0.1.1:5100;lr>'])}>"
    response = Response(200, "OK", Headers.of(("Record-Route", "<sip:127.0.2.3:5204;lr>"),
                                              ("Record-Route", mine)))
    values = border._unfold_response(response).headers.get_all("Record-Route")
    assert values == ["<sip:127.0.2.3:5204;lr>", mine, "<sip:127.0.1.2:5102;lr>",
                      "<sip:127.0.1.1:5100;lr>"]


def test_mno_command_runs_roles_and_stops_on_sigterm(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "alpha.toml"
    text = example.read_text()
    # Free the demo ports: the OS picks none here, so use unusual ones on 127.0.1.x.
    base = 20000 + os.getpid() % 20000
    for old, new in (("5100", str(base)), ("5102", str(base + 2)), ("5104", str(base + 4)),
                     ("5106", str(base + 6)), ("5108", str(base + 8)),
                     ("9101", str(base + 10))):
        text = text.replace(old, new)
    config = tmp_path / "alpha.toml"
    config.write_text(text)
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "ims", "mno", "--config", str(config), "--role", "pcscf",
         "--role", "scscf"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            if (tmp_path / "alpha.sqlite").exists():
                time.sleep(0.5)
                break
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert f"P-CSCF sip:127.0.1.1:{base} listening" in err
    assert "running: P-CSCF, S-CSCF" in err
    assert "border" not in err.split("running:")[1].splitlines()[0]
