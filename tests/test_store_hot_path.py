"""What the registrar asks of the store per REGISTER, done in few statements, with the records
read back equal to those written.

A digest REGISTER looks its subscriber up, reads the AOR's bindings, upserts one and reads them
again (RFC 3261 section 10.3 steps 3 to 8). Records read back from the store's own tables are
built without re-running their checks (each value passed them on its way in); these tests pin
that the result is the same record, and that the statement counts stay down.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ims.sip.address import Address
from ims.store import Binding, InvalidRecord, Subscriber, _stored_record, new_subscriber
from ims.store.sqlite import SqliteStore

REALM = "ims.mnc001.mcc001.3gppnetwork.org"
IMPI = f"bill@{REALM}"
TEL = "tel:+15550100001"
SIP = f"sip:+15550100001@{REALM}"
T0 = 1_700_000_000.0


def bill() -> Subscriber:
    return new_subscriber(IMPI, [TEL, SIP], "bill-Secret-7f3a", [REALM, "127.0.1.1"], now=T0,
                          display_name="Bill")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "alpha.sqlite") as s:
        s.subscribers.add(bill())
        yield s


def _statements(store: SqliteStore) -> list[str]:
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


def test_subscriber_read_back_equals_the_one_added_by_any_identity(store: SqliteStore) -> None:
    added = bill()
    # Credentials come back in realm order (as the store always gave them).
    expected = replace(added, credentials=tuple(sorted(added.credentials, key=lambda c: c.realm)))
    for identity in (IMPI, TEL, SIP, f" {SIP};user=phone ", f"sip:%2B15550100001@{REALM.upper()}"):
        found = store.subscribers.get(identity)
        assert found == expected, identity
        assert found.impus == (TEL, SIP)  # stored order: the default public identity first
    assert store.subscribers.get(f"nobody@{REALM}") is None
    assert store.subscribers.get("sip:nobody@example.com") is None
    assert store.subscribers.get("not an identity") is None


def test_subscriber_lookup_is_one_statement(store: SqliteStore) -> None:
    seen = _statements(store)
    store.subscribers.get(IMPI)  # the digest username (RFC 3261 section 22.4)
    assert len(seen) == 1, seen
    seen.clear()
    store.subscribers.get(SIP)  # a Request-URI
    assert len(seen) == 1, seen


def test_rfc3261_10_3_step_7_binding_read_back_equals_the_one_written(
    store: SqliteStore,
) -> None:
    written = Binding(
        aor=TEL, contact="sip:bill@198.51.100.7:40000;ob", expires_at=T0 + 600.5,
        call_id="reg-1@ue", cseq=7, q=0.5, path=("<sip:tok@127.0.1.1;lr;ob>",),
        instance_id="<urn:uuid:00000000-0000-1000-8000-000000000001>", reg_id=1,
        received=Address("UDP", "198.51.100.7", 40000), registered_via="<sip:tok@127.0.1.1>",
        supports=("path", "outbound"),
    )
    store.bindings.upsert(written)
    assert store.bindings.list_for_aor(TEL, T0) == (written,)
    plain = Binding(aor=TEL, contact="sip:bill@192.0.2.1", expires_at=T0 + 60,
                    call_id="reg-2@ue", cseq=1)
    store.bindings.upsert(plain)
    assert set(store.bindings.list_for_aor(TEL, T0)) == {written, plain}


def test_rfc3261_10_3_step_7_upsert_is_one_transaction_of_few_statements(
    store: SqliteStore,
) -> None:
    first = Binding(aor=TEL, contact="sip:bill@192.0.2.1", expires_at=T0 + 60,
                    call_id="reg-1@ue", cseq=1)
    seen = _statements(store)
    assert store.bindings.upsert(first) == ()
    # BEGIN IMMEDIATE, the lookup of what it replaces, INSERT, COMMIT.
    assert len(seen) == 4, seen
    seen.clear()
    refreshed = Binding(aor=TEL, contact="sip:bill@192.0.2.1", expires_at=T0 + 120,
                        call_id="reg-1@ue", cseq=2)
    assert store.bindings.upsert(refreshed) == (first,)  # the binding it replaced
    assert len(seen) == 5, seen  # and one DELETE
    assert store.bindings.list_for_aor(TEL, T0) == (refreshed,)


def test_stored_record_refuses_a_missing_or_unknown_field() -> None:
    with pytest.raises(InvalidRecord, match="exactly the fields"):
        _stored_record(Binding, aor=TEL, contact="sip:a@192.0.2.1")
