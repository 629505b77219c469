"""One asyncio loop per network namespace, all in one process.

A `NamespaceLoop` is a thread that enters a named namespace (the `/run/netns/NAME` that
`ip netns add` made) with setns(2) and then runs its own event loop. Everything that loop
creates, sockets and subprocesses alike, lives in that namespace: Linux keeps the network
namespace per thread (setns(2): "the calling thread"), and threads or processes started from
that thread inherit it. So one process runs the whole testbed world, each role in its
namespace, and a test awaits work on any of them from its own loop:

    async with NamespaceLoop("uec-alpha-ue") as ue:
        address = await ue.run(lambda: some_coroutine())

Python 3.11 has no os.setns, so it is called through ctypes (libc).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ims.testbed.errors import TestbedError

__all__ = ["CLONE_NEWNET", "NETNS_DIR", "NamespaceError", "NamespaceLoop", "enter_netns"]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000  # <linux/sched.h>
NETNS_DIR = Path("/run/netns")  # where `ip netns add` binds the namespaces it names
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class NamespaceError(TestbedError):
    """A namespace cannot be entered (missing, not permitted) or its loop is not running."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread into the network namespace `name` (setns(2) on its file)."""
    path = NETNS_DIR / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(f"no network namespace {name!r} ({path} is missing): build the "
                             "testbed first (`ueconnect testbed up`)") from None
    except PermissionError:
        raise NamespaceError(f"cannot open {path}: entering a namespace needs root") from None
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            hint = " (needs CAP_SYS_ADMIN: run as root)" if code == errno.EPERM else ""
            raise NamespaceError(f"setns({path}, CLONE_NEWNET) failed: "
                                 f"{os.strerror(code)}{hint}")
        # Proof, not faith: this thread's namespace is now the file's (same inode).
        if os.stat("/proc/thread-self/ns/net").st_ino != os.fstat(fd).st_ino:
            raise NamespaceError(f"setns({path}) returned 0 but the thread is elsewhere")
    finally:
        os.close(fd)


class NamespaceLoop:
    """A thread in network namespace `netns` running an asyncio loop of its own.

    `start()` (or `async with`) returns once the thread is in the namespace and its loop runs;
    `await run(factory)` runs `factory()`'s coroutine there and returns its result to the
    caller's loop (cancelling the caller cancels the work); `stop()` cancels what is left,
    closes the loop and joins the thread.
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"NamespaceLoop({self.netns!r}, running={self.running})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._loop is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self.running:
            raise NamespaceError(f"the loop of {self.netns} is not running (start() it)")
        return self._loop

    def start(self) -> NamespaceLoop:
        if self._thread is not None:
            raise NamespaceError(f"the loop of {self.netns} was started already")
        self._thread = threading.Thread(target=self._main, name=f"netns:{self.netns}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise NamespaceError(f"the loop of {self.netns} did not start within "
                                 f"{START_TIMEOUT:.0f} s")
        if self._error is not None:
            self._thread.join(STOP_TIMEOUT)
            raise self._error
        return self

    def _main(self) -> None:
        try:
            enter_netns(self.netns)
        except BaseException as exc:  # handed to start(), which raises it in the caller
            self._error = exc
            self._ready.set()
            return
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def submit(self, factory: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Start `factory()` on this loop from any thread; its concurrent future."""

        loop = self.loop  # raises before a coroutine is made that would never run

        async def work() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(work(), loop)

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run `factory()`'s coroutine in this namespace's loop and await its result here.

        The coroutine is made by `factory` inside that loop, so whatever it creates (sockets,
        tasks, futures) belongs to that loop and that namespace.
        """
        return await asyncio.wrap_future(self.submit(factory))

    def call(self, function: Callable[[], T], timeout: float = 10.0) -> T:
        """Run the plain `function()` on this loop (blocking the calling thread, bounded)."""

        async def work() -> T:
            return function()

        return self.submit(work).result(timeout)

    def stop(self) -> None:
        """Cancel every task left, close the loop, join the thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            raise NamespaceError(f"the loop of {self.netns} did not stop within "
                                 f"{STOP_TIMEOUT:.0f} s")
        self._thread = None
        self._loop = None

    async def close(self) -> None:
        await asyncio.to_thread(self.stop)

    async def __aenter__(self) -> NamespaceLoop:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
