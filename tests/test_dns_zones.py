"""dns_zones/: generated from the address plan, loadable, and accepted by Knot's checkers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dns.name
import pytest

from ims.dns.errors import ZoneFileError
from ims.dns.worlds import WORLDS, render_world
from ims.dns.zones import load_zone_file, load_zone_set

ROOT = Path(__file__).resolve().parents[1]
ZONES = ROOT / "dns_zones"
ZONE_FILES = sorted(ZONES.glob("*/*.zone"))


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_checked_in_zone_files_match_the_address_plan(world: str) -> None:
    expected = render_world(WORLDS[world])
    on_disk = {p.name: p.read_text(encoding="ascii") for p in (ZONES / world).glob("*.zone")}
    assert on_disk == expected, "run: python3 -m ims dns generate"


def test_enum_tree_is_the_same_in_both_worlds() -> None:
    texts = {(ZONES / w / "e164.arpa.zone").read_text() for w in WORLDS}
    assert len(texts) == 1


def test_loopback_world_uses_the_lead_address_plan() -> None:
    alpha, beta = WORLDS["loopback"].operators
    plan = {(r.name, r.ipv4, r.port) for r in (*alpha.roles, *alpha.borders)}
    assert plan == {("pcscf", "127.0.1.1", 5100), ("scscf", "127.0.1.2", 5102),
                    ("border1", "127.0.1.3", 5104), ("border2", "127.0.1.4", 5106),
                    ("border3", "127.0.1.5", 5108)}
    assert [(b.priority, b.weight, b.tls_port) for b in beta.borders] == [
        (10, 60, 6204), (10, 40, 6206), (20, 0, 6208)]
    ports = [r.port for op in (alpha, beta) for r in (*op.roles, *op.borders)]
    assert len(set(ports)) == len(ports)  # AAAA ::1 everywhere: ports keep roles apart


def test_testbed_world_uses_the_lead_address_plan() -> None:
    alpha, beta = WORLDS["testbed"].operators
    assert [r.ipv4 for r in (*alpha.roles, *alpha.borders)] == [
        f"192.0.2.{n}" for n in range(10, 15)]
    assert [r.ipv6 for r in (*beta.roles, *beta.borders)] == [
        f"2001:db8:0:2::{n}" for n in range(20, 25)]
    assert {r.port for r in (*alpha.roles, *alpha.borders)} == {5060}
    assert alpha.nameserver.ipv4 == "192.0.2.53"


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_zone_sets_load(world: str) -> None:
    zone_set = load_zone_set(ZONES / world)
    assert {o.to_text() for o in zone_set.zones} == {
        "e164.arpa.", "3gppnetwork.org.", "ims.mnc001.mcc001.3gppnetwork.org.",
        "ims.mnc002.mcc001.3gppnetwork.org."}


@pytest.mark.parametrize("path", ZONE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_kzonecheck_accepts_every_zone_file(path: Path) -> None:
    kzonecheck = shutil.which("kzonecheck")
    if kzonecheck is None:
        pytest.skip("kzonecheck not found (Debian package knot-dnssecutils)")
    origin = path.name.removesuffix(".zone")
    result = subprocess.run([kzonecheck, "-o", origin, str(path)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_knotc_zone_check_accepts_every_zone(world: str, tmp_path: Path) -> None:
    """Knot's semantic checks through knotc, available with the knot package alone."""
    knotc = shutil.which("knotc") or ("/usr/sbin/knotc" if Path("/usr/sbin/knotc").exists()
                                      else None)
    if knotc is None:
        pytest.skip("knotc not found (Debian package knot)")
    zones = "\n".join(f"  - domain: {p.name.removesuffix('.zone')}\n    file: {p.name}"
                      for p in sorted((ZONES / world).glob("*.zone")))
    (tmp_path / "db").mkdir()
    conf = tmp_path / "knot.conf"
    conf.write_text(
        f'server:\n    rundir: "{tmp_path}"\n'
        f'database:\n    storage: "{tmp_path / "db"}"\n'
        f'template:\n  - id: default\n    storage: "{ZONES / world}"\n'
        f"    semantic-checks: on\n"
        f"zone:\n{zones}\n"
    )
    result = subprocess.run([knotc, "-c", str(conf), "-f", "zone-check"], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "line", "defect"),
    [
        ("$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nfoo A 1.2.3\nbar A 1.2.3.4\n", 4,
         "malformed"),
        ("$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nfoo BOGUS 1\n", 4, "unknown rdatatype"),
        ('$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nfoo NAPTR 10 10 "u"\n', 4, ""),
        ("$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nns1 A 127.0.0.1\nwww CNAME ns1\n", 5,
         "CNAME"),
        ("$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\n*.x A 127.0.0.1\n", 4, "wildcards"),
        ("$TTL 300\n@ NS ns1\nns1 A 127.0.0.1\n", None, "no SOA"),
        ("$TTL 300\n@ SOA ns1 h 1 2 3 4 5\nns1 A 127.0.0.1\n", None, "no NS"),
    ],
)
def test_malformed_zone_names_file_line_and_defect(
    tmp_path: Path, text: str, line: int | None, defect: str
) -> None:
    path = tmp_path / "x.test.zone"
    path.write_text(text)
    with pytest.raises(ZoneFileError) as info:
        load_zone_file(path)
    assert info.value.path == path
    assert info.value.line == line
    assert defect in info.value.defect


def test_delegation_to_an_unserved_zone_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.test.zone").write_text(
        "$TTL 300\n@ SOA ns1 h 1 2 3 4 5\n@ NS ns1\nns1 A 127.0.0.1\nsub NS ns1\n")
    with pytest.raises(ZoneFileError, match="no referrals"):
        load_zone_set(tmp_path)


def test_missing_or_empty_zone_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ZoneFileError, match=r"no \*\.zone"):
        load_zone_set(tmp_path)
    with pytest.raises(ZoneFileError, match="not a directory"):
        load_zone_set(tmp_path / "missing")


def test_origin_comes_from_the_file_name() -> None:
    zone = load_zone_file(ZONES / "loopback" / "e164.arpa.zone")
    assert zone.origin == dns.name.from_text("e164.arpa.")
