"""bench/operator_rates.py without running anything: users, sipp's injection file, Kamailio's
db_text tables, the generated operator configuration and store, the subjects' command lines,
the scenario files, the report; and that our digest server accepts credentials written the
way sipp 3.6.1's [authentication] writes them."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench import BenchConfigError
from bench.__main__ import BENCHMARKS, build_parser
from bench.operator_rates import (
    ALPHA_DOMAIN,
    CALL_SCENARIO,
    DIGEST_REALM,
    REGISTER_SCENARIO,
    REGISTRAR_CFG,
    STORE_FILE,
    BenchUser,
    MeasureResult,
    authentication_keyword,
    bench_users,
    dbtext_tables,
    injection_csv,
    markdown_table,
    operator_toml,
    provision_store,
    ratio_lines,
    subjects,
)
from bench.proxy_cps import ProxyLaunch, StepResult, SubjectResult
from bench.sipp import Endpoint
from ims.config import Role, load_config, parse_config
from ims.sip.digest import (
    DigestAlgorithm,
    DigestServer,
    DigestServerConfig,
    Ok,
    StoredHA1,
    parse_challenges,
    parse_credentials,
)

PCSCF = Endpoint("127.0.1.1", 45100)
SCSCF = Endpoint("127.0.1.2", 45102)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# --- users and the injection file ------------------------------------------------------------


def test_bench_users_are_distinct_with_own_passwords() -> None:
    users = bench_users(1000)
    assert len({u.user for u in users}) == 1000
    assert len({u.password for u in users}) == 1000
    assert users[0].impi() == f"bench00001@{ALPHA_DOMAIN}"
    assert users[0].impu() == f"sip:bench00001@{ALPHA_DOMAIN}"


@pytest.mark.parametrize("count", [0, 1, 100_000])
def test_bench_users_refuses_counts_it_cannot_use(count: int) -> None:
    with pytest.raises(BenchConfigError, match=r"users must be in 2\.\.99999"):
        bench_users(count)


def test_injection_csv_is_sequential_one_user_per_line() -> None:
    users = bench_users(3)
    lines = injection_csv(users).splitlines()
    assert lines[0] == "SEQUENTIAL"
    assert len(lines) == 4
    user, keyword = lines[2].split(";")
    assert user == "bench00002"
    assert keyword == authentication_keyword(users[1])


def test_authentication_keyword_has_no_nested_keyword() -> None:
    """sipp 3.6.1 ends a keyword at its first "]": the keyword carries literal values."""
    keyword = authentication_keyword(BenchUser("bench00007", "pw-7"))
    assert keyword == (
        f"[authentication username=bench00007@{ALPHA_DOMAIN} password=pw-7]"
    )
    assert keyword.count("[") == 1 and keyword.count("]") == 1


@pytest.mark.parametrize("bad", ["a;b", "a]b", "a b", "a\nb"])
def test_injection_csv_refuses_what_sipp_would_split(bad: str) -> None:
    with pytest.raises(BenchConfigError, match="cannot go in a sipp CSV"):
        injection_csv([BenchUser("bench1", bad)])


# --- Kamailio's db_text tables ---------------------------------------------------------------


def test_dbtext_subscriber_rows_hold_the_md5_ha1_of_the_whole_username() -> None:
    """RFC 2617 section 3.2.2.2: HA1 = MD5(username:realm:password), username user@realm."""
    users = bench_users(2)
    tables = dbtext_tables(users)
    _header, first, second = tables["subscriber"].splitlines()
    fields = first.split(":")
    ha1 = md5(f"bench00001@{ALPHA_DOMAIN}:{ALPHA_DOMAIN}:{users[0].password}")
    assert fields == ["1", "bench00001", ALPHA_DOMAIN, "-", ha1, ha1]
    assert second.split(":")[1] == "bench00002"
    assert all(fields), "db_text refuses empty (null) columns"
    assert users[0].password not in tables["subscriber"]
    assert tables["version"].splitlines()[1] == "1:subscriber:7"


def test_dbtext_subscriber_header_matches_kamailios_schema() -> None:
    shipped = Path("/usr/share/kamailio/dbtext/kamailio/subscriber")
    if not shipped.is_file():
        pytest.skip(f"{shipped} missing (Debian package kamailio provides it)")
    ours = dbtext_tables(bench_users(2))["subscriber"].splitlines()[0]
    assert ours.split() == shipped.read_text().splitlines()[0].split()


def test_dbtext_refuses_a_colon_in_a_user() -> None:
    with pytest.raises(BenchConfigError, match="db_text"):
        dbtext_tables([BenchUser("a:b", "pw")])


# --- the operator configuration and store ----------------------------------------------------


def test_operator_toml_is_a_valid_alpha_with_pcscf_and_scscf(tmp_path: Path) -> None:
    path = tmp_path / "alpha.toml"
    text = operator_toml(PCSCF, SCSCF)
    config = parse_config(text, path)
    assert config.roles == (Role.PCSCF, Role.SCSCF)
    assert config.operator.home_domain == ALPHA_DOMAIN
    assert config.pcscf is not None and config.scscf is not None
    assert (config.pcscf.listen[0].host, config.pcscf.listen[0].port) == ("127.0.1.1", 45100)
    assert (config.scscf.listen[0].host, config.scscf.listen[0].port) == ("127.0.1.2", 45102)
    # sipp's [authentication] computes MD5 only; the realm is the P-CSCF's IP (see the doc).
    assert config.scscf.algorithms == (DigestAlgorithm.MD5,)
    assert config.scscf.realm == DIGEST_REALM == PCSCF.host
    assert config.store.path == tmp_path / STORE_FILE


def test_provisioned_store_holds_ha1_for_the_realm(tmp_path: Path) -> None:
    from ims.config import StoreConfig
    from ims.store import open_store

    users = bench_users(3)
    path = tmp_path / STORE_FILE
    provision_store(path, users)
    with open_store(StoreConfig("sqlite", path)) as store:
        found = store.subscribers.get(users[2].impi())
        assert found is not None
        assert found.impus == (users[2].impu(),)
        secret = found.secret_for(DIGEST_REALM)
        assert isinstance(secret, StoredHA1)
        expected = md5(f"{users[2].impi()}:{DIGEST_REALM}:{users[2].password}")
        assert secret.values[DigestAlgorithm.MD5] == expected
        assert len(store.subscribers.list()) == 3


def test_sipp_style_credentials_pass_our_digest_server() -> None:
    """What sipp 3.6.1 sends (cnonce= before nonce=, no quotes on qop, digest-uri the
    Request-URI sip:REMOTE_IP:PORT) is read by parameter, not by position (RFC 7616 section
    3.4: the order of the parameters carries no meaning)."""
    server = DigestServer(DigestServerConfig(
        realm=DIGEST_REALM, secret_key=b"k" * 32, algorithms=(DigestAlgorithm.MD5,),
    ))  # fmt: skip
    now = 1_800_000_000.0
    (challenge,) = parse_challenges(*server.challenge_values(now))
    user = BenchUser("bench00001", "pw-00001-secret")
    uri = f"sip:{PCSCF}"
    ha1 = md5(f"{user.impi()}:{DIGEST_REALM}:{user.password}")
    response = md5(f"{ha1}:{challenge.nonce}:00000001:6b8b4567:auth:{md5('REGISTER:' + uri)}")
    header = (
        f'Digest username="{user.impi()}",realm="{DIGEST_REALM}",cnonce="6b8b4567",'
        f'nc=00000001,qop=auth,uri="{uri}",nonce="{challenge.nonce}",'
        f'response="{response}",algorithm=MD5'
    )
    credentials = parse_credentials(header)
    assert server.select([credentials]) is credentials
    secret = StoredHA1({DigestAlgorithm.MD5: ha1})
    verdict = server.verify(credentials, method="REGISTER", request_uri=uri, secret=secret,
                            now=now, body=b"")
    assert isinstance(verdict, Ok)


# --- subjects --------------------------------------------------------------------------------


def test_kamailio_command_writes_its_tables_and_passes_its_parameters(tmp_path: Path) -> None:
    users = bench_users(2)
    kamailio, _ = subjects(users, tmp_path / "template.sqlite")
    launch = ProxyLaunch(PCSCF, PCSCF, 1, tmp_path / "k")
    argv = kamailio.command(launch)
    assert argv[argv.index("-f") + 1] == str(REGISTRAR_CFG)
    assert "LISTEN=udp:127.0.1.1:45100" in argv
    assert "CHILDREN=1" in argv
    assert f'DBURL="text://{tmp_path / "k" / "dbtext"}"' in argv
    assert (tmp_path / "k" / "dbtext" / "subscriber").read_text() == dbtext_tables(users)[
        "subscriber"
    ]


def test_ueconnect_command_runs_mno_on_a_copy_of_the_store(tmp_path: Path) -> None:
    users = bench_users(2)
    template = tmp_path / "template.sqlite"
    provision_store(template, users)
    _, ueconnect = subjects(users, template)
    launch = ProxyLaunch(PCSCF, SCSCF, 1, tmp_path / "u")
    launch.workdir.mkdir()
    argv = ueconnect.command(launch)
    assert argv[1:4] == ["-m", "ims", "mno"]
    config = load_config(argv[argv.index("--config") + 1])
    assert config.scscf is not None and config.scscf.listen[0].port == SCSCF.port
    assert (launch.workdir / STORE_FILE).read_bytes() == template.read_bytes()


def test_registrar_cfg_takes_the_parameters_the_command_sets() -> None:
    text = REGISTRAR_CFG.read_text()
    for name in ("LISTEN", "CHILDREN", "REALM", "DBURL"):
        assert f"#!trydef {name} " in text
    assert 'lookup("location")' in text and 'save("location")' in text
    assert 'modparam("usrloc", "db_mode", 0)' in text


# --- scenario files --------------------------------------------------------------------------


def _sends(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return [(e.text or "").strip() for e in root.iter("send")]


def test_register_scenario_uses_the_remote_as_request_uri_and_injects_the_keyword() -> None:
    first, second = _sends(REGISTER_SCENARIO)
    assert first.startswith("REGISTER sip:[remote_ip]:[remote_port] SIP/2.0")
    assert "Authorization" not in first and "[field1]" not in first
    assert "[field1]" in second and "CSeq: 2 REGISTER" in second
    root = ET.parse(REGISTER_SCENARIO).getroot()
    assert any(e.get("response") == "401" and e.get("auth") == "true" for e in root.iter("recv"))


def test_call_scenario_follows_the_record_route_set() -> None:
    """RFC 3261 section 12.1.2: the route set comes from the 200's Record-Route."""
    root = ET.parse(CALL_SCENARIO).getroot()
    assert any(e.get("response") == "200" and e.get("rrs") == "true" for e in root.iter("recv"))
    invite, ack, bye = _sends(CALL_SCENARIO)
    assert invite.startswith("INVITE sip:[$callee]@[$domain] SIP/2.0")
    for request in (ack, bye):
        assert request.split()[1] == "[next_url]"
        assert "[routes]" in request


# --- the registry and the report -------------------------------------------------------------


def test_registered_in_bench_main() -> None:
    assert "operator_rates" in [b.name for b in BENCHMARKS]
    args = build_parser().parse_args(
        ["operator_rates", "--subjects", "kamailio", "--measures", "call", "--users", "10"]
    )
    assert args.subjects == ["kamailio"] and args.measures == ["call"] and args.users == 10


def _step(rate: float, cpu_ms: float, count: int = 1000) -> StepResult:
    return StepResult(
        target_cps=int(rate), achieved_cps=rate, calls=count, successful=count, failed=0,
        unexpected_messages=0, retransmissions=0, proxy_cpu_seconds=cpu_ms * count / 1000,
        generator_cpu_seconds=0.1, wall_seconds=3.0,
    )  # fmt: skip


def test_report_table_and_ratios() -> None:
    results = [
        MeasureResult("register", SubjectResult("kamailio", 1, _step(2000, 0.3), "ceiling")),
        MeasureResult("register", SubjectResult("ueconnect", 1, _step(500, 1.5), "queueing")),
        MeasureResult("call", SubjectResult("kamailio", 1, None, "", skipped="no kamailio")),
        MeasureResult("call", SubjectResult("ueconnect", 1, _step(400, 2.0), "failing")),
    ]
    table = markdown_table(results)
    assert "| register | kamailio | 2000 registrations/s | 0.300 | ceiling |" in table
    assert "| call | kamailio | skipped | | no kamailio |" in table
    lines = ratio_lines(results)
    assert len(lines) == 1  # no call ratio without the anchor's figure
    assert lines[0].startswith("register: ueconnect / kamailio = 0.25 (500 / 2000")
    assert "CPU each x5.0" in lines[0]
