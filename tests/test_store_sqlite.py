"""Tests for ims.store and its SQLite backend: records, restart survival, WAL, expiry."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ims.sip.address import Address
from ims.sip.digest import DigestAlgorithm, StoredHA1, compute_ha1
from ims.store import (
    SESSION_ENDED,
    Binding,
    DuplicateSession,
    DuplicateSubscriber,
    InvalidIdentity,
    InvalidRecord,
    SchemaTooNew,
    Session,
    SessionEnded,
    Store,
    StoreUnavailable,
    Subscriber,
    UnknownSession,
    UnknownSubscriber,
    canonical_aor,
    new_subscriber,
    open_store,
)
from ims.store.sqlite import MIGRATIONS, SqliteStore

REALM = "ims.mnc001.mcc001.3gppnetwork.org"
BILL_IMPI = f"bill@{REALM}"
BILL_TEL = "tel:+15550100001"
BILL_SIP = f"sip:+15550100001@{REALM}"
CAROL_IMPI = f"carol@{REALM}"
PASSWORD = "bill-Secret-7f3a"
T0 = 1_700_000_000.0


def bill(now: float = T0) -> Subscriber:
    return new_subscriber(BILL_IMPI, [BILL_TEL, BILL_SIP + ";user=phone"], PASSWORD, REALM,
                          now=now, display_name="Bill")


def carol() -> Subscriber:
    return new_subscriber(CAROL_IMPI, ["tel:+15550100003"], "carol-pw", REALM, now=T0)


def binding(contact: str = "sip:bill@198.51.100.7:40000", expires_at: float = T0 + 3600,
            **fields: Any) -> Binding:
    values: dict[str, object] = {"aor": BILL_TEL, "contact": contact, "expires_at": expires_at,
                                 "call_id": "reg-1@ue", "cseq": 1}
    values.update(fields)
    return Binding(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "alpha.sqlite") as s:
        yield s


# ---- the database file --------------------------------------------------------------------


def test_wal_mode_foreign_keys_and_schema_version(store: SqliteStore) -> None:
    assert store.journal_mode == "wal"
    assert store.foreign_keys
    assert store.schema_version == len(MIGRATIONS)
    # WAL is a property of the file: a plain connection sees it too.
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_open_store_from_config(tmp_path: Path) -> None:
    from ims.config import StoreConfig

    with open_store(StoreConfig("sqlite", tmp_path / "d" / "x.sqlite")) as s:
        s.subscribers.add(bill())
    assert (tmp_path / "d" / "x.sqlite").exists()


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "alpha.sqlite"
    first: Store = SqliteStore(path)
    with first:
        first.subscribers.add(bill())
        first.bindings.upsert(binding(path=("<sip:pcscf.alpha;lr>",), instance_id="urn:uuid:1",
                                      reg_id=1, received=Address("UDP", "198.51.100.7", 40000),
                                      registered_via="pcscf", supports=("ueconnect",), q=0.5))
        first.sessions.create(Session("call-1", BILL_TEL, "tel:+15550100002", "inquiring",
                                      T0, T0 + 60, {"relay": {"port": 40002}}))
        key = first.secret("nonce-key", lambda: b"\x01" * 32)
    with SqliteStore(path) as again:
        assert again.subscribers.get(BILL_IMPI) == bill()
        (kept,) = again.bindings.list_for_aor(BILL_TEL, T0)
        assert kept.received == Address("UDP", "198.51.100.7", 40000)
        assert (kept.path, kept.supports, kept.q) == (("<sip:pcscf.alpha;lr>",),
                                                      ("ueconnect",), 0.5)
        (session,) = again.sessions.list_active(T0)
        assert session.details == {"relay": {"port": 40002}}
        assert again.secret("nonce-key", lambda: b"\x02" * 32) == key == b"\x01" * 32
        assert again.schema_version == len(MIGRATIONS)


def test_two_handles_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    # Roles running as separate processes share the file.
    with SqliteStore(tmp_path / "a.sqlite") as one, SqliteStore(tmp_path / "a.sqlite") as two:
        one.subscribers.add(bill())
        assert two.subscribers.get(BILL_TEL) is not None
        two.bindings.upsert(binding())
        assert len(one.bindings.list_for_aor(BILL_TEL, T0)) == 1


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaTooNew, match="schema version 99 is newer"):
        SqliteStore(path)


def test_migrations_apply_in_order_and_keep_data(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    with SqliteStore(path) as v1:
        v1.subscribers.add(bill())
    extra = ("ALTER TABLE subscriber ADD COLUMN note TEXT",)
    with SqliteStore(path, migrations=(*MIGRATIONS, extra)) as v2:
        assert v2.schema_version == len(MIGRATIONS) + 1
        assert v2.subscribers.get(BILL_IMPI) == bill()
    with SqliteStore(path, migrations=(*MIGRATIONS, extra)) as again:  # not applied twice
        assert again.schema_version == len(MIGRATIONS) + 1


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreUnavailable, match=r"junk\.sqlite"):
        SqliteStore(path)


# ---- subscribers ------------------------------------------------------------------------


def test_ha1_is_stored_never_the_password(tmp_path: Path) -> None:
    path = tmp_path / "alpha.sqlite"
    with SqliteStore(path) as s:
        s.subscribers.add(bill())
        stored = s.subscribers.get(BILL_IMPI)
    assert stored is not None
    secret = stored.secret_for(REALM)
    assert secret == StoredHA1.from_password(
        BILL_IMPI, REALM, PASSWORD, (DigestAlgorithm.MD5, DigestAlgorithm.SHA_256))
    assert secret.values[DigestAlgorithm.SHA_256] == compute_ha1(
        DigestAlgorithm.SHA_256, BILL_IMPI, REALM, PASSWORD)
    assert stored.secret_for("other.realm") is None
    assert PASSWORD not in repr(stored)
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert PASSWORD.encode() not in blobs
    assert secret.values[DigestAlgorithm.MD5].encode() in blobs


def test_rfc3261_section_10_3_step_5_aor_canonical_form() -> None:
    # URI parameters removed, escapes undone, host case folded; tel: separators dropped.
    assert canonical_aor("sip:%2B15550100001@IMS.MNC001.mcc001.3gppnetwork.org;user=phone") \
        == BILL_SIP
    assert canonical_aor("tel:+1-555-010-0001;foo=bar") == BILL_TEL
    assert canonical_aor("sips:Bill@Example.org:5061") == "sips:Bill@example.org:5061"
    for bad in ("tel:5550100001", "mailto:bill@x.org", f"sip:{REALM}", "bill"):
        with pytest.raises(InvalidIdentity):
            canonical_aor(bad)


def test_get_by_impi_or_any_impu_in_any_form(store: SqliteStore) -> None:
    store.subscribers.add(bill())
    for identity in (BILL_IMPI, BILL_TEL, "tel:+1.555.010.0001", BILL_SIP,
                     f"sip:+15550100001@{REALM.upper()};user=phone"):
        found = store.subscribers.get(identity)
        assert found is not None and found.impi == BILL_IMPI, identity
        assert found.impus == (BILL_TEL, BILL_SIP)
    assert store.subscribers.get("tel:+15550100002") is None
    assert store.subscribers.get("not an identity") is None


def test_duplicates_are_refused_by_impi_and_by_impu(store: SqliteStore) -> None:
    store.subscribers.add(bill())
    with pytest.raises(DuplicateSubscriber, match="already a private identity"):
        store.subscribers.add(bill())
    twin = new_subscriber(CAROL_IMPI, ["tel:+1-555-010-0001"], "pw", REALM, now=T0)
    with pytest.raises(DuplicateSubscriber, match=f"public identity \\(of {BILL_IMPI}\\)"):
        store.subscribers.add(twin)
    assert store.subscribers.get(CAROL_IMPI) is None  # nothing half-added


def test_list_and_remove(store: SqliteStore) -> None:
    store.subscribers.add(carol())
    store.subscribers.add(bill())
    assert [s.impi for s in store.subscribers.list()] == [BILL_IMPI, CAROL_IMPI]
    store.bindings.upsert(binding())
    assert store.subscribers.remove(BILL_IMPI) == bill()
    assert store.subscribers.get(BILL_TEL) is None
    # Its bindings went with it (ON DELETE CASCADE through the IMPU).
    assert store.bindings.list_for_aor(BILL_TEL, T0) == ()
    with pytest.raises(UnknownSubscriber, match=BILL_IMPI):
        store.subscribers.remove(BILL_IMPI)


def test_subscriber_records_validate_themselves() -> None:
    with pytest.raises(InvalidIdentity, match="user@realm"):
        new_subscriber("bill", [BILL_TEL], "pw", REALM, now=T0)
    with pytest.raises(InvalidRecord, match="at least one public identity"):
        new_subscriber(BILL_IMPI, [], "pw", REALM, now=T0)
    with pytest.raises(InvalidRecord, match="password is empty"):
        new_subscriber(BILL_IMPI, [BILL_TEL], "", REALM, now=T0)
    with pytest.raises(InvalidIdentity, match="canonical"):
        Subscriber(BILL_IMPI, ("tel:+1-555-010-0001",), bill().credentials, T0)


# ---- bindings ----------------------------------------------------------------------------


def test_upsert_replaces_the_same_contact(store: SqliteStore) -> None:
    store.subscribers.add(bill())
    assert store.bindings.upsert(binding()) == ()
    refreshed = binding(expires_at=T0 + 7200, cseq=2)
    (old,) = store.bindings.upsert(refreshed)
    assert old.cseq == 1
    assert store.bindings.list_for_aor(BILL_TEL, T0) == (refreshed,)


def test_rfc5626_section_6_same_instance_and_reg_id_replace_the_flow(store: SqliteStore) -> None:
    store.subscribers.add(bill())
    flow1 = binding("sip:bill@198.51.100.7:40000", instance_id="urn:uuid:ue-1", reg_id=1)
    flow2 = binding("sip:bill@198.51.100.7:40002", instance_id="urn:uuid:ue-1", reg_id=2)
    store.bindings.upsert(flow1)
    store.bindings.upsert(flow2)  # another reg-id: a second flow, both kept
    assert len(store.bindings.list_for_aor(BILL_TEL, T0)) == 2
    moved = binding("sip:bill@198.51.100.9:41000", instance_id="urn:uuid:ue-1", reg_id=1)
    assert store.bindings.upsert(moved) == (flow1,)
    assert {b.contact for b in store.bindings.list_for_aor(BILL_TEL, T0)} == {
        flow2.contact, moved.contact}


def test_list_for_aor_hides_expired_and_orders_by_q(store: SqliteStore) -> None:
    store.subscribers.add(bill())
    store.bindings.upsert(binding("sip:a@192.0.2.1", q=0.1))
    store.bindings.upsert(binding("sip:b@192.0.2.2"))  # no q: ranks as 1.0
    store.bindings.upsert(binding("sip:c@192.0.2.3", q=0.7))
    store.bindings.upsert(binding("sip:d@192.0.2.4", expires_at=T0 + 10))
    assert [b.contact for b in store.bindings.list_for_aor(BILL_TEL, T0)] == [
        "sip:b@192.0.2.2", "sip:d@192.0.2.4", "sip:c@192.0.2.3", "sip:a@192.0.2.1"]
    assert len(store.bindings.list_for_aor(BILL_TEL, T0 + 10)) == 3
    # Any form of the AOR finds them.
    assert len(store.bindings.list_for_aor("tel:+1-555-010-0001", T0)) == 4


def test_expire_removes_and_returns_what_ran_out(store: SqliteStore) -> None:
    store.subscribers.add(bill())
    store.bindings.upsert(binding("sip:a@192.0.2.1", expires_at=T0 + 10))
    store.bindings.upsert(binding("sip:b@192.0.2.2", expires_at=T0 + 20))
    assert store.bindings.expire(T0 + 9) == ()
    (gone,) = store.bindings.expire(T0 + 10)  # expires_at == now has expired
    assert gone.contact == "sip:a@192.0.2.1"
    assert [b.contact for b in store.bindings.list_for_aor(BILL_TEL, T0)] == ["sip:b@192.0.2.2"]


def test_remove_one_and_rfc3261_section_10_3_step_6_remove_all(store: SqliteStore) -> None:
    store.subscribers.add(bill())
    store.bindings.upsert(binding("sip:a@192.0.2.1"))
    store.bindings.upsert(binding("sip:b@192.0.2.2"))
    assert store.bindings.remove(BILL_TEL, "sip:zz@192.0.2.9") is None
    removed = store.bindings.remove(BILL_TEL, "sip:a@192.0.2.1")
    assert removed is not None and removed.contact == "sip:a@192.0.2.1"
    # Bindings belong to one AOR: the subscriber's other IMPU has none of its own.
    assert store.bindings.remove_all(BILL_SIP) == ()
    assert [b.contact for b in store.bindings.remove_all(BILL_TEL)] == ["sip:b@192.0.2.2"]
    assert store.bindings.list_for_aor(BILL_TEL, T0) == ()


def test_binding_for_an_unknown_aor_is_refused(store: SqliteStore) -> None:
    with pytest.raises(UnknownSubscriber, match="tel:\\+15550100001"):
        store.bindings.upsert(binding())


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"cseq": 2**32}, "32-bit"),  # RFC 3261 section 8.1.1.5
        ({"q": 1.5}, "between 0 and 1"),  # RFC 3261 section 20.10
        ({"reg_id": 1}, "needs an instance_id"),  # RFC 5626 section 4.2
        ({"instance_id": "urn:uuid:1", "reg_id": 0}, "RFC 5626"),
        ({"aor": "tel:+1-555-010-0001"}, "canonical"),
        ({"expires_at": float("nan")}, "finite"),
    ],
)
def test_binding_records_validate_themselves(fields: dict[str, Any], match: str) -> None:
    with pytest.raises((InvalidRecord, InvalidIdentity), match=match):
        binding(**fields)


# ---- sessions ----------------------------------------------------------------------------


def session(call_id: str = "call-1", expires_at: float = T0 + 60) -> Session:
    return Session(call_id, BILL_TEL, "tel:+15550100002", "inquiring", T0, expires_at)


def test_session_lifecycle(store: SqliteStore) -> None:
    store.sessions.create(session())
    with pytest.raises(DuplicateSession):
        store.sessions.create(session())
    updated = store.sessions.update("call-1", state="confirmed", expires_at=T0 + 600,
                                    details={"gateway": ["peer-mapping"]})
    assert (updated.state, updated.expires_at) == ("confirmed", T0 + 600)
    assert store.sessions.get("call-1") == updated
    ended = store.sessions.end("call-1", T0 + 30)
    assert (ended.state, ended.ended_at) == (SESSION_ENDED, T0 + 30)
    assert store.sessions.end("call-1", T0 + 99) == ended  # BYE twice: no change
    assert store.sessions.get("call-1") == ended
    with pytest.raises(SessionEnded):
        store.sessions.update("call-1", state="confirmed")
    with pytest.raises(UnknownSession):
        store.sessions.update("nope", state="x")
    with pytest.raises(UnknownSession):
        store.sessions.end("nope", T0)


def test_list_active_and_expire(store: SqliteStore) -> None:
    store.sessions.create(session("short", T0 + 10))
    store.sessions.create(session("long", T0 + 100))
    store.sessions.create(session("done", T0 + 100))
    store.sessions.end("done", T0 + 1)
    assert [s.call_id for s in store.sessions.list_active(T0)] == ["long", "short"]
    assert {s.call_id for s in store.sessions.list_active(T0 + 10)} == {"long"}
    (expired,) = store.sessions.expire(T0 + 10)
    assert (expired.call_id, expired.state, expired.ended_at) == ("short", SESSION_ENDED,
                                                                  T0 + 10)
    assert store.sessions.expire(T0 + 10) == ()
    assert store.sessions.get("short") == expired


def test_session_details_must_be_json_and_are_frozen() -> None:
    details: dict[str, object] = {"a": [1, 2]}
    s = Session("c", BILL_TEL, BILL_SIP, "new", T0, T0 + 1, details)
    details["a"] = "changed"
    assert s.details == {"a": [1, 2]}
    with pytest.raises(InvalidRecord, match="JSON"):
        Session("c", BILL_TEL, BILL_SIP, "new", T0, T0 + 1, {"x": object()})
    with pytest.raises(InvalidRecord, match="JSON"):
        Session("c", BILL_TEL, BILL_SIP, "new", T0, T0 + 1, {"x": float("nan")})
