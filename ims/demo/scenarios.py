"""The demo's scenarios (`ueconnect demo --scenario`): who calls whom, what the callee's
application answers and, in the testbed, what the CGNs and the operators' gateways do.
"""

from __future__ import annotations

from dataclasses import dataclass

from ims.permission.outcomes import Decision
from ue_ua.ice import PathKind


@dataclass(frozen=True)
class Scenario:
    """One `--scenario`: who calls whom, what the callee's application answers, and (in the
    testbed) what answers PCP on the CGNs, the operators' [gateway] mode and the path the
    connection must take (None: it must fail, ConnectivityFailed)."""

    name: str
    caller: str
    callee: str
    decision: Decision
    summary: str
    refusal_expected: bool = False  # deny: the refusal is the scenario behaving
    testbed_only: bool = False
    pcp: str = "ours"  # ims.testbed.world.PcpMode
    gateway: str = "pcp"  # ims.config.GatewayMode
    testbed_path: PathKind | None = "direct"


_ALL = (
    Scenario("play", "Bill", "Dave", Decision.ALLOW,
             "Bill (Alpha) connects to Dave (Beta); Dave allows"),
    Scenario("deny", "Bill", "Dave", Decision.DENY,
             "Bill (Alpha) asks for Dave (Beta); Dave's app answers deny", True),
    Scenario("same-mno", "Bill", "Carol", Decision.ALLOW,
             "Bill connects to Carol, both at Alpha; Carol allows"),
    Scenario("relay", "Bill", "Dave", Decision.ALLOW,
             "Bill (Alpha) connects to Dave (Beta); the CGNs refuse PCP, the relays carry it",
             pcp="refuse", testbed_path="relay"),
    Scenario("unassisted", "Bill", "Dave", Decision.ALLOW,
             "Bill and Dave behind their symmetric CGNs without operator help: must fail",
             testbed_only=True, pcp="off", gateway="off", testbed_path=None),
)  # fmt: skip
SCENARIOS = {s.name: s for s in _ALL}
