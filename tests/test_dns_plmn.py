"""PLMN identifiers and IMS home domains (3GPP TS 23.003)."""

from __future__ import annotations

import pytest

from ims.dns.errors import InvalidMnoId
from ims.dns.plmn import home_domain, mno_domain, parse_plmn


def test_ts23003_section_13_2_two_digit_mnc_gets_a_leading_zero() -> None:
    assert home_domain("001", "01", 2) == "ims.mnc001.mcc001.3gppnetwork.org"
    assert home_domain("001", "02", 2) == "ims.mnc002.mcc001.3gppnetwork.org"


def test_ts23003_section_13_2_three_digit_mnc_is_kept() -> None:
    assert home_domain("310", "410", 3) == "ims.mnc410.mcc310.3gppnetwork.org"
    assert home_domain("310", "010", 3) == "ims.mnc010.mcc310.3gppnetwork.org"


def test_mnc_length_comes_from_configuration_not_from_the_digits() -> None:
    with pytest.raises(InvalidMnoId, match="uses 2-digit MNCs"):
        home_domain("001", "001", 2)
    with pytest.raises(InvalidMnoId, match="uses 3-digit MNCs"):
        home_domain("310", "41", 3)
    # The concatenated form is split by the configured length.
    assert str(parse_plmn("00102", {"001": 2})) == "001-02"
    assert str(parse_plmn("310410", {"310": 3})) == "310-410"
    with pytest.raises(InvalidMnoId, match="no configured MNC length"):
        parse_plmn("99901", {"001": 2})


@pytest.mark.parametrize(
    ("mno_id", "domain"),
    [
        ("001-01", "ims.mnc001.mcc001.3gppnetwork.org"),
        ("00102", "ims.mnc002.mcc001.3gppnetwork.org"),
        ("ims.mnc002.mcc001.3gppnetwork.org", "ims.mnc002.mcc001.3gppnetwork.org"),
        ("IMS.MNC001.MCC001.3gppnetwork.org.", "ims.mnc001.mcc001.3gppnetwork.org"),
    ],
)
def test_mno_identifier_is_plmn_or_home_domain(mno_id: str, domain: str) -> None:
    assert mno_domain(mno_id, {"001": 2}) == domain


@pytest.mark.parametrize("bad", ["", "01-01", "001-1", "001-0001", "0010", "not a domain", "-a.b"])
def test_bad_mno_identifiers_are_refused(bad: str) -> None:
    with pytest.raises(InvalidMnoId):
        mno_domain(bad, {"001": 2})
