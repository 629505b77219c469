"""The lobby over WebSocket (RFC 6455): a thin asyncio shell around `ue_ua.lobby`.

- `await serve_lobby(host, port)` -> `LobbyHandle` (`.port`, `.server`, `await .close()`);
  one `LobbyServer` per handle, one text frame per lobby message.
- `await LobbyConnection.open(url, me)`: a player's connection; `send()` a message, `recv()`
  the next one (the `LobbyClient` at `.client` follows each), `expect(kind)` to wait for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ue_ua.lobby import (
    MAX_MESSAGE,
    LobbyClient,
    LobbyError,
    LobbyMessage,
    LobbyServer,
    Outbound,
    Player,
    encode_message,
)

__all__ = ["LobbyClosed", "LobbyConnection", "LobbyHandle", "serve_lobby"]

_M = TypeVar("_M")
_MAX_FRAME = 4 * MAX_MESSAGE  # UTF-8 bytes of the longest message the core accepts


class LobbyClosed(LobbyError):
    """The lobby connection closed (or did not answer in time)."""


@dataclass
class LobbyHandle:
    """A running lobby."""

    server: Server
    lobby: LobbyServer
    port: int

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def serve_lobby(host: str, port: int) -> LobbyHandle:
    """Start a lobby on `host`:`port` (0 picks a free port; see `.port`)."""
    lobby = LobbyServer()
    ids = itertools.count(1)
    sockets: dict[int, ServerConnection] = {}

    async def deliver(items: list[Outbound]) -> None:
        for item in items:
            ws = sockets.get(item.conn)
            if ws is None:
                continue
            # A closed peer is left to its own handler, which runs disconnect().
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode_message(item.message))

    async def handler(ws: ServerConnection) -> None:
        conn = next(ids)
        sockets[conn] = ws
        try:
            async for frame in ws:
                await deliver(lobby.receive(conn, frame))
        except ConnectionClosed:
            pass
        finally:
            del sockets[conn]
            await deliver(lobby.disconnect(conn))

    server = await serve(handler, host, port, max_size=_MAX_FRAME)
    bound = next(iter(server.sockets)).getsockname()[1]
    return LobbyHandle(server, lobby, int(bound))


class LobbyConnection:
    """A player's connection to a lobby."""

    def __init__(self, ws: ClientConnection, client: LobbyClient) -> None:
        self._ws = ws
        self.client = client

    @classmethod
    async def open(cls, url: str, me: Player, *, timeout: float = 5.0) -> LobbyConnection:
        """Connect to `url` (ws://host:port) as `me`; hello is not yet said."""
        try:
            ws = await asyncio.wait_for(connect(url, max_size=_MAX_FRAME), timeout)
        except (OSError, TimeoutError) as exc:
            raise LobbyClosed(f"cannot reach the lobby at {url}: {exc}") from None
        return cls(ws, LobbyClient(me))

    async def send(self, message: LobbyMessage) -> None:
        await self.send_text(encode_message(message))

    async def send_text(self, text: str) -> None:
        """Send raw text (tests use it to send what `encode_message` never would)."""
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise LobbyClosed(f"lobby connection closed: {exc}") from None

    async def recv(self, timeout: float = 5.0) -> LobbyMessage:
        try:
            frame = await asyncio.wait_for(self._ws.recv(), timeout)
        except TimeoutError:
            raise LobbyClosed(f"the lobby said nothing for {timeout} s") from None
        except ConnectionClosed as exc:
            raise LobbyClosed(f"lobby connection closed: {exc}") from None
        return self.client.receive(frame)

    async def expect(self, kind: type[_M], timeout: float = 5.0) -> _M:
        """Receive until a message of `kind` arrives (others are followed by the client);
        at most 100 messages, within `timeout` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(100):
            msg = await self.recv(max(0.0, deadline - loop.time()))
            if isinstance(msg, kind):
                return msg
        raise LobbyClosed(f"no {kind.__name__} among 100 messages")

    async def close(self) -> None:
        await self._ws.close()
