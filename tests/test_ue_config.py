"""UE config files (ue_ua/config.py): each key validated with a message naming file, key,
line and fix; [rules] in the rule-set shape; a written file reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from ims.config import ConfigError, ConfigFileError, ConfigSyntaxError, ConfigValueError
from ims.permission.outcomes import Decision
from ue_ua.client import UeConfig
from ue_ua.config import load_ue_config, ue_config_text
from ue_ua.permissions import RuleBook

ALPHA = "ims.mnc001.mcc001.3gppnetwork.org"
GOOD = {
    "impu": f'"sip:+15550100001@{ALPHA}"',
    "impi": f'"bill@{ALPHA}"',
    "password": '"bill-demo"',
    "home_domain": f'"{ALPHA}"',
    "pcscf": '"127.0.1.1:5100"',
}


def _write(tmp_path: Path, ue: dict[str, str], extra: str = "") -> Path:
    path = tmp_path / "bill.toml"
    body = "".join(f"{key} = {value}\n" for key, value in ue.items())
    path.write_text(f"[ue]\n{body}{extra}", encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigValueError) as caught:
        load_ue_config(path)
    return [p.format(str(path)) for p in caught.value.problems]


def test_a_minimal_file_gives_the_defaults(tmp_path: Path) -> None:
    config, rules = load_ue_config(_write(tmp_path, GOOD))
    assert config == UeConfig(name="bill", impu=f"sip:+15550100001@{ALPHA}",
                              impi=f"bill@{ALPHA}", password="bill-demo", home_domain=ALPHA,
                              pcscf=("127.0.1.1", 5100))  # fmt: skip
    assert rules is None
    assert UeConfig.load(tmp_path / "bill.toml") == config


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("impu", '"tel:+15550100001"', "is not a sip: URI"),
     ("impu", '"not a uri"', "is not a URI"),
     ("impu", '"sip:+15550100001@example.org"', "is not in home_domain"),
     ("impu", "5", "is not a string"),
     ("impi", '"bill smith"', "without spaces"),
     ("password", '""', "is empty"),
     ("home_domain", '"not_a domain"', "is not a domain name"),
     ("pcscf", '"127.0.1.1"', "is not an address; expected the P-CSCF (UDP) as \"HOST:PORT\""),
     ("pcscf", '"pcscf.example:5060"', "HOST an IP literal"),
     ("pcscf", '"127.0.1.1:70000"', "PORT 1-65535"),
     ("bind_host", '"localhost"', "is not an IP address"),
     ("transport_policy", '"relays"', 'expected "all" or "relay"'),
     ("stun_server", '"stun.example"', "a STUN server"),
     ("setup_timeout", "0", "out of range"),
     ("setup_timeout", "301", "out of range"),
     ("setup_timeout", '"ten"', "is not a number"),
     ("name", '""', "is not a usable display name"),
     ("pasword", '"x"', "unknown key; did you mean 'password'?")],
)  # fmt: skip
def test_each_key_is_checked_and_the_message_names_file_key_line_and_fix(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    path = _write(tmp_path, {**GOOD, key: value})
    problems = _problems(path)
    line = list({**GOOD, key: value}).index(key) + 2
    assert any(p.startswith(f"{path}: ue.{key} (line {line}): ") and message in p
               for p in problems), problems  # fmt: skip


@pytest.mark.parametrize("key", ["impu", "impi", "password", "home_domain", "pcscf"])
def test_each_required_key_missing_is_named(tmp_path: Path, key: str) -> None:
    path = _write(tmp_path, {k: v for k, v in GOOD.items() if k != key})
    assert any(f"ue.{key}" in p and "missing; expected" in p for p in _problems(path))


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    path = _write(tmp_path, {**GOOD, "pcscf": '"x"', "transport_policy": '"y"'}, "[extra]\n")
    problems = _problems(path)
    assert len(problems) == 3
    assert any("extra" in p and "sections are [ue], [rules]" in p for p in problems)


def test_optional_keys_and_ipv6(tmp_path: Path) -> None:
    config, _ = load_ue_config(_write(tmp_path, {
        **GOOD, "name": '"Bill"', "pcscf": '"[::1]:5100"', "bind_host": '"::1"',
        "transport_policy": '"relay"', "stun_server": '"192.0.2.53"', "setup_timeout": "4",
    }))  # fmt: skip
    assert config.pcscf == ("::1", 5100) and config.bind_host == "::1"
    assert config.transport_policy == "relay" and config.setup_timeout == 4.0
    assert config.stun_server == ("192.0.2.53", 3478)  # RFC 8489 section 18.4 default port
    assert config.name == "Bill"


def test_password_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "bill.pw").write_text("s3cret\n", encoding="utf-8")
    ue = {k: v for k, v in GOOD.items() if k != "password"}
    config, _ = load_ue_config(_write(tmp_path, {**ue, "password_file": '"bill.pw"'}))
    assert config.password == "s3cret"
    both = _problems(_write(tmp_path, {**GOOD, "password_file": '"bill.pw"'}))
    assert any("password and password_file are both set" in p for p in both)
    missing = _problems(_write(tmp_path, {**ue, "password_file": '"nope.pw"'}))
    assert any("ue.password_file" in p and "cannot read" in p for p in missing)
    (tmp_path / "empty.pw").write_text("\n", encoding="utf-8")
    empty = _problems(_write(tmp_path, {**ue, "password_file": '"empty.pw"'}))
    assert any("holds no password" in p for p in empty)


RULES = """
[rules]
version = 1

[[rules.rules]]
id = "friends"
action = "allow"
peer = "tel:+15550100002"

[[rules.rules]]
id = "eve"
action = "deny"
peer = "tel:+15550100004"
expires = 2030-01-01T00:00:00Z
"""


def test_rules_in_the_rule_set_shape_and_the_shorthand(tmp_path: Path) -> None:
    _, rules = load_ue_config(_write(tmp_path, GOOD, RULES))
    assert rules is not None and [r.id for r in rules.rules] == ["friends", "eve"]
    assert rules.rules[1].action is Decision.DENY
    assert rules.rules[1].expires == "2030-01-01T00:00:00Z"  # a TOML date-time taken as RFC 3339
    short = '\n[[rules]]\nid = "all"\naction = "allow"\n'
    _, rules = load_ue_config(_write(tmp_path, GOOD, short))
    assert rules is not None and rules.rules[0].id == "all"


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [(RULES.replace('peer = "tel:+15550100004"', 'peer = "bogus"'), "rules.rules[1] (line 16)",
      'rule "eve": peer "bogus" is not'),
     (RULES.replace('action = "allow"', 'action = "maybe"'), "rules.rules[0]",
      'unknown action "maybe"'),
     (RULES.replace('id = "eve"', 'id = "friends"'), "rules.rules[1]", "id appears twice"),
     (RULES.replace("version = 1", "version = 2"), "rules", "version 2 is not supported"),
     (RULES.replace("version = 1\n", ""), "rules", "has no version; add version = 1"),
     ('\n[[rules]]\nid = "x"\naction = "allow"\ncolour = "red"\n', "rules[0]",
      'unknown member "colour"')],
)  # fmt: skip
def test_rule_problems_name_the_rule(tmp_path: Path, extra: str, key: str, message: str) -> None:
    problems = _problems(_write(tmp_path, GOOD, extra))
    assert any(f": {key}" in p and message in p for p in problems), problems


def test_file_and_syntax_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file; give the path of a UE TOML file"):
        load_ue_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[ue]\nimpu = "sip:x@y.z\n', encoding="utf-8")
    with pytest.raises(ConfigSyntaxError, match=r"line 2.*invalid TOML"):
        load_ue_config(bad)
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ue: missing; a UE file needs a \[ue\] section"):
        load_ue_config(empty)


def test_a_written_file_reads_back(tmp_path: Path) -> None:
    config = UeConfig(name='Bill "B" Ünicode', impu=f"sip:+15550100001@{ALPHA}",
                      impi=f"bill@{ALPHA}", password='p"w\\d', home_domain=ALPHA,
                      pcscf=("::1", 5100), bind_host="::1", transport_policy="relay",
                      stun_server=("127.0.0.1", 3478), setup_timeout=2.5)  # fmt: skip
    book = RuleBook()
    book.allow("friends", peer="tel:+15550100002", application="com.example.pong")
    book.deny("eve", peer="tel:+15550100004", expires="2030-01-01T00:00:00Z")
    path = tmp_path / "out.toml"
    path.write_text(ue_config_text(config, rules=book, comment="line one\nline two"),
                    encoding="utf-8")  # fmt: skip
    assert path.read_text(encoding="utf-8").startswith("# line one\n# line two\n[ue]\n")
    loaded, rules = load_ue_config(path)
    assert loaded == config
    assert rules is not None and rules.rules == book.rules
