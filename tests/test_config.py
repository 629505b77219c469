"""Tests for ims.config: the operator TOML file, its validation and its error messages."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims.config import (
    ConfigError,
    ConfigFileError,
    ConfigSyntaxError,
    ConfigValueError,
    OperatorConfig,
    Role,
    iter_listeners,
    load_config,
    parse_config,
)
from ims.sip.address import Address
from ims.sip.digest import DigestAlgorithm

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
ALPHA_DOMAIN = "ims.mnc001.mcc001.3gppnetwork.org"
BETA_DOMAIN = "ims.mnc002.mcc001.3gppnetwork.org"

MINIMAL = """\
[operator]
name = "Alpha"
plmn = "001-01"
mnc_digits = 2

[pcscf]
listen = ["udp:127.0.1.1:5100"]
"""


def parse(text: str, tmp_path: Path, name: str = "alpha.toml") -> OperatorConfig:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    return str(info.value).splitlines()


# ---- the examples ------------------------------------------------------------------------


def test_alpha_example_is_the_loopback_plan() -> None:
    config = load_config(EXAMPLES / "alpha.toml")
    assert config.roles == (Role.PCSCF, Role.SCSCF, Role.BORDER)
    assert config.operator.name == "Alpha"
    assert str(config.operator.plmn) == "001-01"
    assert config.operator.home_domain == ALPHA_DOMAIN
    assert config.pcscf is not None and config.scscf is not None and config.border is not None
    assert Address("UDP", "127.0.1.1", 5100) in config.pcscf.listen
    assert Address("TCP", "127.0.1.2", 5102) in config.scscf.listen
    assert {(a.host, a.port) for a in config.border.listen} == {
        ("127.0.1.3", 5104), ("127.0.1.4", 5106), ("127.0.1.5", 5108)}
    assert config.scscf.realm == ALPHA_DOMAIN
    assert config.scscf.algorithms == (DigestAlgorithm.SHA_256, DigestAlgorithm.MD5)
    assert (config.dns.server.host, config.dns.server.port) == ("127.0.0.1", 53530)
    # Relative paths resolve against the file's directory, not the working directory.
    assert config.store.path == EXAMPLES / "alpha.sqlite"


def test_beta_example_mirrors_alpha_on_127_0_2() -> None:
    config = load_config(EXAMPLES / "beta.toml")
    assert str(config.operator.plmn) == "001-02"
    assert config.operator.home_domain == BETA_DOMAIN
    for _, address in iter_listeners(config):
        assert ipaddress.ip_address(address.host) in ipaddress.ip_network("127.0.2.0/24")
        assert 5200 <= address.port <= 5208


def test_examples_admit_each_other_and_nobody_else() -> None:
    alpha = load_config(EXAMPLES / "alpha.toml")
    beta = load_config(EXAMPLES / "beta.toml")
    assert alpha.border is not None and beta.border is not None
    (to_beta,) = alpha.border.peers
    (to_alpha,) = beta.border.peers
    assert (to_beta.name, to_beta.domain, to_beta.plmn) == ("Beta", BETA_DOMAIN,
                                                             beta.operator.plmn)
    assert to_alpha.domain == ALPHA_DOMAIN
    assert alpha.border.peer_for_source("127.0.2.4") == to_beta
    assert alpha.border.peer_for_source("::1") == to_beta
    assert alpha.border.peer_for_source("127.0.1.4") is None  # its own network
    assert alpha.border.peer_for_source("192.0.2.1") is None
    assert beta.border.peer_for_source("127.0.1.3") == to_alpha


def test_locator_config_follows_the_dns_section() -> None:
    locator = load_config(EXAMPLES / "alpha.toml").dns.locator_config()
    (ns,) = locator.nameservers
    assert (ns.address, ns.port) == ("127.0.0.1", 53530)
    assert locator.enum_suffix == "e164.arpa."
    assert dict(locator.mnc_lengths) == {"001": 2}


def test_digest_config_from_scscf_section() -> None:
    scscf = load_config(EXAMPLES / "alpha.toml").scscf
    assert scscf is not None
    digest = scscf.digest_config(b"k" * 32)
    assert digest.realm == ALPHA_DOMAIN
    assert digest.nonce_lifetime == 300
    assert set(digest.algorithms) == {DigestAlgorithm.SHA_256, DigestAlgorithm.MD5}


# ---- defaults ------------------------------------------------------------------------------


def test_ts23003_section_13_2_home_domain_is_derived_from_plmn(tmp_path: Path) -> None:
    config = parse(MINIMAL, tmp_path)
    assert config.operator.home_domain == ALPHA_DOMAIN
    three = MINIMAL.replace('"001-01"', '"310-410"').replace("mnc_digits = 2", "mnc_digits = 3")
    assert parse(three, tmp_path).operator.home_domain == "ims.mnc410.mcc310.3gppnetwork.org"


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    config = parse(MINIMAL, tmp_path)
    assert config.roles == (Role.PCSCF,)
    assert config.store.backend == "sqlite"
    assert config.store.path == tmp_path.resolve() / "alpha.sqlite"
    assert config.dns.enum_suffix == "e164.arpa"
    assert config.dns.timeout == 2.0
    assert config.log.level == "INFO"
    assert config.pcscf is not None and config.pcscf.keepalive == 30
    assert config.scscf is None and config.border is None and config.metrics is None
    assert config.realm == ALPHA_DOMAIN


def test_scscf_defaults_and_realm(tmp_path: Path) -> None:
    config = parse(MINIMAL + '[scscf]\nlisten = ["tcp:[::1]:5102"]\n', tmp_path)
    assert config.scscf is not None
    assert config.scscf.listen == (Address("TCP", "::1", 5102),)
    assert config.scscf.realm == ALPHA_DOMAIN
    assert (config.scscf.min_expires, config.scscf.default_expires,
            config.scscf.max_expires) == (60, 3600, 7200)
    custom = parse(MINIMAL + '[scscf]\nlisten = ["udp:127.0.1.2:5102"]\nrealm = "alpha.test"\n',
                   tmp_path)
    assert custom.realm == "alpha.test"


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    config = parse(MINIMAL + '[store]\npath = "../state/a.sqlite"\n[trace]\npath = "t.jsonl"\n',
                   sub)
    assert config.store.path == tmp_path.resolve() / "state" / "a.sqlite"
    assert config.trace is not None and config.trace.path == sub.resolve() / "t.jsonl"


def test_ipv6_listen_needs_brackets(tmp_path: Path) -> None:
    config = parse(MINIMAL.replace('"udp:127.0.1.1:5100"', '"udp:[::1]:5100"'), tmp_path)
    assert config.pcscf is not None
    assert str(config.pcscf.listen[0]) == "udp:[::1]:5100"
    lines = problems(MINIMAL.replace('"udp:127.0.1.1:5100"', '"udp:::1:5100"'), tmp_path)
    assert any("pcscf.listen[0]" in line and "not a valid listen address" in line
               for line in lines)


# ---- error messages ----------------------------------------------------------------------


def test_listen_error_names_file_key_line_value_and_the_expected_form(tmp_path: Path) -> None:
    text = MINIMAL.replace('["udp:127.0.1.1:5100"]',
                           '[\n    "udp:127.0.1.1:5100",\n    "udp:127.0.1.1:99999",\n]')
    lines = problems(text, tmp_path)
    assert lines == [
        'alpha.toml: pcscf.listen[1] (line 9): "udp:127.0.1.1:99999" is not a valid listen '
        "address; expected TRANSPORT:HOST:PORT with TRANSPORT udp|tcp, HOST an IP literal, "
        "PORT 1-65535".replace("alpha.toml", str(tmp_path / "alpha.toml")),
    ]


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    text = """\
[operator]
name = "Alpha"
plmn = "001-1"
mnc_digits = 4

[store]
backend = "redis"

[pcscf]
listen = ["udp:localhost:5100"]
keepalive = "30s"

[log]
level = "loud"
"""
    with pytest.raises(ConfigValueError) as info:
        parse(text, tmp_path)
    keys = [(p.key, p.line) for p in info.value.problems]
    assert keys == [
        ("operator.plmn", 3), ("operator.mnc_digits", 4), ("store.backend", 7),
        ("pcscf.listen[0]", 10), ("pcscf.keepalive", 11), ("log.level", 14),
    ]
    assert "\"redis\" is not available yet" in str(info.value)


def test_unknown_keys_are_errors_with_did_you_mean(tmp_path: Path) -> None:
    lines = problems(MINIMAL + "keep_alive = 20\nfoo = 1\n[scsf]\nlisten = []\n", tmp_path)
    assert any("pcscf.keep_alive (line 8): unknown key; did you mean 'keepalive'?" in line
               for line in lines)
    assert any("pcscf.foo (line 9): unknown key; known keys here:" in line for line in lines)
    assert any("scsf (line 10): unknown key; did you mean 'scscf'?" in line for line in lines)


def test_toml_syntax_errors_carry_tomllib_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigSyntaxError) as info:
        parse(MINIMAL + "bad = [1,\n", tmp_path)
    (problem,) = info.value.problems
    assert problem.line is not None and problem.line >= 8
    with pytest.raises(ConfigSyntaxError) as info:
        parse('[operator]\nname = "A"\nplmn = 001-01\n', tmp_path)
    (problem,) = info.value.problems
    assert (problem.line, problem.column) == (3, 9)
    assert "line 3, column 9: invalid TOML" in str(info.value)


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[operator]\nname = "\xe9"\n')
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        load_config(bad)


def test_operator_section_and_a_role_are_required(tmp_path: Path) -> None:
    lines = problems("[log]\nlevel = \"debug\"\n", tmp_path)
    assert any("operator: missing" in line for line in lines)
    assert any("no role configured" in line for line in lines)
    lines = problems(MINIMAL.split("[pcscf]")[0], tmp_path)
    assert len(lines) == 1 and "no role configured" in lines[0]


def test_mnc_length_comes_from_configuration(tmp_path: Path) -> None:
    lines = problems(MINIMAL.replace("mnc_digits = 2\n", ""), tmp_path)
    assert any("operator.mnc_digits (line 1): missing; expected 2 or 3" in line
               for line in lines)
    lines = problems(MINIMAL.replace("mnc_digits = 2", "mnc_digits = 3"), tmp_path)
    assert any("has a 2-digit MNC but MCC 001 uses 3-digit MNCs" in line for line in lines)


def test_two_listeners_on_one_address_are_refused(tmp_path: Path) -> None:
    text = MINIMAL + '[scscf]\nlisten = ["tcp:127.0.1.1:5102", "udp:127.0.1.1:5100"]\n'
    lines = problems(text, tmp_path)
    assert len(lines) == 1
    assert "scscf.listen[1] (line 9)" in lines[0]
    assert "same UDP address as pcscf.listen[0]" in lines[0]
    # UDP and TCP may share a port; a wildcard overlaps every address of its family.
    parse(MINIMAL.replace('"udp:127.0.1.1:5100"', '"udp:127.0.1.1:5100", "tcp:127.0.1.1:5100"'),
          tmp_path)
    lines = problems(MINIMAL + '[scscf]\nlisten = ["udp:0.0.0.0:5100"]\n', tmp_path)
    assert "overlaps pcscf.listen[0]" in lines[0]


def test_repeated_string_reports_the_line_of_the_repeat(tmp_path: Path) -> None:
    text = MINIMAL.replace('["udp:127.0.1.1:5100"]',
                           '[\n  "udp:127.0.1.1:5100",\n  "udp:127.0.1.1:5100",\n]')
    lines = problems(text, tmp_path)
    assert "pcscf.listen[1] (line 9)" in lines[0]


def test_rfc3261_section_10_3_expires_bounds_are_ordered(tmp_path: Path) -> None:
    text = MINIMAL + ('[scscf]\nlisten = ["udp:127.0.1.2:5102"]\nmin_expires = 600\n'
                      "default_expires = 60\nmax_expires = 0\n")
    lines = problems(text, tmp_path)
    assert any("scscf.max_expires (line 12): 0 is out of range" in line for line in lines)
    text = text.replace("max_expires = 0", "max_expires = 7200")
    lines = problems(text, tmp_path)
    assert lines[0].endswith("scscf.default_expires (line 11): must lie between min_expires "
                             "(600) and max_expires (7200); now 60 (RFC 3261 section 10.3 "
                             "step 7)")


def test_digest_algorithms(tmp_path: Path) -> None:
    base = MINIMAL + '[scscf]\nlisten = ["udp:127.0.1.2:5102"]\n'
    config = parse(base + 'algorithms = ["md5"]\n', tmp_path)
    assert config.scscf is not None and config.scscf.algorithms == (DigestAlgorithm.MD5,)
    lines = problems(base + 'algorithms = ["SHA-256", "SHA-1", "sha-256"]\n', tmp_path)
    assert ["algorithms[1]" in lines[0], "listed twice" in lines[1]] == [True, True]
    assert "is empty" in problems(base + "algorithms = []\n", tmp_path)[0]


def test_store_backends(tmp_path: Path) -> None:
    lines = problems(MINIMAL + '[store]\nbackend = "redis"\n', tmp_path)
    assert lines[0].endswith('store.backend (line 9): "redis" is not available yet; use "sqlite"')
    lines = problems(MINIMAL + '[store]\nbackend = "postgres"\n', tmp_path)
    assert "not a store backend" in lines[0]


PEERS = MINIMAL + """\
[border]
listen = ["udp:127.0.1.3:5104"]

[[border.peers]]
name = "Beta"
plmn = "001-02"
admit_from = ["127.0.2.0/24"]

[[border.peers]]
name = "Gamma"
plmn = "310-410"
admit_from = ["127.0.3.0/24"]
"""


def test_peers_need_a_configured_mnc_length_for_their_mcc(tmp_path: Path) -> None:
    lines = problems(PEERS, tmp_path)
    assert len(lines) == 1
    assert "border.peers[1].plmn (line 18): MCC 310 has no configured MNC length" in lines[0]
    config = parse(PEERS + '[dns.mnc_lengths]\n"310" = 3\n', tmp_path)
    assert config.border is not None
    assert [p.domain for p in config.border.peers] == [BETA_DOMAIN,
                                                       "ims.mnc410.mcc310.3gppnetwork.org"]


def test_peer_errors(tmp_path: Path) -> None:
    text = PEERS.replace('"310-410"', '"001-01"').replace('"Gamma"', '"beta"').replace(
        '"127.0.3.0/24"', '"127.0.3.1/24", "nonsense"')
    lines = problems(text + 'tls_fingerprint = "SHA-256 00"\n', tmp_path)
    text_of = "\n".join(lines)
    assert "border.peers[1].name (line 17): \"beta\" is also the name of border.peers[0]" \
        in text_of
    assert "border.peers[1].plmn (line 18): \"001-01\" is this operator's own PLMN" in text_of
    assert 'border.peers[1].admit_from[0] (line 19): "127.0.3.1/24" has host bits set; did ' \
           'you mean "127.0.3.0/24"?' in text_of
    assert "border.peers[1].admit_from[1] (line 19): \"nonsense\" is not a CIDR" in text_of
    assert "border.peers[1].tls_fingerprint (line 20)" in text_of


def test_peer_tls_options(tmp_path: Path) -> None:
    ca = tmp_path / "beta-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    fingerprint = "sha-256 " + ":".join(["ab"] * 32)
    text = PEERS.split("[[border.peers]]\nname = \"Gamma\"")[0]
    config = parse(text + f'tls_fingerprint = "{fingerprint}"\ntls_ca = "beta-ca.pem"\n',
                   tmp_path)
    assert config.border is not None
    (peer,) = config.border.peers
    assert peer.tls_fingerprint == "SHA-256 " + ":".join(["AB"] * 32)
    assert peer.tls_ca == ca.resolve()
    lines = problems(text + 'tls_ca = "missing.pem"\n', tmp_path)
    assert "border.peers[0].tls_ca (line 16)" in lines[0] and "no such file" in lines[0]


def test_border_tls_listener_needs_certificate_and_key(tmp_path: Path) -> None:
    text = MINIMAL + '[border]\nlisten = ["tls:127.0.1.3:6104"]\n'
    assert "tls_certificate and tls_private_key" in problems(text, tmp_path)[0]
    (tmp_path / "c.pem").write_text("x", encoding="ascii")
    (tmp_path / "k.pem").write_text("x", encoding="ascii")
    config = parse(text + 'tls_certificate = "c.pem"\ntls_private_key = "k.pem"\n', tmp_path)
    assert config.border is not None and config.border.listen[0].transport == "TLS"


def test_metrics_trace_log(tmp_path: Path) -> None:
    config = parse(MINIMAL + '[metrics]\nlisten = "[::1]:9101"\n[log]\nlevel = "debug"\n',
                   tmp_path)
    assert config.metrics is not None and str(config.metrics.listen) == "[::1]:9101"
    assert config.log.level == "DEBUG"
    lines = problems(MINIMAL + '[metrics]\nlisten = "udp:127.0.0.1:9101"\n[trace]\n', tmp_path)
    assert any("metrics.listen (line 9)" in line for line in lines)
    assert any("trace.path (line 10): missing" in line for line in lines)


def test_wrong_types_are_named(tmp_path: Path) -> None:
    lines = problems(MINIMAL.replace('name = "Alpha"', "name = 7") + "keepalive = true\n",
                     tmp_path)
    assert any("operator.name (line 2): 7 is not a string" in line for line in lines)
    assert any("pcscf.keepalive (line 8): true is not a number" in line for line in lines)
    lines = problems(MINIMAL + "[dns]\nserver = 53\n", tmp_path)
    assert "dns.server (line 9): 53 is not a string" in lines[0]
    lines = problems('operator = "Alpha"\n[pcscf]\nlisten = ["udp:127.0.0.1:5060"]\n', tmp_path)
    assert "operator (line 1): \"Alpha\" is not a table" in lines[0]


# ---- robustness: load or raise ConfigError, nothing else --------------------------------

_ODD_VALUES = st.sampled_from([
    '""', '"x"', "0", "-1", "1e400", "nan", "inf", "true", "[]", "[1, \"a\"]", "{}",
    '{ a = 1 }', '"udp:[::1]:0"', '"tcp:[:::1]:1"', '"001-0001"', '"127.0.0.1/33"',
    "1979-05-27", '"\\u00e9"', "[[1]]",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_in_any_key_loads_or_raises_config_error(data: st.DataObject) -> None:
    lines = (EXAMPLES / "alpha.toml").read_text(encoding="utf-8").splitlines()
    keyed = [i for i, line in enumerate(lines) if " = " in line and not line.startswith("#")]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.sampled_from(keyed))
        key = lines[i].split(" = ")[0]
        lines[i] = f"{key} = {data.draw(_ODD_VALUES)}"
    try:
        parse_config("\n".join(lines) + "\n", EXAMPLES / "fuzz.toml")
    except ConfigError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
