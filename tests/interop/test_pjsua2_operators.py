"""A stock pjsua2 UE as Bill: it registers at Alpha's P-CSCF with digest and calls Dave (our
UserAgent, registered at Beta) through both operators' cores and borders; Dave answers, the
call is confirmed and pjsua2 hangs up. pjsua2 runs as a subprocess (GPL, test-only; see
README.md here); everything stays on loopback."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from ims.config import Role
from ims.sip.useragent import IncomingCall
from ims.trace import calls, read_trace
from tests.interop.pjsua2_runner import UeArgs, free_port, pjsua2_skip_reason, run_ue
from tests.test_operator_flows import DOMAINS, PASSWORD, _impi
from tests.test_operator_observability import BILL, DAVE, observed_world

pytestmark = pytest.mark.interop

ALPHA, BETA = DOMAINS["alpha"], DOMAINS["beta"]
# Media stays off the wire (a=inactive on loopback): the test is about signalling.
ANSWER_SDP = (
    b"v=0\r\no=dave 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=inactive\r\n"
)


@pytest.mark.parametrize("target", [f"tel:{DAVE}", f"sip:{DAVE}@{BETA};user=phone"],
                         ids=["tel", "sip"])
def test_pjsua2_bill_calls_dave_across_operators(tmp_path: Path, target: str) -> None:
    reason = pjsua2_skip_reason()
    if reason is not None:
        pytest.skip(reason)

    async def scenario() -> None:
        async with observed_world(tmp_path, register=("dave",), metrics=False) as w:
            received: list[IncomingCall] = []

            async def answer(incoming: IncomingCall) -> None:
                received.append(incoming)
                incoming.ring()
                await incoming.accept(ANSWER_SDP, "application/sdp")

            w.ues["dave"].on_incoming = answer
            pcscf = w.alpha.address(Role.PCSCF)
            args = UeArgs(
                local_port=free_port(),
                register=f"sip:{ALPHA}",
                user=_impi("bill"),  # the digest username is Bill's private identity
                password=PASSWORD.format("bill"),
                domain=ALPHA,
                id_uri=f"sip:{BILL}@{ALPHA}",
                proxy=f"sip:{pcscf.host}:{pcscf.port};lr",
                call=target,
                hangup_after=0.3,
                timeout=15,
            )
            run = await asyncio.to_thread(run_ue, args, tmp_path)
            assert run.ok, run.describe()
            assert run.first("registered") is not None, run.describe()
            assert run.first("confirmed") is not None, run.describe()
            assert run.first("disconnected")["by_us"] is True
            # pjsua2 (2.14) answers the SHA-256 + MD5 challenge with MD5 (RFC 8760 section 2.4:
            # it takes the first algorithm it supports); either is fine with our registrar.
            algorithms = set(re.findall(r"^Authorization: Digest .*algorithm=([\w-]+)",
                                        run.log, re.MULTILINE))
            assert algorithms and algorithms <= {"MD5", "SHA-256"}, run.describe()
            assert len(received) == 1
            invite = received[0].request
            # RFC 3325: Dave sees Bill's identity as Alpha's P-CSCF asserted it.
            assert invite.headers.get_all("P-Asserted-Identity") == [f"<sip:{BILL}@{ALPHA}>"]
            # Through both borders: Alpha's border is the only Alpha hop Beta saw (topology
            # hiding), then Beta's border, S-CSCF and P-CSCF.
            vias = [v.split()[1].split(";")[0].rsplit(":", 1)[0]
                    for v in invite.headers.get_all("Via")]
            assert vias[-1] == "127.0.1.3" and "127.0.2.3" in vias, vias
            call = next(iter(w.ues["dave"].calls.values()), None)
            if call is not None:  # pjsua2's BYE may still be on its way
                await asyncio.wait_for(call.ended.wait(), 5)

    asyncio.run(asyncio.wait_for(scenario(), 40))
    entries = read_trace(tmp_path / "trace.jsonl")
    (call,) = (c for c in calls(entries) if c.method == "INVITE")
    for border in ("Alpha Border", "Beta Border"):
        assert border in call.participants, call.participants
