"""The lobby protocol core (ue_ua.lobby): encoding pair, state machine, error messages."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ue_ua.lobby import (
    Accept,
    Accepted,
    Agree,
    Decline,
    Declined,
    Error,
    GameRules,
    Hello,
    Identity,
    Invite,
    Invited,
    LobbyClient,
    LobbyProtocolError,
    LobbyServer,
    LobbyUsageError,
    Player,
    Presence,
    Propose,
    Proposed,
    SessionServer,
    Welcome,
    encode_message,
    parse_message,
)

BILL = Player("tel:+15550100001", "001-01", "Bill")
DAVE = Player("tel:+15550100002", "001-02", "Dave")
RULES = GameRules(tick_rate=30, max_datagram=512, session_server=BILL.ue_id)

EVERY_MESSAGE = [
    Hello(BILL.ue_id, BILL.mno_id, BILL.name),
    Welcome(BILL.ue_id),
    Presence((BILL, DAVE)),
    Invite(DAVE.ue_id),
    Invited("s1", BILL, DAVE.ue_id),
    Accept("s1"),
    Accepted("s1", DAVE.ue_id),
    Decline("s1", "busy"),
    Declined("s1", DAVE.ue_id, "busy"),
    Propose("s1", RULES),
    Proposed("s1", BILL.ue_id, RULES),
    Agree("s1"),
    SessionServer("s1", RULES),
    Identity("s1", DAVE.ue_id, DAVE.mno_id),
    Error("bad-field", "why", "invite"),
]


@pytest.mark.parametrize("msg", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: object) -> None:
    text = encode_message(msg)  # type: ignore[arg-type]
    assert json.loads(text)["type"]
    assert parse_message(text) == msg


@pytest.mark.parametrize(
    ("text", "code", "names"),
    [
        ("{not json", "malformed", "not JSON"),
        ("[1,2]", "malformed", "not a JSON object"),
        ('{"ue_id":"tel:+1"}', "malformed", '"type"'),
        ('{"type":7}', "malformed", '"type" must be a string'),
        ('{"type":"teleport"}', "unknown-type", "teleport"),
        ('{"type":"hello","mno_id":"001-01","name":"B"}', "bad-field", '"ue_id"'),
        ('{"type":"hello","ue_id":"bill","mno_id":"001-01","name":"B"}', "bad-field",
         "tel: or sip:"),
        ('{"type":"hello","ue_id":"tel:+15550100001","mno_id":"alpha","name":"B"}', "bad-field",
         "MCC-MNC"),
        ('{"type":"hello","ue_id":"tel:+15550100001","mno_id":"001-01","name":""}', "bad-field",
         '"name"'),
        ('{"type":"accept","session_id":5}', "bad-field", '"session_id" must be a string'),
        ('{"type":"propose","session_id":"s1","rules":{"game":"pong","tick_rate":0,'
         '"max_datagram":512,"session_server":"tel:+15550100001","points_to_win":5}}',
         "bad-field", '"tick_rate" must be in 1..120, got 0'),
        ('{"type":"propose","session_id":"s1","rules":{"game":"chess","tick_rate":30,'
         '"max_datagram":512,"session_server":"tel:+15550100001","points_to_win":5}}',
         "bad-field", '"game"'),
        ('{"type":"propose","session_id":"s1","rules":{"game":"pong","tick_rate":30,'
         '"max_datagram":true,"session_server":"tel:+15550100001","points_to_win":5}}',
         "bad-field", '"max_datagram" must be an integer'),
        ("x" * 9000, "malformed", "longer than"),
        (b"\xff\xfe", "malformed", "UTF-8"),
    ],
)
def test_malformed_messages_name_the_defect(text: str | bytes, code: str, names: str) -> None:
    with pytest.raises(LobbyProtocolError) as info:
        parse_message(text)
    assert info.value.code == code
    assert names in info.value.reason


def test_unknown_members_are_ignored() -> None:
    assert parse_message('{"type":"accept","session_id":"s3","later":1}') == Accept("s3")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                              lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.sampled_from(["type", "ue_id", "session_id",
                                                                 "rules", "to", "from"]), c,
                                                max_size=4),
                              max_leaves=12).map(json.dumps)))
def test_fuzz_parse_or_raise_own_error(data: str | bytes) -> None:
    try:
        parse_message(data)
    except LobbyProtocolError:
        return


# --- the state machine ------------------------------------------------------------------------


def _send(lobby: LobbyServer, conn: int, msg: object) -> dict[int, list[object]]:
    out: dict[int, list[object]] = {}
    for item in lobby.receive(conn, encode_message(msg)):  # type: ignore[arg-type]
        out.setdefault(item.conn, []).append(item.message)
    return out


def _two_players() -> LobbyServer:
    lobby = LobbyServer()
    _send(lobby, 1, Hello(BILL.ue_id, BILL.mno_id, BILL.name))
    _send(lobby, 2, Hello(DAVE.ue_id, DAVE.mno_id, DAVE.name))
    return lobby


def test_full_flow_in_memory() -> None:
    lobby = LobbyServer()
    out = _send(lobby, 1, Hello(BILL.ue_id, BILL.mno_id, BILL.name))
    assert out == {1: [Welcome(BILL.ue_id), Presence((BILL,))]}
    out = _send(lobby, 2, Hello(DAVE.ue_id, DAVE.mno_id, DAVE.name))
    assert out[1] == [Presence((BILL, DAVE))]
    out = _send(lobby, 1, Invite(DAVE.ue_id))
    assert out == {1: [Invited("s1", BILL, DAVE.ue_id)], 2: [Invited("s1", BILL, DAVE.ue_id)]}
    assert _send(lobby, 2, Accept("s1"))[1] == [Accepted("s1", DAVE.ue_id)]
    assert _send(lobby, 1, Propose("s1", RULES))[2] == [Proposed("s1", BILL.ue_id, RULES)]
    assert _send(lobby, 2, Agree("s1")) == {1: [SessionServer("s1", RULES)],
                                           2: [SessionServer("s1", RULES)]}
    # Only the session server hears the invitee's identifiers.
    assert _send(lobby, 2, Identity("s1", DAVE.ue_id, DAVE.mno_id)) == {
        1: [Identity("s1", DAVE.ue_id, DAVE.mno_id)]}


@pytest.mark.parametrize(
    ("conn", "msg", "code", "names"),
    [
        (3, Invite(DAVE.ue_id), "bad-state", "hello first"),
        (1, Hello(BILL.ue_id, BILL.mno_id, BILL.name), "bad-state", "already"),
        (3, Hello(BILL.ue_id, BILL.mno_id, BILL.name), "bad-state", "already in the lobby"),
        (1, Invite("tel:+15550100004"), "unknown-player", "+15550100004"),
        (1, Invite(BILL.ue_id), "bad-field", "yourself"),
        (1, Accept("s9"), "unknown-session", "s9"),
        (1, Welcome(BILL.ue_id), "bad-state", "sent by the lobby"),
    ],
)
def test_bad_moves_answer_error_to_sender_only(conn: int, msg: object, code: str,
                                               names: str) -> None:
    lobby = _two_players()
    out = _send(lobby, conn, msg)
    assert list(out) == [conn]
    [err] = out[conn]
    assert isinstance(err, Error) and err.code == code and names in err.reason
    assert err.in_reply_to == json.loads(encode_message(msg))["type"]  # type: ignore[arg-type]
    assert lobby.players == (BILL, DAVE)


def test_only_invitee_answers_and_agreement_needs_the_other_player() -> None:
    lobby = _two_players()
    _send(lobby, 1, Invite(DAVE.ue_id))
    [err] = _send(lobby, 1, Accept("s1"))[1]
    assert isinstance(err, Error) and "only the invited player" in err.reason
    _send(lobby, 2, Accept("s1"))
    [err] = _send(lobby, 2, Agree("s1"))[2]
    assert isinstance(err, Error) and "nothing proposed" in err.reason
    _send(lobby, 1, Propose("s1", RULES))
    [err] = _send(lobby, 1, Agree("s1"))[1]
    assert isinstance(err, Error) and "other player" in err.reason
    stranger = GameRules(session_server="tel:+15550100004")
    [err] = _send(lobby, 2, Propose("s1", stranger))[2]
    assert isinstance(err, Error) and "session_server" in err.reason


def test_counter_proposal_is_what_gets_agreed() -> None:
    lobby = _two_players()
    _send(lobby, 1, Invite(DAVE.ue_id))
    _send(lobby, 2, Accept("s1"))
    _send(lobby, 1, Propose("s1", RULES))
    counter = GameRules(tick_rate=20, max_datagram=256, session_server=BILL.ue_id)
    _send(lobby, 2, Propose("s1", counter))
    assert _send(lobby, 1, Agree("s1"))[2] == [SessionServer("s1", counter)]


def test_identity_checks() -> None:
    lobby = _two_players()
    _send(lobby, 1, Invite(DAVE.ue_id))
    _send(lobby, 2, Accept("s1"))
    [err] = _send(lobby, 2, Identity("s1", DAVE.ue_id, DAVE.mno_id))[2]
    assert isinstance(err, Error) and "negotiating, not agreed" in err.reason
    _send(lobby, 1, Propose("s1", RULES))
    _send(lobby, 2, Agree("s1"))
    [err] = _send(lobby, 1, Identity("s1", BILL.ue_id, BILL.mno_id))[1]
    assert isinstance(err, Error) and "session server does not forward" in err.reason
    [err] = _send(lobby, 2, Identity("s1", DAVE.ue_id, "001-01"))[2]
    assert isinstance(err, Error) and "said in hello" in err.reason


def test_decline_ends_the_session() -> None:
    lobby = _two_players()
    _send(lobby, 1, Invite(DAVE.ue_id))
    out = _send(lobby, 2, Decline("s1", "busy"))
    assert out == {1: [Declined("s1", DAVE.ue_id, "busy")], 2: [Declined("s1", DAVE.ue_id, "busy")]}
    [err] = _send(lobby, 2, Accept("s1"))[2]
    assert isinstance(err, Error) and err.code == "unknown-session"


def test_disconnect_updates_presence_and_ends_open_sessions() -> None:
    lobby = _two_players()
    _send(lobby, 1, Invite(DAVE.ue_id))
    out = lobby.disconnect(2)
    assert [(o.conn, o.message) for o in out] == [
        (1, Declined("s1", DAVE.ue_id, "left")), (1, Presence((BILL,)))]
    assert lobby.disconnect(2) == []


def test_client_tracks_and_refuses_misuse() -> None:
    dave = LobbyClient(DAVE)
    with pytest.raises(LobbyUsageError):
        dave.accept("s1")
    dave.receive(encode_message(Invited("s1", BILL, DAVE.ue_id)))
    assert dave.invitations == {"s1": BILL}
    assert dave.accept("s1") == Accept("s1")
    with pytest.raises(LobbyUsageError):
        dave.forward_identity("s1")
    dave.receive(encode_message(SessionServer("s1", RULES)))
    assert dave.forward_identity("s1") == Identity("s1", DAVE.ue_id, DAVE.mno_id)
    bill = LobbyClient(BILL)
    assert bill.host("s1").rules.session_server == BILL.ue_id
    bill.receive(encode_message(SessionServer("s1", RULES)))
    with pytest.raises(LobbyUsageError):
        bill.forward_identity("s1")
