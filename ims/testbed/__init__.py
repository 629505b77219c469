"""The network-namespace testbed: each UE behind its operator's CGN, cores on an IX.

`topology` says what the testbed is (a frozen plan derived from the `testbed` world of
ims.dns.worlds), `builder` applies and removes it with `ip`, `nft`, `sysctl` and `tc`, `state`
remembers what was created so `down` removes exactly that. Everything lives inside namespaces
named `uec-...`; the host's own namespace is never changed. `netns` runs an asyncio loop inside
a namespace (a thread that entered it with setns(2)); `world` runs the demo world (DNS, STUN,
PCP servers, both operators, the UEs' loops) in the namespaces, in one process.
"""

from ims.testbed.builder import TestbedBuilder, TestbedStatus
from ims.testbed.errors import TestbedError
from ims.testbed.netns import NamespaceError, NamespaceLoop
from ims.testbed.state import DEFAULT_STATE_DIR, TestbedState
from ims.testbed.topology import NatBehaviour, Plan, TestbedOptions, build_plan

__all__ = [
    "DEFAULT_STATE_DIR",
    "NamespaceError",
    "NamespaceLoop",
    "NatBehaviour",
    "Plan",
    "TestbedBuilder",
    "TestbedError",
    "TestbedOptions",
    "TestbedState",
    "TestbedStatus",
    "build_plan",
]
