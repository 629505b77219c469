"""What the testbed world needs from the host, said as one sentence when something is missing.

Tests skip with that sentence and the setup-time benchmark exits with it, so they share one
check: Linux, root, the tools the world runs (each with its Debian package), and, for callers
that drive UEs, the UE API. `ueconnect testbed` itself checks less (builder.check_host): the
testbed alone needs neither coturn nor conntrack.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Sequence

__all__ = ["DELAY_TOOLS", "WORLD_TOOLS", "missing_for_world"]

# (program, Debian package) the world runs: namespaces and addresses, the CGNs' nft rules,
# sysctls, the socket leftover check, coturn as STUN server, the conntrack helpers.
WORLD_TOOLS: tuple[tuple[str, str], ...] = (
    ("ip", "iproute2"), ("nft", "nftables"), ("sysctl", "procps"), ("ss", "iproute2"),
    ("turnserver", "coturn"), ("conntrack", "conntrack"))
# What a per-link delay needs besides: `tc` for netem, iptables-legacy for the NFQUEUE rule
# where the kernel has no netem (ims/testbed/delay.py).
DELAY_TOOLS: tuple[tuple[str, str], ...] = (("tc", "iproute2"), ("iptables-legacy", "iptables"))


def missing_for_world(*, ue_api: bool = False,
                      tools: Sequence[tuple[str, str]] = WORLD_TOOLS) -> str | None:
    """Why the testbed world cannot run here (one sentence naming the fix), or None.

    `ue_api`: the caller also runs UEs (ue_ua.client). `tools`: (program, Debian package)
    pairs to look for on PATH, the world's by default.
    """
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return ("needs root to create network namespaces and nftables rules (run it as root, "
                "e.g. with sudo from the project directory; CI runs as root)")
    for tool, package in tools:
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (Debian package {package})"
    if ue_api:
        try:
            importlib.import_module("ue_ua.client")
        except ImportError as exc:
            return f"the UE API (ue_ua.client) is not importable: {exc}"
    return None
