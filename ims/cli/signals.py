"""Stopping a long-running command on SIGINT or SIGTERM: one way for every `ueconnect` command
that serves until told to stop (dns serve, pcp serve, mno, ue listen, ue register --stay, demo
--serve: exit 0), and for one cut short on the way (ue register, ue connect: exit 130), each
closing what it opened before it exits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

__all__ = ["stop_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs, on the running loop; the
    handlers are removed on the way out. Where the loop cannot
    take signal handlers (not the main thread, or a platform without them) nothing is
    installed and Ctrl-C interrupts as usual. Install before announcing that the command runs,
    so that whoever reads the announcement may signal at once."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in STOP_SIGNALS:
        try:
            loop.add_signal_handler(signum, event.set)
        except (ValueError, RuntimeError, NotImplementedError):
            continue
        installed.append(signum)
    try:
        yield event
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
