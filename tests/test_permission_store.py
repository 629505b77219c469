"""The store's permission tables: rule sets (docs/extension.md 6.3) and the decision audit
(section 11), on SQLite, surviving a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ims.permission.audit import DecisionRecord, How
from ims.permission.outcomes import Outcome
from ims.permission.rules import parse_rule_set
from ims.store import InvalidRecord, StoreUsageError, UnknownSubscriber, new_subscriber
from ims.store.sqlite import MIGRATIONS, SqliteStore

BETA = "ims.mnc002.mcc001.3gppnetwork.org"
DAVE_IMPI = f"dave@{BETA}"
DAVE_SIP = f"sip:+15550100002@{BETA}"
DAVE_TEL = "tel:+15550100002"
T0 = 1_767_225_600.0
RULES = '{"version":1,"rules":[{"id":"friends","action":"allow","peer":"tel:+15550100001"}]}'


def open_with_dave(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    store.subscribers.add(new_subscriber(DAVE_IMPI, [DAVE_SIP, DAVE_TEL], "pw", BETA, now=T0))
    return store


def record(at: float, callee: str = DAVE_TEL, outcome: Outcome = Outcome.ALLOWED,
           how: How = How.RULE, detail: str | None = "friends") -> DecisionRecord:
    return DecisionRecord(at, f"call-{at}", "sip:+15550100001@ims.mnc001.mcc001.3gppnetwork.org",
                          "ims.mnc001.mcc001.3gppnetwork.org", callee, "com.example.pong",
                          outcome, how, detail)


def test_rule_set_put_get_remove_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "op.sqlite"
    with open_with_dave(path) as store:
        stored = store.rules.put(DAVE_TEL, RULES, etag="e1", expires_at=T0 + 86400, now=T0)
        assert stored.subscriber == DAVE_IMPI
        store.rules.put(DAVE_SIP, RULES, etag="e2", expires_at=T0 + 86400, now=T0 + 1)
    with SqliteStore(path) as again:
        got = again.rules.get(DAVE_IMPI, T0 + 2)
        assert got is not None and got.etag == "e2" and got.updated_at == T0 + 1
        assert parse_rule_set(got.body).rules[0].id == "friends"
        assert again.rules.get(DAVE_TEL, T0 + 86400) is None  # expired
        assert again.rules.remove(DAVE_SIP) == got
        assert again.rules.get(DAVE_TEL, T0 + 2) is None
        assert again.rules.remove(DAVE_SIP) is None


def test_rule_set_needs_subscriber_and_valid_record(tmp_path: Path) -> None:
    with open_with_dave(tmp_path / "op.sqlite") as store:
        with pytest.raises(UnknownSubscriber):
            store.rules.put("tel:+15550100009", RULES, etag="e", expires_at=T0, now=T0)
        with pytest.raises(InvalidRecord):
            store.rules.put(DAVE_TEL, "[]", etag="e", expires_at=T0, now=T0)
        with pytest.raises(InvalidRecord):
            store.rules.put(DAVE_TEL, RULES, etag="bad etag", expires_at=T0, now=T0)
        assert store.rules.get("tel:+15550100009", T0) is None
        # removing the subscriber takes its rule set along
        store.rules.put(DAVE_TEL, RULES, etag="e", expires_at=T0 + 10, now=T0)
        store.subscribers.remove(DAVE_IMPI)
        assert store.read("SELECT count(*) FROM rule_set") == [(0,)]


def test_decisions_record_list_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "op.sqlite"
    with open_with_dave(path) as store:
        store.decisions.record(record(T0 + 1))
        store.decisions.record(record(T0 + 2, callee=DAVE_SIP, outcome=Outcome.NO_ANSWER,
                                      how=How.DEADLINE, detail=None))
        store.decisions.record(record(T0 + 3, callee="tel:+15550100004"))
    with SqliteStore(path) as again:
        listed = again.decisions.list(DAVE_IMPI)
        assert [d.at for d in listed] == [T0 + 2, T0 + 1]  # newest first, both IMPUs
        assert listed[0].outcome is Outcome.NO_ANSWER and listed[0].how is How.DEADLINE
        assert listed[1] == record(T0 + 1)
        assert again.decisions.list(DAVE_TEL, limit=1) == listed[:1]
        assert [d.at for d in again.decisions.list("tel:+15550100004")] == [T0 + 3]
        with pytest.raises(StoreUsageError):
            again.decisions.list(DAVE_TEL, limit=0)
        # the audit outlives the subscription
        again.subscribers.remove(DAVE_IMPI)
        assert len(again.decisions.list(DAVE_TEL)) == 1  # listed by that identity now


def test_migration_from_version_1(tmp_path: Path) -> None:
    """A store written before the permission tables gains them, keeping its data."""
    path = tmp_path / "old.sqlite"
    with SqliteStore(path, migrations=MIGRATIONS[:1]) as old:
        old.subscribers.add(new_subscriber(DAVE_IMPI, [DAVE_TEL], "pw", BETA, now=T0))
        assert old.schema_version == 1
    with SqliteStore(path) as new:
        assert new.schema_version == len(MIGRATIONS)
        assert new.subscribers.get(DAVE_TEL) is not None
        new.rules.put(DAVE_TEL, RULES, etag="e", expires_at=T0 + 1, now=T0)
    assert sqlite3.connect(path).execute("SELECT count(*) FROM rule_set").fetchone() == (1,)
