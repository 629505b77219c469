"""docs/extension.md section 7: a `Require: ueconnect` INVITE for a number nobody has ends in
404 with `Reason: ueconnect;cause=7`, one for an operator that does not exist in 604 with
`Reason: ueconnect;cause=8`, wherever the refusal is made: the originating S-CSCF (a number of
its own domain), the border's locator (ENUM NXDOMAIN: 404; no such PLMN: 604), or the peer
operator's S-CSCF (a number of its domain nobody has). One Reason of ours, never two; a call
without the extension gets the same status without it (RFC 3326 Reason is ours to add only
for the extension's outcomes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ims.sip.uri import parse_uri
from ims.sip.useragent import CallFailed
from tests.test_operator_flows import ALPHA, HELP, run, world


@pytest.mark.parametrize(
    ("target", "extra", "status", "reason"),
    [
        ("tel:+15550109999", [], 404, "ueconnect;cause=7"),  # ENUM NXDOMAIN, at the border
        ("tel:+15550109999", [("Target-MNO", "001-09")], 604, "ueconnect;cause=8"),  # locator
        (f"sip:nobody@{ALPHA}", [], 404, "ueconnect;cause=7"),  # the originating S-CSCF
        ("tel:+15550100099", [("Target-MNO", "001-02")], 404, "ueconnect;cause=7"),  # at Beta
    ],
    ids=["enum-nxdomain", "unknown-operator", "own-domain", "peer-operator"],
)
def test_section_7_unknown_number_404_cause_7_unknown_operator_604_cause_8(
        tmp_path: Path, target: str, extra: list[tuple[str, str]], status: int,
        reason: str) -> None:
    async def scenario() -> None:
        async with world(tmp_path, register=("bill",)) as w:
            with pytest.raises(CallFailed) as failed:
                await w.ues["bill"].call(parse_uri(target), extra=[*HELP, *extra])
            response = failed.value.response
            assert response.status_code == status, response.reason
            assert response.headers.get_all("Reason") == [reason]
            # Without the extension: the same status, no Reason of ours.
            with pytest.raises(CallFailed) as plain:
                await w.ues["bill"].call(parse_uri(target), extra=extra)
            assert plain.value.response.status_code == status
            assert not plain.value.response.headers.get_all("Reason")

    run(scenario())
