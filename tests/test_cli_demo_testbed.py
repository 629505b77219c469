"""`ueconnect demo --testbed --json` (issue 7 acceptance): the scenarios behind real CGNs.

Each test runs the demo as a user would, in the network-namespace testbed on a prefix and
state directory of its own (built and taken down by the run): play must take the direct path
through the PCP mappings, relay (the CGNs refuse PCP) the operators' relays, unassisted (no
gateway, no PCP, STUN only) must fail to connect; deny must refuse with nothing opened. Every
run must leave 0 of every resource. Root only (CI runs them as root, `.ci/run`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ims.testbed.requirements import missing_for_world

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[1]
NOTHING_LEAKED = {"mappings": 0, "relays": 0, "sessions": 0, "registrations": 0}


def _skip_reason() -> str | None:
    return missing_for_world(tools=(("ip", "iproute2"), ("nft", "nftables"),
                                    ("sysctl", "procps"), ("ss", "iproute2"),
                                    ("turnserver", "coturn")))


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


def _demo(tmp_path: Path, scenario: str) -> tuple[int, dict[str, Any], str]:
    prefix = f"uec-d{scenario[:2]}{os.getpid() % 100000}-"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ims", "demo", "--testbed", "--json", "--scenario", scenario,
             "--out", str(tmp_path / "out"), "--prefix", prefix,
             "--state-dir", str(tmp_path / "state")],
            cwd=ROOT, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    finally:
        for name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                   check=False).stdout.split():  # fmt: skip
            if name.startswith(prefix):  # only after a run that could not undo its testbed
                subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
    # --json: the one object is all there is on stdout; the steps went to stderr.
    document = json.loads(result.stdout)
    assert isinstance(document, dict), result.stdout
    return result.returncode, document, result.stderr


def _connected_over(doc: dict[str, Any], path: str) -> None:
    assert doc["ok"] is True and all(step["ok"] for step in doc["steps"]), doc["steps"]
    assert doc["permission"] == "granted"
    assert doc["path"] == path and doc["connected"] is True
    assert doc["setup_ms"] > 0
    # Issue 7 acceptance: >= 100 game datagrams received each way.
    assert set(doc["datagrams"]) == {"bill_to_dave", "dave_to_bill"}
    for direction in doc["datagrams"].values():
        assert direction["sent"] >= 100 and direction["received"] >= 100, doc["datagrams"]
    assert doc["leaked"] == NOTHING_LEAKED


def test_testbed_play_is_direct_through_the_cgn_mappings(tmp_path: Path) -> None:
    code, doc, err = _demo(tmp_path, "play")
    assert code == 0, err
    _connected_over(doc, "direct")
    # The operators held PCP mappings at their CGNs (MAP at Alpha, PEER at Beta), no relay.
    assert "Alpha holds PCP MAP; Beta holds PCP PEER" in err
    assert "the relays forwarded 0 datagrams" in err


def test_testbed_relay_when_the_cgns_refuse_pcp(tmp_path: Path) -> None:
    code, doc, err = _demo(tmp_path, "relay")
    assert code == 0, err
    _connected_over(doc, "relay")
    assert "PCP request(s) (NO_RESOURCES)" in err


def test_testbed_unassisted_fails_to_connect_across_symmetric_cgns(tmp_path: Path) -> None:
    code, doc, err = _demo(tmp_path, "unassisted")
    # The scenario behaves when the connection fails: ok true, exit 0.
    assert code == 0, err
    assert doc["ok"] is True and all(step["ok"] for step in doc["steps"]), doc["steps"]
    assert doc["permission"] == "granted"  # Dave allowed; the network did not let them meet
    assert doc["connected"] is False and doc["path"] is None and doc["setup_ms"] is None
    assert "connect() raised ConnectivityFailed" in err
    assert doc["datagrams"]["bill_to_dave"]["received"] == 0
    assert doc["leaked"] == NOTHING_LEAKED


def test_testbed_deny_refuses_with_nothing_opened(tmp_path: Path) -> None:
    code, doc, err = _demo(tmp_path, "deny")
    assert code == 0, err
    assert doc["ok"] is True and doc["permission"] == "denied"
    assert doc["refusal"] == {"status": 603, "reason": "Decline (denied by the callee)",
                              "cause": 2, "error": "DeniedByCallee"}
    assert doc["connected"] is False and doc["path"] is None
    assert doc["leaked"] == NOTHING_LEAKED
