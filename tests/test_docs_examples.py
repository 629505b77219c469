"""The docs' examples are real: every docs/examples/*.toml passes `ueconnect mno --check`, and
every `ueconnect ...` command line quoted in README.md and docs/*.md parses with the real
command line parser (ims.cli.build_parser). A doc command that does not parse is a bug."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from ims.cli import build_parser
from ims.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.toml"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# How a command starts in the docs: `ueconnect`, the venv's, or `python3 -m ims`, maybe as root.
_PROGRAM = re.compile(r"^(?:sudo\s+)?(?:\S*/)?(?:ueconnect|python3 -m ims)(?=\s|$)")
_FENCE = re.compile(r"^\s*```")
_INLINE = re.compile(r"`([^`]+)`")
# What a command prints starts like one: `ueconnect mno: Alpha ...`, `ueconnect demo (play): ...`.
_OUTPUT = re.compile(r"^ueconnect [\w-]+(?: \([^)]*\))?:")


@dataclass(frozen=True)
class DocCommand:
    where: str  # "docs/x.md:12"
    text: str  # as quoted, continuation lines joined
    inline: bool  # quoted in running text rather than in a code block

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def doc_commands(path: Path) -> list[DocCommand]:
    """The `ueconnect` command lines of a Markdown file: lines of fenced code blocks (with
    `\\` continuations joined; program output such as `ueconnect mno: Alpha ...` left out)
    and inline code spans, also those a line break cuts in two."""
    found: list[DocCommand] = []
    name = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    in_block = False
    paragraph: list[str] = []
    paragraph_start = 0

    def scan_paragraph() -> None:
        for span in _INLINE.findall(" ".join(paragraph)):
            if _PROGRAM.match(span.strip()):
                found.append(DocCommand(f"{name}:{paragraph_start}", span.strip(), inline=True))
        paragraph.clear()

    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        if _FENCE.match(line):
            scan_paragraph()
            in_block = not in_block
            continue
        if in_block:
            start = number
            text = line.strip()
            while text.endswith("\\") and number < len(lines):
                text = text[:-1] + " " + lines[number].strip()
                number += 1
            if _PROGRAM.match(text) and not _OUTPUT.match(text):
                found.append(DocCommand(f"{name}:{start}", text, inline=False))
            continue
        if not line.strip():
            scan_paragraph()
            continue
        if not paragraph:
            paragraph_start = number
        paragraph.append(line.strip())
    scan_paragraph()
    return found


def _words(text: str) -> list[str]:
    """The argv of a quoted command: shell comments, a trailing `&` and the program dropped."""
    words = shlex.split(text, comments=True)
    if words and words[-1] == "&":
        words.pop()
    if words and words[0] == "sudo":
        words.pop(0)
    if words[:2] == ["python3", "-m"]:
        words = words[2:]
    return words[1:]  # after `ueconnect` / `ims`


def argv_variants(text: str) -> list[list[str]]:
    """The argument vectors a quoted command stands for. The docs' usage notation: `[X]`
    (optional: X is given), `a|b|c` (one of; each is tried) and `...` (more of the same:
    dropped)."""
    choices: list[list[str]] = []
    for word in _words(text):
        word = word.replace("[", "").replace("]", "")
        if word in ("...", ",..."):
            continue
        word = word.removesuffix(",...")
        choices.append(word.split("|") if "|" in word else [word])
    variants = [list(p) for p in itertools.product(*choices)]
    assert len(variants) <= 64, f"too many alternatives in {text!r}"
    return variants


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _subcommand_paths() -> set[tuple[str, ...]]:
    """Every command path the parser knows: ("demo",), ("testbed", "up"), ..."""
    paths: set[tuple[str, ...]] = set()

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for name, child in _subparsers(parser).items():
            paths.add((*prefix, name))
            walk(child, (*prefix, name))

    walk(build_parser(), ())
    return paths


_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(?::[A-Z]+)?$")  # N, MS, FILE, HOST:PORT
_SAMPLES = ("1", "127.0.0.1:5060", "127.0.0.1")


def fill_placeholders(argv: list[str]) -> list[str]:
    """`argv` with each placeholder value (`--workers N`, `--delay MS`) replaced by a sample
    its option's type accepts, so that the check is about the options, not the metavars."""
    parser = build_parser()
    filled = list(argv)
    for index, word in enumerate(argv):
        children = _subparsers(parser)
        if word in children:
            parser = children[word]
            continue
        value = argv[index + 1] if index + 1 < len(argv) else ""
        action = parser._option_string_actions.get(word)
        if action is None or action.type is None or not _PLACEHOLDER.match(value):
            continue
        convert = action.type
        assert callable(convert)
        for sample in (value, *_SAMPLES):
            try:
                convert(sample)
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                continue
            filled[index + 1] = sample
            break
    return filled


def parse_error(argv: list[str]) -> str | None:
    """None when the real parser accepts `argv`, else what argparse said."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):  # --help exits 0
                return err.getvalue().strip().splitlines()[-1]
    return None


COMMANDS = [command for doc in DOCS for command in doc_commands(doc)]


def test_the_docs_quote_commands() -> None:
    # The extraction itself works: the README's and the guides' commands are found.
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/quickstart.md", "docs/operator-guide.md",
            "docs/configuration.md", "docs/testbed.md"} <= where
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_doc_command_parses(command: DocCommand) -> None:
    paths = _subcommand_paths()
    for argv in argv_variants(command.text):
        # Inline, a bare command path names the command (`ueconnect mno`), it is no command
        # line: it must exist.
        if command.inline and tuple(argv) in paths:
            continue
        error = parse_error(fill_placeholders(argv))
        assert error is None, f"{command}: `ueconnect {shlex.join(argv)}`: {error}"


def test_a_wrong_command_is_caught() -> None:
    # The check can fail: an unknown option and a missing required one are refused.
    assert parse_error(["mno", "--config", "x.toml", "--no-such-option"]) is not None
    assert parse_error(["mno", "--check"]) is not None
    assert parse_error(fill_placeholders(["sip", "proxy", "--listen", "HOST:PORT"])) is not None
    assert argv_variants("ueconnect testbed up|down [--nat eim] ...") == [
        ["testbed", "up", "--nat", "eim"], ["testbed", "down", "--nat", "eim"]]
    assert fill_placeholders(["demo", "--testbed", "--delay", "MS"])[-1] == "1"


def test_every_example_is_found() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"alpha.toml", "beta.toml", "testbed-alpha.toml", "testbed-beta.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["mno", "--config", str(path), "--check"]).func(
        build_parser().parse_args(["mno", "--config", str(path), "--check"])) == 0
    assert capsys.readouterr().out.startswith(f"{path}: OK (roles: ")


def test_testbed_examples_are_the_testbed_world() -> None:
    # The pcp-mode pair is what ims/testbed/world.py gives the operators: its addresses, its
    # CGN's PCP server, the kernel relay.
    from ims.dns import worlds
    from ims.testbed.world import GatewaySettings, core_addresses

    for op in worlds.WORLDS["testbed"].operators:
        config = load_config(ROOT / "docs" / "examples" / f"testbed-{op.name.lower()}.toml")
        gateway = config.gateway
        assert gateway is not None
        expected = GatewaySettings(mode=gateway.mode).table(op)
        assert gateway.mode.value == expected["mode"] == "pcp"
        assert str(gateway.relay_address) == expected["relay_address"]
        assert gateway.relay_offload.value == expected["relay_offload"]
        server = expected["pcp_server"]
        assert isinstance(server, str)
        assert gateway.pcp_server is not None
        assert f"{gateway.pcp_server.host}:{gateway.pcp_server.port}" == server
        assert config.dns.server.host == op.nameserver.ipv4
        (peer,) = config.border.peers if config.border else ()
        other = next(o for o in worlds.WORLDS["testbed"].operators if o is not op)
        assert {str(p) for p in peer.admit_from} == {f"{a}/32" for a in core_addresses(other)}


# -- What the docs state as facts: code blocks, byte counts, defaults, paths ---------------------

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(path: Path, language: str) -> list[str]:
    return [m.group(2) for m in _BLOCK.finditer(path.read_text(encoding="utf-8"))
            if m.group(1) == language]


def _section(path: Path, heading: str) -> str:
    """The text of the Markdown section whose heading line starts with `heading`, up to the
    next heading of any level."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}") + 1
    end = re.compile(r"^#", re.M).search(text, text.index("\n", start) + 1)
    return text[start:end.start() if end else len(text)]


@pytest.mark.parametrize(
    "path", [p for p in DOCS if _blocks(p, "python")], ids=lambda p: p.name)
def test_python_examples_compile_and_import_what_exists(path: Path) -> None:
    # A guide's example must at least be Python (top-level await allowed, as in a notebook or
    # `python -m asyncio`) and import only names the project has.
    import ast
    import importlib

    for code in _blocks(path, "python"):
        compile(code, str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{path.name}: from {node.module} import {missing}"


def test_ue_guide_toml_example_loads() -> None:
    # docs/ue-guide.md section 9: the UE file shown is one `ueconnect ue --check` accepts.
    from ue_ua.config import parse_ue_config

    guide = ROOT / "docs" / "ue-guide.md"
    (text,) = _blocks(guide, "toml")
    config, rules = parse_ue_config(text, guide)
    assert config.transport_policy == "relay" and config.stun_server == ("192.0.2.53", 3478)
    assert rules is not None and [r.id for r in rules.rules] == ["friends"]


def test_lobby_datagram_sizes_are_the_codecs() -> None:
    # docs/lobby.md section 5 gives the byte layout another implementation builds from: the
    # sizes it states are those ue_ua.game sends (the state body was once said to be 16 bytes;
    # a u32, six i16 and two u8 are 18).
    from ue_ua.game import (
        InputDatagram,
        StateDatagram,
        encode_input,
        encode_state,
        initial_state,
    )

    text = _section(ROOT / "docs" / "lobby.md", "## 5.")

    def stated(pattern: str) -> int:
        found = re.search(pattern, text)
        assert found is not None, pattern
        return int(found[1])

    header = stated(r"Header, (\d+) bytes")
    sent_input = encode_input(InputDatagram(seq=1, tick=2, player=1, move=-1))
    assert len(sent_input) == header + stated(r"Input body \(kind 1, (\d+) bytes\)")
    sent_state = encode_state(StateDatagram(seq=1, state=initial_state()))
    assert len(sent_state) == header + stated(r"State body \(kind 2, (\d+) bytes\)")


def test_inquiry_example_is_a_message_with_its_content_length() -> None:
    # docs/extension.md section 5.2: the example MESSAGE parses, its Content-Length counts the
    # body as sent (one line of compact JSON, wrapped in the doc), and the body is an inquiry.
    from ims.permission.bodies import INQUIRY_TYPE, Inquiry, parse_inquiry_body
    from ims.sip.message import parse_message

    section = _section(ROOT / "docs" / "extension.md", "### 5.2")
    (example,) = [b for b in _blocks_in(section) if b.startswith("MESSAGE ")]
    head, _, wrapped = example.partition("\n\n")
    body = "".join(line.strip() for line in wrapped.splitlines()).encode()
    message = parse_message(head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
    assert message.headers.get("Content-Length") == str(len(body))
    assert message.headers.get("Content-Type") == INQUIRY_TYPE
    inquiry = parse_inquiry_body(body)
    assert isinstance(inquiry, Inquiry)
    assert str(inquiry.deadline) == message.headers.get("Expires")


def _blocks_in(text: str) -> list[str]:
    return [m.group(2) for m in _BLOCK.finditer(text)]


def test_extension_examples_parse() -> None:
    # The rule set of section 6.1 and the Target-MNO values of section 4 are valid.
    from ims.extension import parse_target_mno
    from ims.permission.rules import parse_rule_set

    spec = ROOT / "docs" / "extension.md"
    (rule_set,) = _blocks_in(_section(spec, "### 6.1"))
    assert len(parse_rule_set(rule_set).rules) == 3
    values = re.findall(r"^Target-MNO: (\S+)$", _section(spec, "## 4."), re.M)
    assert len(values) == 2
    for value in values:
        parse_target_mno(value)


_DEFAULT = re.compile(r"^\| `(\w+)` \| [^|]* \| `([^`]+)` \|", re.M)


def test_configuration_defaults_are_the_codes() -> None:
    # docs/configuration.md: every default written as a literal is what load_config gives a
    # file that leaves the key out.
    import tomllib

    from ims.config import parse_config

    minimal = "\n".join([
        "[operator]", 'name = "Alpha"', 'plmn = "001-01"', "mnc_digits = 2",
        "[pcscf]", 'listen = ["udp:127.0.14.1:5100"]',
        "[scscf]", 'listen = ["udp:127.0.14.1:5102"]',
        "[border]", 'listen = ["udp:127.0.14.1:5104"]',
        "[permission]", "[gateway]",
    ])
    config = parse_config(minimal, ROOT / "docs" / "examples" / "minimal.toml")
    doc = ROOT / "docs" / "configuration.md"
    checked = []
    for section in ("store", "dns", "pcscf", "scscf", "permission", "gateway", "log"):
        table = getattr(config, section)
        for key, literal in _DEFAULT.findall(_section(doc, f"## `[{section}]`")):
            documented = tomllib.loads(f"v = {literal}")["v"]
            actual = getattr(table, key)
            if isinstance(actual, tuple):
                actual = [getattr(item, "value", item) for item in actual]
            elif not isinstance(actual, (int, float)):
                actual = str(getattr(actual, "value", actual))
            if isinstance(documented, str) and isinstance(actual, str):
                documented, actual = documented.lower(), actual.lower()
            assert documented == actual, f"[{section}] {key}: documented {literal}, is {actual}"
            checked.append(f"{section}.{key}")
    assert len(checked) >= 15, checked


_REPO_PATH = re.compile(r"(?<![\w/.-])((?:ims|ue_ua|tests|docs|bench|dns_zones|\.ci)/[\w./*-]*\w)")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_paths_and_links_exist(path: Path) -> None:
    # Every repository path a doc names, and every relative link, exists (stores and other
    # files a run creates, *.sqlite, excepted).
    text = path.read_text(encoding="utf-8")
    missing = [m.group(1) for m in _LINK.finditer(text)
               if "://" not in m.group(1) and not (path.parent / m.group(1)).exists()]
    for m in _REPO_PATH.finditer(text):
        name = m.group(1)
        if name.endswith(".sqlite"):
            continue
        if not (list(ROOT.glob(name)) if "*" in name else (ROOT / name).exists()):
            missing.append(name)
    assert not missing, f"{path.name} names what does not exist: {missing}"
