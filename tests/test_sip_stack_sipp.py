"""The asyncio stack against sipp, a real SIP peer, on loopback (one call each, bounded).

sipp's built-in `uac` calls our stack acting as UAS (INVITE/180/200/ACK, BYE/200) over UDP and
TCP; our stack calls sipp's built-in `uas` and hangs up. Skipped when sipp is not installed
(Debian package sip-tester provides /usr/bin/sipp); CI installs it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.sipp import free_port
from ims.sip.address import Address
from ims.sip.dialog import Dialog, create_initial_request
from ims.sip.ids import IdSource
from ims.sip.message import make_response
from ims.sip.stack import SipStack, TuEvent
from ims.sip.transaction import RequestReceived
from ims.sip.uri import parse_uri

pytestmark = pytest.mark.interop

SIPP_TIMEOUT = 8  # seconds; sipp gives up (and fails) past this
IDS = IdSource()


def _sipp() -> str:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.skip("sipp not on PATH (Debian package sip-tester provides /usr/bin/sipp)")
    return sipp


async def _run_sipp(argv: list[str], workdir: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), SIPP_TIMEOUT + 5)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


def _successful(screen: str) -> int:
    found = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", screen)
    return int(found[-1]) if found else -1


def _sipp_argv(sipp: str, scenario: str, transport: str, port: int, workdir: Path) -> list[str]:
    return [
        sipp,
        "-sn",
        scenario,
        "-t",
        "u1" if transport == "UDP" else "t1",
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        f"{SIPP_TIMEOUT}s",
        "-timeout_error",
        "-trace_msg",
        "-message_file",
        str(workdir / "sipp_messages.log"),
    ]


def _messages(workdir: Path) -> str:
    path = workdir / "sipp_messages.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _answer_calls(stack_ref: list[SipStack]) -> Callable[[TuEvent], None]:
    def handler(event: TuEvent) -> None:
        if not isinstance(event, RequestReceived):
            return
        stack = stack_ref[0]
        request = event.request
        tag = IDS.tag()
        if request.method == "INVITE":
            stack.respond(event.key, make_response(request, 180, to_tag=tag))
            contact = [("Contact", f"<sip:dave@{stack.transports[0].local.hostport}>")]
            stack.respond(event.key, make_response(request, 200, to_tag=tag, extra=contact))
        else:  # BYE
            stack.respond(event.key, make_response(request, 200, to_tag=tag))

    return handler


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_sipp_uac_calls_our_stack(transport: str, tmp_path: Path) -> None:
    sipp = _sipp()

    async def main() -> None:
        ref: list[SipStack] = []
        stack = SipStack(_answer_calls(ref))
        ref.append(stack)
        local = (await stack.listen(transport, "127.0.0.1")).local
        kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
        argv = _sipp_argv(sipp, "uac", transport, free_port("127.0.0.1", kind), tmp_path)
        code, screen = await _run_sipp([*argv, local.hostport], tmp_path)
        await stack.close()
        assert code == 0 and _successful(screen) == 1, screen[-3000:] + _messages(tmp_path)

    asyncio.run(main())


def test_our_stack_calls_sipp_uas_and_hangs_up(tmp_path: Path) -> None:
    sipp = _sipp()

    async def main() -> None:
        stack = SipStack(lambda event: None)
        local = (await stack.listen("UDP", "127.0.0.1")).local
        port = free_port("127.0.0.1", socket.SOCK_DGRAM)
        argv = _sipp_argv(sipp, "uas", "UDP", port, tmp_path)
        sipp_task = asyncio.create_task(_run_sipp(argv, tmp_path))
        peer = Address("UDP", "127.0.0.1", port)
        invite = create_initial_request(
            "INVITE",
            parse_uri(f"sip:service@{peer.hostport}"),
            from_=parse_uri("sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org"),
            to=parse_uri(f"sip:service@{peer.hostport}"),
            ids=IDS,
            contact=parse_uri(f"sip:bill@{local.hostport}"),
        )
        # If sipp has not bound its port yet, Timer A's retransmission (T1 later) reaches it.
        response = await stack.request(invite, peer)
        assert response.status_code == 200, response
        dialog = Dialog.from_uac(invite, response)
        stack.send_stateless(dialog.create_ack(invite, ids=IDS), peer)
        dialog, bye = dialog.create_bye(ids=IDS)
        assert (await stack.request(bye, peer)).status_code == 200
        code, screen = await sipp_task
        await stack.close()
        assert code == 0 and _successful(screen) == 1, screen[-3000:] + _messages(tmp_path)

    asyncio.run(main())
