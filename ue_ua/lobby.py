"""The game lobby (TR 22.807 section 4.2, flow step 2; docs/lobby.md), sans-IO.

The lobby is application level, not the operator's: players say hello, see who is present,
invite, accept or decline, agree on game rules and P2P parameters (which UE is the session
server among them), and the invitee forwards its UE identifier and MNO identifier to the
session server so that it can ask its operator for a connection (flow step 3).

- Messages are JSON objects with a "type" member, one per WebSocket text frame.
  `parse_message(text)` -> a frozen dataclass or `LobbyProtocolError` naming the defect;
  `encode_message(msg)` -> text.
- `LobbyServer`: the whole state machine, keyed by opaque connection ids the adapter picks.
  `receive(conn, text)` returns `Outbound` items (to whom, what). A bad message earns an
  `Error` for its sender only; the connection and every state stay as they were.
- `LobbyClient`: the player's side; builds the messages and follows what the lobby said.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ims.sip.errors import ParseError
from ims.sip.uri import SipUri, TelUri, parse_uri

__all__ = [
    "MAX_MESSAGE",
    "Accept",
    "Accepted",
    "Agree",
    "Decline",
    "Declined",
    "Error",
    "GameRules",
    "Hello",
    "Identity",
    "Invite",
    "Invited",
    "LobbyClient",
    "LobbyError",
    "LobbyMessage",
    "LobbyProtocolError",
    "LobbyServer",
    "LobbyUsageError",
    "Outbound",
    "Player",
    "Presence",
    "Propose",
    "Proposed",
    "SessionServer",
    "Welcome",
    "encode_message",
    "parse_message",
]

MAX_MESSAGE = 8192  # characters; a lobby message is small, a bigger one is an attack or a bug
MAX_NAME = 64
GAMES = ("pong",)
TICK_RATES = range(1, 121)  # Hz
DATAGRAM_SIZES = range(64, 1201)  # bytes; 1200 keeps clear of fragmentation on any IPv6 path
_MNO_ID = re.compile(r"[0-9]{3}-[0-9]{2,3}")  # PLMN identifier: MCC-MNC (3GPP TS 23.003 2.2)
_SESSION_ID = re.compile(r"s[0-9]{1,9}")


# --- errors -------------------------------------------------------------------------------


class LobbyError(Exception):
    """The lobby layer's error family."""


class LobbyProtocolError(LobbyError):
    """The peer broke the lobby protocol; `code` goes into the Error message it gets back."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class LobbyUsageError(LobbyError):
    """Our own code misused the API (e.g. accepting an invitation it never received)."""


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Player:
    ue_id: str  # the UE's public identity, tel: or sip: URI
    mno_id: str  # its operator's PLMN identifier, "MCC-MNC"
    name: str


@dataclass(frozen=True)
class GameRules:
    """Game rules and P2P parameters negotiated between two players."""

    game: str = "pong"
    tick_rate: int = 30
    max_datagram: int = 512
    session_server: str = ""  # ue_id of the UE that hosts the game session
    points_to_win: int = 5


@dataclass(frozen=True)
class Hello:
    ue_id: str
    mno_id: str
    name: str


@dataclass(frozen=True)
class Welcome:
    ue_id: str


@dataclass(frozen=True)
class Presence:
    players: tuple[Player, ...]


@dataclass(frozen=True)
class Invite:
    to: str  # ue_id


@dataclass(frozen=True)
class Invited:
    session_id: str
    sender: Player  # the inviter
    to: str


@dataclass(frozen=True)
class Accept:
    session_id: str


@dataclass(frozen=True)
class Accepted:
    session_id: str
    by: str


@dataclass(frozen=True)
class Decline:
    session_id: str
    reason: str = ""


@dataclass(frozen=True)
class Declined:
    session_id: str
    by: str
    reason: str = ""


@dataclass(frozen=True)
class Propose:
    session_id: str
    rules: GameRules


@dataclass(frozen=True)
class Proposed:
    session_id: str
    sender: str  # ue_id of the proposer
    rules: GameRules


@dataclass(frozen=True)
class Agree:
    session_id: str


@dataclass(frozen=True)
class SessionServer:
    """The rules are agreed: `rules.session_server` hosts, the other forwards its identity."""

    session_id: str
    rules: GameRules


@dataclass(frozen=True)
class Identity:
    """The invitee's identifiers, sent to the lobby and relayed to the session server."""

    session_id: str
    ue_id: str
    mno_id: str


@dataclass(frozen=True)
class Error:
    code: str  # malformed, unknown-type, bad-field, bad-state, unknown-player, unknown-session
    reason: str
    in_reply_to: str = ""  # the offending message's type when it had one


LobbyMessage = (
    Hello
    | Welcome
    | Presence
    | Invite
    | Invited
    | Accept
    | Accepted
    | Decline
    | Declined
    | Propose
    | Proposed
    | Agree
    | SessionServer
    | Identity
    | Error
)

_TYPE_NAMES: dict[type, str] = {
    Hello: "hello",
    Welcome: "welcome",
    Presence: "presence",
    Invite: "invite",
    Invited: "invited",
    Accept: "accept",
    Accepted: "accepted",
    Decline: "decline",
    Declined: "declined",
    Propose: "propose",
    Proposed: "proposed",
    Agree: "agree",
    SessionServer: "session-server",
    Identity: "identity",
    Error: "error",
}


# --- field checks (each returns the value or raises LobbyProtocolError naming the member) --


def _bad(member: str, why: str) -> LobbyProtocolError:
    return LobbyProtocolError("bad-field", f'"{member}" {why}')


def _str(obj: Mapping[str, Any], member: str, *, optional: bool = False, limit: int = 256) -> str:
    if member not in obj:
        if optional:
            return ""
        raise LobbyProtocolError("bad-field", f'missing member "{member}"')
    value = obj[member]
    if not isinstance(value, str):
        raise _bad(member, f"must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise _bad(member, f"is longer than {limit} characters")
    return value


def _int(obj: Mapping[str, Any], member: str, allowed: range) -> int:
    if member not in obj:
        raise LobbyProtocolError("bad-field", f'missing member "{member}"')
    value = obj[member]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(member, f"must be an integer, got {type(value).__name__}")
    if value not in allowed:
        raise _bad(member, f"must be in {allowed.start}..{allowed.stop - 1}, got {value}")
    return value


def _ue_id(obj: Mapping[str, Any], member: str) -> str:
    value = _str(obj, member)
    try:
        uri = parse_uri(value)
    except ParseError as exc:
        raise _bad(member, f"is not a tel: or sip: URI ({exc})") from None
    if not isinstance(uri, (TelUri, SipUri)):
        raise _bad(member, "is not a tel: or sip: URI")
    return value


def _mno_id(obj: Mapping[str, Any], member: str) -> str:
    value = _str(obj, member)
    if not _MNO_ID.fullmatch(value):
        raise _bad(member, f'must be a PLMN identifier "MCC-MNC" such as 001-02, got {value!r}')
    return value


def _name(obj: Mapping[str, Any], member: str) -> str:
    value = _str(obj, member, limit=MAX_NAME)
    if not value.strip() or not value.isprintable():
        raise _bad(member, "must be non-empty printable text")
    return value


def _session_id(obj: Mapping[str, Any]) -> str:
    value = _str(obj, "session_id")
    if not _SESSION_ID.fullmatch(value):
        raise _bad("session_id", f"is not a session id such as s1, got {value!r}")
    return value


def _object(obj: Mapping[str, Any], member: str) -> Mapping[str, Any]:
    if member not in obj:
        raise LobbyProtocolError("bad-field", f'missing member "{member}"')
    value = obj[member]
    if not isinstance(value, dict):
        raise _bad(member, "must be an object")
    return value


def _player(obj: Mapping[str, Any]) -> Player:
    return Player(_ue_id(obj, "ue_id"), _mno_id(obj, "mno_id"), _name(obj, "name"))


def _rules(obj: Mapping[str, Any]) -> GameRules:
    game = _str(obj, "game")
    if game not in GAMES:
        raise _bad("game", f"must be one of {', '.join(GAMES)}, got {game!r}")
    return GameRules(
        game=game,
        tick_rate=_int(obj, "tick_rate", TICK_RATES),
        max_datagram=_int(obj, "max_datagram", DATAGRAM_SIZES),
        session_server=_ue_id(obj, "session_server"),
        points_to_win=_int(obj, "points_to_win", range(1, 100)),
    )


def _rules_json(rules: GameRules) -> dict[str, Any]:
    return {
        "game": rules.game,
        "tick_rate": rules.tick_rate,
        "max_datagram": rules.max_datagram,
        "session_server": rules.session_server,
        "points_to_win": rules.points_to_win,
    }


def _player_json(player: Player) -> dict[str, Any]:
    return {"ue_id": player.ue_id, "mno_id": player.mno_id, "name": player.name}


# --- the encoding pair --------------------------------------------------------------------


def parse_message(text: str | bytes) -> LobbyMessage:
    """Parse one lobby message; raise LobbyProtocolError whose reason names the defect.
    Members this version does not know are ignored, so a later version may add some."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LobbyProtocolError("malformed", f"message is not UTF-8 ({exc})") from None
    if len(text) > MAX_MESSAGE:
        raise LobbyProtocolError("malformed", f"message longer than {MAX_MESSAGE} characters")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise LobbyProtocolError("malformed", f"message is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise LobbyProtocolError("malformed", "message is not a JSON object")
    if "type" not in obj:
        raise LobbyProtocolError("malformed", 'message has no "type" member')
    kind = obj["type"]
    if not isinstance(kind, str):
        raise LobbyProtocolError("malformed", '"type" must be a string')
    if kind == "hello":
        return Hello(_ue_id(obj, "ue_id"), _mno_id(obj, "mno_id"), _name(obj, "name"))
    if kind == "welcome":
        return Welcome(_ue_id(obj, "ue_id"))
    if kind == "presence":
        players = obj.get("players")
        if not isinstance(players, list) or not all(isinstance(p, dict) for p in players):
            raise _bad("players", "must be a list of objects")
        return Presence(tuple(_player(p) for p in players))
    if kind == "invite":
        return Invite(_ue_id(obj, "to"))
    if kind == "invited":
        return Invited(_session_id(obj), _player(_object(obj, "from")), _ue_id(obj, "to"))
    if kind == "accept":
        return Accept(_session_id(obj))
    if kind == "accepted":
        return Accepted(_session_id(obj), _ue_id(obj, "by"))
    if kind == "decline":
        return Decline(_session_id(obj), _str(obj, "reason", optional=True))
    if kind == "declined":
        return Declined(_session_id(obj), _ue_id(obj, "by"), _str(obj, "reason", optional=True))
    if kind == "propose":
        return Propose(_session_id(obj), _rules(_object(obj, "rules")))
    if kind == "proposed":
        return Proposed(_session_id(obj), _ue_id(obj, "from"), _rules(_object(obj, "rules")))
    if kind == "agree":
        return Agree(_session_id(obj))
    if kind == "session-server":
        return SessionServer(_session_id(obj), _rules(_object(obj, "rules")))
    if kind == "identity":
        return Identity(_session_id(obj), _ue_id(obj, "ue_id"), _mno_id(obj, "mno_id"))
    if kind == "error":
        return Error(_str(obj, "code"), _str(obj, "reason", limit=MAX_MESSAGE),
                     _str(obj, "in_reply_to", optional=True))
    raise LobbyProtocolError("unknown-type", f"unknown message type {kind[:40]!r}")


def encode_message(msg: LobbyMessage) -> str:
    """The JSON text of one message (compact, keys in a fixed order)."""
    body: dict[str, Any] = {"type": _TYPE_NAMES[type(msg)]}
    if isinstance(msg, Hello):
        body.update(ue_id=msg.ue_id, mno_id=msg.mno_id, name=msg.name)
    elif isinstance(msg, Welcome):
        body.update(ue_id=msg.ue_id)
    elif isinstance(msg, Presence):
        body.update(players=[_player_json(p) for p in msg.players])
    elif isinstance(msg, Invite):
        body.update(to=msg.to)
    elif isinstance(msg, Invited):
        body.update(session_id=msg.session_id, to=msg.to)
        body["from"] = _player_json(msg.sender)
    elif isinstance(msg, Accept | Agree):
        body.update(session_id=msg.session_id)
    elif isinstance(msg, Accepted):
        body.update(session_id=msg.session_id, by=msg.by)
    elif isinstance(msg, Decline):
        body.update(session_id=msg.session_id, reason=msg.reason)
    elif isinstance(msg, Declined):
        body.update(session_id=msg.session_id, by=msg.by, reason=msg.reason)
    elif isinstance(msg, Propose | SessionServer):
        body.update(session_id=msg.session_id, rules=_rules_json(msg.rules))
    elif isinstance(msg, Proposed):
        body.update(session_id=msg.session_id, rules=_rules_json(msg.rules))
        body["from"] = msg.sender
    elif isinstance(msg, Identity):
        body.update(session_id=msg.session_id, ue_id=msg.ue_id, mno_id=msg.mno_id)
    else:
        body.update(code=msg.code, reason=msg.reason, in_reply_to=msg.in_reply_to)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


# --- the lobby server state machine ---------------------------------------------------------


@dataclass(frozen=True)
class Outbound:
    """Send `message` on connection `conn`."""

    conn: int
    message: LobbyMessage


# A session's states, in the order the flow walks them (docs/lobby.md section 3).
INVITED, NEGOTIATING, AGREED, IDENTIFIED = "invited", "negotiating", "agreed", "identified"


@dataclass
class _Session:
    session_id: str
    inviter: str  # ue_id
    invitee: str
    state: str = INVITED
    proposal: GameRules | None = None
    proposer: str = ""


@dataclass
class LobbyServer:
    """The lobby: who is present, their invitations and negotiations. Knows no sockets."""

    _players: dict[int, Player] = field(default_factory=dict)  # conn -> player after hello
    _conns: dict[str, int] = field(default_factory=dict)  # ue_id -> conn
    _sessions: dict[str, _Session] = field(default_factory=dict)
    _next_session: int = 1

    @property
    def players(self) -> tuple[Player, ...]:
        return tuple(self._players.values())

    def receive(self, conn: int, text: str | bytes) -> list[Outbound]:
        """Handle one message from connection `conn`. A defect answers `Error` to the sender
        only; nothing else changes."""
        try:
            msg = parse_message(text)
            return self._handle(conn, msg)
        except LobbyProtocolError as exc:
            return [Outbound(conn, Error(exc.code, exc.reason, _type_of(text)))]

    def disconnect(self, conn: int) -> list[Outbound]:
        """The connection is gone: its player leaves, its open sessions end as declined."""
        player = self._players.pop(conn, None)
        if player is None:
            return []
        del self._conns[player.ue_id]
        out: list[Outbound] = []
        for sid, session in list(self._sessions.items()):
            if player.ue_id in (session.inviter, session.invitee):
                del self._sessions[sid]
                other = session.invitee if session.inviter == player.ue_id else session.inviter
                if session.state != IDENTIFIED and other in self._conns:
                    out.append(Outbound(self._conns[other], Declined(sid, player.ue_id, "left")))
        return out + self._presence()

    # -- transitions --

    def _handle(self, conn: int, msg: LobbyMessage) -> list[Outbound]:
        if isinstance(msg, Hello):
            return self._hello(conn, msg)
        me = self._players.get(conn)
        if me is None:
            raise LobbyProtocolError("bad-state", "say hello first")
        if isinstance(msg, Invite):
            return self._invite(me, msg)
        if isinstance(msg, Accept | Decline):
            return self._answer(me, msg)
        if isinstance(msg, Propose):
            return self._propose(me, msg)
        if isinstance(msg, Agree):
            return self._agree(me, msg)
        if isinstance(msg, Identity):
            return self._identity(me, msg)
        raise LobbyProtocolError("bad-state", f'"{_TYPE_NAMES[type(msg)]}" is sent by the lobby')

    def _hello(self, conn: int, msg: Hello) -> list[Outbound]:
        if conn in self._players:
            raise LobbyProtocolError("bad-state", "hello already said on this connection")
        if msg.ue_id in self._conns:
            raise LobbyProtocolError("bad-state", f"{msg.ue_id} is already in the lobby")
        self._players[conn] = Player(msg.ue_id, msg.mno_id, msg.name)
        self._conns[msg.ue_id] = conn
        return [Outbound(conn, Welcome(msg.ue_id)), *self._presence()]

    def _invite(self, me: Player, msg: Invite) -> list[Outbound]:
        if msg.to == me.ue_id:
            raise _bad("to", "names yourself")
        if msg.to not in self._conns:
            raise LobbyProtocolError("unknown-player", f"{msg.to} is not in the lobby")
        sid = f"s{self._next_session}"
        self._next_session += 1
        self._sessions[sid] = _Session(sid, me.ue_id, msg.to)
        invited = Invited(sid, me, msg.to)
        return [Outbound(self._conns[me.ue_id], invited), Outbound(self._conns[msg.to], invited)]

    def _session(self, me: Player, sid: str, state: str | tuple[str, ...]) -> _Session:
        session = self._sessions.get(sid)
        if session is None or me.ue_id not in (session.inviter, session.invitee):
            raise LobbyProtocolError("unknown-session", f"no session {sid} of yours")
        states = (state,) if isinstance(state, str) else state
        if session.state not in states:
            raise LobbyProtocolError(
                "bad-state", f"session {sid} is {session.state}, not {' or '.join(states)}")
        return session

    def _both(self, session: _Session, msg: LobbyMessage) -> list[Outbound]:
        return [Outbound(self._conns[u], msg) for u in (session.inviter, session.invitee)]

    def _answer(self, me: Player, msg: Accept | Decline) -> list[Outbound]:
        session = self._session(me, msg.session_id, INVITED)
        if me.ue_id != session.invitee:
            raise LobbyProtocolError("bad-state", "only the invited player answers an invite")
        if isinstance(msg, Decline):
            del self._sessions[session.session_id]
            return self._both(session, Declined(session.session_id, me.ue_id, msg.reason))
        session.state = NEGOTIATING
        return self._both(session, Accepted(session.session_id, me.ue_id))

    def _propose(self, me: Player, msg: Propose) -> list[Outbound]:
        session = self._session(me, msg.session_id, NEGOTIATING)
        if msg.rules.session_server not in (session.inviter, session.invitee):
            raise _bad("session_server", "must name one of the two players of the session")
        # A counter-proposal replaces the previous one: the last word is what gets agreed.
        session.proposal, session.proposer = msg.rules, me.ue_id
        return self._both(session, Proposed(session.session_id, me.ue_id, msg.rules))

    def _agree(self, me: Player, msg: Agree) -> list[Outbound]:
        session = self._session(me, msg.session_id, NEGOTIATING)
        if session.proposal is None:
            raise LobbyProtocolError("bad-state", f"nothing proposed in {session.session_id}")
        if session.proposer == me.ue_id:
            raise LobbyProtocolError("bad-state", "the other player must agree to your proposal")
        session.state = AGREED
        return self._both(session, SessionServer(session.session_id, session.proposal))

    def _identity(self, me: Player, msg: Identity) -> list[Outbound]:
        session = self._session(me, msg.session_id, AGREED)
        assert session.proposal is not None  # AGREED implies a proposal
        server = session.proposal.session_server
        if me.ue_id == server:
            raise LobbyProtocolError("bad-state", "the session server does not forward identity")
        if (msg.ue_id, msg.mno_id) != (me.ue_id, me.mno_id):
            raise _bad("ue_id", "and mno_id must be the ones said in hello")
        session.state = IDENTIFIED
        return [Outbound(self._conns[server], msg)]

    def _presence(self) -> list[Outbound]:
        presence = Presence(tuple(sorted(self._players.values(), key=lambda p: p.ue_id)))
        return [Outbound(conn, presence) for conn in sorted(self._players)]


def _type_of(text: str | bytes) -> str:
    """The offending message's "type" when it can be read, for the Error's in_reply_to."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind[:40] if isinstance(kind, str) else ""


# --- the player's side ----------------------------------------------------------------------


@dataclass
class LobbyClient:
    """One player's view of the lobby: builds its messages, follows what the lobby says."""

    me: Player
    present: tuple[Player, ...] = ()
    invitations: dict[str, Player] = field(default_factory=dict)  # session_id -> inviter
    agreed: dict[str, GameRules] = field(default_factory=dict)
    peers: dict[str, Identity] = field(default_factory=dict)  # as session server
    errors: list[Error] = field(default_factory=list)

    def hello(self) -> Hello:
        return Hello(self.me.ue_id, self.me.mno_id, self.me.name)

    def invite(self, ue_id: str) -> Invite:
        return Invite(ue_id)

    def accept(self, session_id: str) -> Accept:
        self._invitation(session_id)
        return Accept(session_id)

    def decline(self, session_id: str, reason: str = "") -> Decline:
        self._invitation(session_id)
        return Decline(session_id, reason)

    def propose(self, session_id: str, rules: GameRules) -> Propose:
        return Propose(session_id, rules)

    def host(self, session_id: str, rules: GameRules | None = None) -> Propose:
        """Propose `rules` (default ones if None) with this UE as session server."""
        base = rules if rules is not None else GameRules()
        return Propose(session_id, replace(base, session_server=self.me.ue_id))

    def agree(self, session_id: str) -> Agree:
        return Agree(session_id)

    def forward_identity(self, session_id: str) -> Identity:
        """Flow step 2: the invitee tells the session server who it is and at which MNO."""
        rules = self.agreed.get(session_id)
        if rules is None:
            raise LobbyUsageError(f"session {session_id} has no agreed rules yet")
        if rules.session_server == self.me.ue_id:
            raise LobbyUsageError("this UE is the session server; the peer forwards identity")
        return Identity(session_id, self.me.ue_id, self.me.mno_id)

    def receive(self, text: str | bytes) -> LobbyMessage:
        """Follow one message from the lobby and return it."""
        msg = parse_message(text)
        if isinstance(msg, Presence):
            self.present = msg.players
        elif isinstance(msg, Invited) and msg.to == self.me.ue_id:
            self.invitations[msg.session_id] = msg.sender
        elif isinstance(msg, Declined):
            self.invitations.pop(msg.session_id, None)
        elif isinstance(msg, SessionServer):
            self.invitations.pop(msg.session_id, None)
            self.agreed[msg.session_id] = msg.rules
        elif isinstance(msg, Identity):
            self.peers[msg.session_id] = msg
        elif isinstance(msg, Error):
            self.errors.append(msg)
        return msg

    def _invitation(self, session_id: str) -> None:
        if session_id not in self.invitations:
            raise LobbyUsageError(f"no invitation {session_id} to answer")
