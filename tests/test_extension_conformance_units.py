"""docs/extension.md sections 3, 4 and 7 at the units that carry them, without a network: the
border's locating order and Proxy-Require (ims.border), the P-CSCF's delivery to the callee
(ims.pcscf), the mapping of a peer's 420 to cause 6. The flows are in
tests/test_extension_conformance.py."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Coroutine

import pytest

from ims.border import Border, lacking_operator, target_mno_contradiction
from ims.config import BorderConfig, PeerConfig
from ims.dns.errors import NoSuchNumber
from ims.dns.locator import Locator, LocatorConfig
from ims.dns.plmn import Plmn
from ims.dns.resolution import ServerTarget
from ims.extension import InvalidTargetMno
from ims.pcscf import _for_the_ue
from ims.sip.address import Address
from ims.sip.message import Headers, Request, Response
from ims.sip.proxy import Defer, Forward
from ims.sip.uri import SipUri
from tests.test_sip_proxy import uac_request

ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
BETA = "ims.mnc002.mcc001.3gppnetwork.org"
GAMMA = "ims.mnc003.mcc001.3gppnetwork.org"
MNC = {"001": 2}
CAUSE_5 = 'ueconnect;cause=5;text="callee lacks the extension"'
CAUSE_6 = 'ueconnect;cause=6;text="operator lacks the extension"'


def _peer(name: str, mnc: str, domain: str, net: str) -> PeerConfig:
    return PeerConfig(name, Plmn("001", mnc), domain, (ipaddress.ip_network(net),), None, None)


class _Dns:
    """What the locator would find: ENUM answers by number, borders by domain; it records
    which lookups were made."""

    def __init__(self, enum: dict[str, str]) -> None:
        self.enum = enum
        self.asked: list[str] = []

    async def enum_lookup(self, e164: str) -> str:
        self.asked.append(f"enum {e164}")
        if e164 not in self.enum:
            raise NoSuchNumber(e164, "NXDOMAIN")
        return self.enum[e164]

    async def locate(self, domain: str) -> list[ServerTarget]:
        self.asked.append(f"locate {domain}")
        net = {ALPHA: 1, BETA: 2, GAMMA: 3}[domain]
        return [ServerTarget(f"border1.{domain}", f"127.0.{net}.3", 5060, "udp")]

    async def locate_operator(self, mno_id: str) -> list[ServerTarget]:
        self.asked.append(f"operator {mno_id}")
        return await self.locate({"001-02": BETA, "001-03": GAMMA}.get(mno_id, mno_id))


def _border(dns: _Dns) -> Border:
    def never(request: Request, work: Awaitable[Forward | Response]) -> Defer:
        if isinstance(work, Coroutine):
            work.close()
        return Defer(0)

    border = Border(
        SipUri(host="127.0.1.3", port=5104),
        config=BorderConfig((), (_peer("Beta", "02", BETA, "127.0.2.0/24"),
                                 _peer("Gamma", "03", GAMMA, "127.0.3.0/24")), None, None, None),
        home_domain=ALPHA,
        internal_hosts={"127.0.1.1", "127.0.1.2"},
        scscf=Address("UDP", "127.0.1.2", 5102),
        locator=Locator(LocatorConfig.for_server("127.0.15.1", 53, mnc_lengths=MNC)),
        key=b"k" * 32,
        defer=never,
    )
    border.locator.enum_lookup = dns.enum_lookup  # type: ignore[method-assign]
    border.locator.locate = dns.locate  # type: ignore[method-assign,assignment]
    border.locator.locate_operator = dns.locate_operator  # type: ignore[method-assign]
    return border


def _invite(uri: str, *extra: tuple[str, str]) -> Request:
    return uac_request("INVITE", uri=uri, extra=extra)


FRANK_ENUM = f"sip:+15550100005;npdi@{ALPHA};user=phone"  # ported from Beta to Alpha
DAVE_ENUM = f"sip:+15550100002@{BETA};user=phone"
HELP = (("Require", "ueconnect"), ("Supported", "ueconnect"))


# --- section 4: the locating order ---------------------------------------------------------------


def test_section_4_tel_uri_enum_answer_wins_over_target_mno() -> None:
    """Dave's number with Target-MNO naming Gamma: ENUM says Beta, Beta it is."""
    dns = _Dns({"+15550100002": DAVE_ENUM})
    decision = asyncio.run(_border(dns)._locate(
        _invite("tel:+15550100002", *HELP, ("Target-MNO", "001-03"))))
    assert isinstance(decision, Forward)
    assert [t.next_hop.host for t in decision.targets if t.next_hop] == ["127.0.2.3"]
    assert str(decision.targets[0].uri) == DAVE_ENUM
    assert dns.asked == ["enum +15550100002", f"locate {BETA}"]


def test_section_4_enum_answer_wins_over_a_target_mno_we_cannot_map() -> None:
    """MCC 999 has no configured MNC length: irrelevant once ENUM has answered."""
    dns = _Dns({"+15550100002": DAVE_ENUM})
    decision = asyncio.run(_border(dns)._locate(
        _invite("tel:+15550100002", *HELP, ("Target-MNO", "999-99"))))
    assert isinstance(decision, Forward)
    assert [t.next_hop.host for t in decision.targets if t.next_hop] == ["127.0.2.3"]


def test_section_4_ported_number_enum_names_our_own_operator() -> None:
    """Frank with Target-MNO naming Beta (his operator before the port) reaching Alpha's
    border: ENUM names Alpha, so not Beta; the border has no subscriber to give him (the
    S-CSCF delivers Alpha's own subscribers before the border is asked)."""
    dns = _Dns({"+15550100005": FRANK_ENUM})
    decision = asyncio.run(_border(dns)._locate(
        _invite("tel:+15550100005", *HELP, ("Target-MNO", "001-02"))))
    assert isinstance(decision, Response) and decision.status_code == 404
    assert dns.asked[0] == "enum +15550100005"
    assert "operator 001-02" not in dns.asked and f"locate {BETA}" not in dns.asked


def test_section_4_tel_uri_without_enum_record_goes_by_target_mno() -> None:
    dns = _Dns({})
    decision = asyncio.run(_border(dns)._locate(
        _invite("tel:+15550109999", *HELP, ("Target-MNO", "001-03"))))
    assert isinstance(decision, Forward)
    assert [t.next_hop.host for t in decision.targets if t.next_hop] == ["127.0.3.3"]
    assert str(decision.targets[0].uri) == "tel:+15550109999"  # nothing better known
    assert dns.asked == ["enum +15550109999", "operator 001-03", f"locate {GAMMA}"]


@pytest.mark.parametrize(
    ("uri", "target_mno", "contradicts"),
    [
        (f"sip:+15550100002@{BETA};user=phone", "001-02", False),
        (f"sip:+15550100002@{BETA};user=phone", BETA.upper() + ".", False),
        (f"sip:+15550100002@{BETA};user=phone", "001-01", True),
        (f"sip:+15550100002@{BETA};user=phone", GAMMA, True),
        (f"sip:dave@{BETA}", None, False),
        ("tel:+15550100002", "001-03", False),  # ENUM decides for tel:
    ],
)
def test_section_4_target_mno_contradicting_sip_domain(
        uri: str, target_mno: str | None, contradicts: bool) -> None:
    extra = (("Target-MNO", target_mno),) if target_mno else ()
    refused = target_mno_contradiction(_invite(uri, *extra), MNC)
    if not contradicts:
        assert refused is None
        return
    assert refused is not None and refused.status_code == 400
    assert refused.reason.startswith("Bad Request (Target-MNO contradicts the Request-URI")


def test_section_4_border_answers_contradiction_400_without_dns() -> None:
    dns = _Dns({})
    decision = asyncio.run(_border(dns)._locate(
        _invite(f"sip:+15550100002@{BETA};user=phone", *HELP, ("Target-MNO", "001-03"))))
    assert isinstance(decision, Response) and decision.status_code == 400
    assert "Target-MNO contradicts the Request-URI" in decision.reason
    assert dns.asked == []


def test_section_4_two_target_mno_fields_still_400() -> None:
    with pytest.raises(InvalidTargetMno):
        target_mno_contradiction(_invite(f"sip:dave@{BETA}", ("Target-MNO", "001-02"),
                                         ("Target-MNO", "001-02")), MNC)


# --- section 3: Proxy-Require towards the peer ---------------------------------------------------


def test_section_3_border_adds_proxy_require_for_a_ueconnect_request_only() -> None:
    dns = _Dns({"+15550100002": DAVE_ENUM})
    helped = asyncio.run(_border(dns)._locate(_invite("tel:+15550100002", *HELP)))
    assert isinstance(helped, Forward) and helped.request is not None
    assert helped.request.headers.get_all("Proxy-Require") == ["ueconnect"]
    stock = asyncio.run(_border(dns)._locate(_invite("tel:+15550100002")))
    assert isinstance(stock, Forward) and stock.request is not None
    assert stock.request.headers.get_all("Proxy-Require") == []  # section 9: routed as any


def test_section_3_border_does_not_repeat_a_proxy_require_already_there() -> None:
    dns = _Dns({"+15550100002": DAVE_ENUM})
    decision = asyncio.run(_border(dns)._locate(
        _invite("tel:+15550100002", *HELP, ("Proxy-Require", "ueconnect"))))
    assert isinstance(decision, Forward) and decision.request is not None
    assert decision.request.headers.get_all("Proxy-Require") == ["ueconnect"]


def _420(*headers: tuple[str, str]) -> Response:
    return Response(420, "Bad Extension", Headers.of(*headers))


def test_section_7_peer_420_for_our_tag_becomes_cause_6() -> None:
    """RFC 3261 section 16.3 item 5 at the peer: 420, Unsupported: ueconnect, no Reason."""
    mapped = lacking_operator(_420(("Unsupported", "ueconnect")))
    assert (mapped.status_code, mapped.reason) == (
        420, "Bad Extension (callee's operator lacks ueconnect)")
    assert mapped.headers.get_all("Unsupported") == ["ueconnect"]  # RFC 3261 section 20.40
    assert mapped.headers.get_all("Reason") == [CAUSE_6]


@pytest.mark.parametrize(
    "response",
    [
        _420(("Unsupported", "ueconnect"), ("Reason", CAUSE_5)),  # the peer's own cause 5
        _420(("Unsupported", "frobnicate")),  # another tag: not about our extension
        Response(480, "Temporarily Unavailable", Headers.of(("Unsupported", "ueconnect"))),
    ],
    ids=["cause-5-kept", "other-tag", "not-420"],
)
def test_section_7_other_responses_are_not_cause_6(response: Response) -> None:
    assert lacking_operator(response) is response


def test_section_7_border_maps_420_only_on_requests_it_sent_proxy_require() -> None:
    dns = _Dns({"+15550100002": DAVE_ENUM})
    refusal = _420(("Unsupported", "ueconnect"))
    helped = asyncio.run(_border(dns)._locate(_invite("tel:+15550100002", *HELP)))
    assert isinstance(helped, Forward) and helped.rewrite_response is not None
    mapped = helped.rewrite_response(refusal)
    assert isinstance(mapped, Response) and mapped.headers.get_all("Reason") == [CAUSE_6]
    stock = asyncio.run(_border(dns)._locate(_invite("tel:+15550100002")))
    assert isinstance(stock, Forward) and stock.rewrite_response is not None
    assert stock.rewrite_response(refusal) is refusal


# --- sections 3 and 4: what the callee's UE receives ---------------------------------------------


def test_sections_3_4_pcscf_removes_target_mno_and_our_proxy_require_tag() -> None:
    invite = _invite("sip:dave@127.0.0.1:5062", *HELP, ("Target-MNO", "001-02"),
                     ("Proxy-Require", "ueconnect, sec-agree"))
    delivered = _for_the_ue(invite)
    assert delivered.headers.get_all("Target-MNO") == []
    assert delivered.headers.get_all("Proxy-Require") == ["sec-agree"]  # not ours: kept
    assert delivered.headers.get_all("Require") == ["ueconnect"]  # end to end
    plain = _invite("sip:dave@127.0.0.1:5062")
    assert _for_the_ue(plain) is plain
