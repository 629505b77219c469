"""The store's record of gateway allocations (ims.store `allocations`, SQLite migration 3):
PCP mappings and relay allocations by gateway run, replaced, removed, expired, listed by
operator; readable from a second connection while the first writes (WAL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ims.store import GatewayRun, InvalidRecord, PcpMappingRecord, RelayRecord
from ims.store.sqlite import MIGRATIONS, SqliteStore

T0 = 1_700_000_000.0
RUN = GatewayRun("Alpha", "run-1", "host-a", 4242)
LATER = GatewayRun("Alpha", "run-2", "host-a", 4343)
BETA = GatewayRun("Beta", "run-b", "host-a", 4444)
NONCE = bytes(range(12))


def mapping(run: GatewayRun = RUN, call_id: str = "c1", leg: str = "originating",
            **fields: object) -> PcpMappingRecord:
    record = PcpMappingRecord(run, call_id, leg, "127.0.0.1", 5351, 17, "MAP", "100.64.0.2",
                              40000, "192.0.2.10", 50000, None, None, NONCE, 120, T0 + 120)
    return replace(record, **fields)  # type: ignore[arg-type]


def relay(run: GatewayRun = RUN, call_id: str = "c1", leg: str = "originating",
          expires_at: float = T0 + 60) -> RelayRecord:
    return RelayRecord(run, call_id, leg, "127.0.1.2", 30000, 30001, "127.0.0.1:40000", None,
                       expires_at)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "alpha.sqlite") as s:
        yield s


def test_mapping_put_replaces_the_legs_record_and_remove_returns_it(store: SqliteStore) -> None:
    store.allocations.put_mapping(mapping())
    assert store.allocations.mappings() == (mapping(),)
    # RFC 6887 section 13.3: a renewal with a FILTER replaces the mapping's; one record a leg.
    filtered = mapping(peer_address="192.0.2.20", peer_port=51000, expires_at=T0 + 200)
    store.allocations.put_mapping(filtered)
    assert store.allocations.mappings() == (filtered,)
    assert store.allocations.remove_mapping("run-1", "c1", "originating") == filtered
    assert store.allocations.remove_mapping("run-1", "c1", "originating") is None
    assert store.allocations.mappings() == ()


def test_listing_by_owner_and_in_run_order(store: SqliteStore) -> None:
    store.allocations.put_mapping(mapping(LATER, "c2"))
    store.allocations.put_mapping(mapping(RUN, "c1"))
    store.allocations.put_mapping(mapping(BETA, "c3", "terminating", opcode="PEER",
                                          peer_address="198.51.100.7", peer_port=41000))
    assert [m.call_id for m in store.allocations.mappings("Alpha")] == ["c2", "c1"]
    assert [m.holder for m in store.allocations.mappings("Beta")] == [BETA]
    assert len(store.allocations.mappings()) == 3


def test_relays_replaced_per_call_and_forgotten_with_their_run(store: SqliteStore) -> None:
    store.allocations.put_relays("run-1", "c1", [relay(), relay(leg="terminating")])
    store.allocations.put_relays("run-1", "c2", [relay(call_id="c2")])
    answered = replace(relay(), callee_peer="127.0.0.1:40002")
    store.allocations.put_relays("run-1", "c1", [answered])
    assert store.allocations.relays("Alpha") == (answered, relay(call_id="c2"))
    store.allocations.put_mapping(mapping())
    assert store.allocations.forget_run("run-1") == 2
    assert store.allocations.relays() == () and len(store.allocations.mappings()) == 1
    assert store.allocations.forget_run("run-1", mappings=True) == 1
    assert store.allocations.mappings() == ()
    with pytest.raises(InvalidRecord):
        store.allocations.put_relays("run-1", "other", [relay()])


def test_expire_forgets_what_lapsed(store: SqliteStore) -> None:
    store.allocations.put_mapping(mapping(expires_at=T0 + 10))
    store.allocations.put_mapping(mapping(call_id="c2", expires_at=T0 + 100))
    store.allocations.put_relays("run-1", "c3", [relay(call_id="c3", expires_at=T0 + 5)])
    assert store.allocations.expire(T0 + 10) == 2
    assert [m.call_id for m in store.allocations.mappings()] == ["c2"]
    assert store.allocations.relays() == ()


def test_a_run_id_belongs_to_one_process(store: SqliteStore) -> None:
    store.allocations.put_mapping(mapping())
    with pytest.raises(InvalidRecord, match="another owner or process"):
        store.allocations.put_mapping(mapping(replace(RUN, pid=1), call_id="c9"))


@pytest.mark.parametrize(("fields", "defect"), [
    ({"nonce": b"short"}, "12 octets"),
    ({"leg": "sideways"}, "leg"),
    ({"opcode": "ANNOUNCE"}, "opcode"),
    ({"opcode": "PEER"}, "remote peer"),
    ({"peer_address": "192.0.2.1"}, "both"),
    ({"internal_port": 70000}, "port"),
    ({"lifetime": 0}, "lifetime"),
    ({"expires_at": float("nan")}, "finite"),
])
def test_invalid_mapping_records_are_refused(fields: dict[str, object], defect: str) -> None:
    with pytest.raises(InvalidRecord, match=defect):
        replace(mapping(), **fields)  # type: ignore[arg-type]


def test_rfc6887_nonce_is_96_bits_and_kept_exactly(store: SqliteStore) -> None:
    nonce = bytes([0, 255] * 6)  # NUL octets survive the BLOB
    store.allocations.put_mapping(mapping(nonce=nonce))
    [record] = store.allocations.mappings()
    assert record.nonce == nonce and "nonce" not in repr(record)


def test_migration_3_upgrades_a_version_2_file_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with SqliteStore(path, migrations=MIGRATIONS[:2]) as old:
        assert old.schema_version == 2
        old.secret("k", lambda: b"kept")
    with SqliteStore(path) as new:
        assert new.schema_version == len(MIGRATIONS) >= 3
        assert new.secret("k", lambda: b"other") == b"kept"
        new.allocations.put_mapping(mapping())
        assert len(new.allocations.mappings()) == 1


def test_a_second_connection_reads_while_the_first_writes(tmp_path: Path) -> None:
    path = tmp_path / "alpha.sqlite"
    with SqliteStore(path) as writer, SqliteStore(path) as reader:
        writer.allocations.put_mapping(mapping())
        with writer.write() as db:  # a write transaction held open (WAL: readers go on)
            db.execute("DELETE FROM pcp_mapping")
            assert len(reader.allocations.mappings()) == 1
        assert reader.allocations.mappings() == ()
        assert isinstance(writer.read("PRAGMA journal_mode")[0][0], str)


def test_the_schema_refuses_a_bad_nonce_below_the_api(store: SqliteStore) -> None:
    store.allocations.put_mapping(mapping())
    with pytest.raises(sqlite3.IntegrityError), store.write() as db:
        db.execute("UPDATE pcp_mapping SET nonce = x'00'")
