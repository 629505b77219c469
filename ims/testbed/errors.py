"""The testbed's error family: each leaf says what to do about it.

`TestbedUsageError` is "the caller asked for something invalid"; the others are the host
refusing (`NotPermitted`, `ToolMissing`, `NetemUnavailable`), a command failing
(`CommandFailed`), or the testbed being in a state that forbids the request (`AlreadyUp`,
`NamespaceTaken`, `StateUnreadable`).
"""

from __future__ import annotations

from collections.abc import Sequence


class TestbedError(Exception):
    """Base of every error raised by ims.testbed."""

    __test__ = False  # not a pytest test class despite the name


class TestbedUsageError(TestbedError, ValueError):
    """An option the testbed cannot be built with (the message names the option)."""


class NotPermitted(TestbedError):
    """Not root: namespaces, nftables and sysctls need CAP_NET_ADMIN / CAP_SYS_ADMIN."""


class ToolMissing(TestbedError):
    """A program the testbed runs is not installed."""

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(f"'{tool}' is not installed: install the Debian package {package}")
        self.tool = tool


class CommandFailed(TestbedError):
    """A command exited non-zero: the message quotes it and its own error output."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} failed ({returncode}): {stderr.strip()}")
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


class NetemUnavailable(TestbedError):
    """`tc ... netem` is refused: the kernel has no sch_netem."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "--netem-delay needs the netem queueing discipline, which this kernel does not "
            "provide (tc: " + detail.strip() + "): load the kernel module sch_netem "
            "(`modprobe sch_netem`; kernel option CONFIG_NET_SCH_NETEM) or run without "
            "--netem-delay")


class AlreadyUp(TestbedError):
    """A testbed with other options is up; it must come down first."""


class NamespaceTaken(TestbedError):
    """A namespace the plan needs exists but is not recorded as ours."""


class StateUnreadable(TestbedError):
    """The state file exists but cannot be read as a testbed state."""
