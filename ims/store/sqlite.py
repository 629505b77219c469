"""The SQLite backend of the store: one file, WAL mode, foreign keys, versioned schema.

Several role processes of one operator may share the file: WAL lets readers run beside the
one writer, every write is a short `BEGIN IMMEDIATE` transaction, and a busy database is
waited for (`busy_timeout`) rather than failed at once. `synchronous=NORMAL` is the WAL
setting SQLite recommends: a power cut may lose the last transactions, never corrupt the file.

Migrations: `MIGRATIONS[i]` brings the schema from version i to i + 1; they run at open, all
in one transaction, and the version is kept in the `schema_version` table. A file whose
version is newer than this code knows is refused (`SchemaTooNew`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ims.sip.address import Address
from ims.store import (
    SESSION_ENDED,
    Binding,
    DigestHA1,
    DuplicateSession,
    DuplicateSubscriber,
    GatewayRun,
    InvalidRecord,
    JsonObject,
    PcpMappingRecord,
    RelayRecord,
    SchemaTooNew,
    Session,
    SessionEnded,
    StoredRuleSet,
    StoreUnavailable,
    StoreUsageError,
    Subscriber,
    UnknownSession,
    UnknownSubscriber,
    _json_object,
    _stored_record,
    canonical_aor,
    validate_impi,
)

if TYPE_CHECKING:
    from ims.permission.audit import DecisionRecord

__all__ = ["MIGRATIONS", "SqliteStore"]

BUSY_TIMEOUT_S = 5.0

Migration = tuple[str, ...]

MIGRATIONS: tuple[Migration, ...] = (
    # 1: subscribers, registrar bindings, sessions, secrets.
    (
        """CREATE TABLE subscriber (
            impi TEXT PRIMARY KEY NOT NULL,
            display_name TEXT,
            created_at REAL NOT NULL
        )""",
        # One row per public identity; `position` keeps the subscriber's order (the first is
        # the default public identity).
        """CREATE TABLE impu (
            impu TEXT PRIMARY KEY NOT NULL,
            impi TEXT NOT NULL REFERENCES subscriber(impi) ON DELETE CASCADE,
            position INTEGER NOT NULL
        )""",
        "CREATE INDEX impu_by_impi ON impu(impi, position)",
        # HA1 = H(impi:realm:password) per algorithm; the password itself is never stored.
        """CREATE TABLE credential (
            impi TEXT NOT NULL REFERENCES subscriber(impi) ON DELETE CASCADE,
            realm TEXT NOT NULL,
            ha1_md5 TEXT NOT NULL CHECK (length(ha1_md5) = 32),
            ha1_sha256 TEXT NOT NULL CHECK (length(ha1_sha256) = 64),
            PRIMARY KEY (impi, realm)
        )""",
        # RFC 3261 section 10.3: a contact is bound once per AOR; RFC 5626 section 6: one
        # binding per (AOR, instance-id, reg-id).
        """CREATE TABLE binding (
            id INTEGER PRIMARY KEY,
            aor TEXT NOT NULL REFERENCES impu(impu) ON DELETE CASCADE,
            contact TEXT NOT NULL,
            expires_at REAL NOT NULL,
            q REAL,
            call_id TEXT NOT NULL,
            cseq INTEGER NOT NULL,
            path TEXT NOT NULL,
            instance_id TEXT,
            reg_id INTEGER,
            received_transport TEXT,
            received_host TEXT,
            received_port INTEGER,
            registered_via TEXT,
            supports TEXT NOT NULL,
            UNIQUE (aor, contact)
        )""",
        """CREATE UNIQUE INDEX binding_flow ON binding(aor, instance_id, reg_id)
            WHERE instance_id IS NOT NULL AND reg_id IS NOT NULL""",
        "CREATE INDEX binding_expiry ON binding(expires_at)",
        """CREATE TABLE session (
            call_id TEXT PRIMARY KEY NOT NULL,
            from_identity TEXT NOT NULL,
            to_identity TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            ended_at REAL,
            details TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX session_open ON session(expires_at) WHERE ended_at IS NULL",
        """CREATE TABLE secret (
            name TEXT PRIMARY KEY NOT NULL,
            value BLOB NOT NULL
        )""",
    ),
    # 2: the permission function (docs/extension.md): published rule sets (section 6.3) and
    # the decision audit (section 11).
    (
        """CREATE TABLE rule_set (
            impi TEXT PRIMARY KEY NOT NULL REFERENCES subscriber(impi) ON DELETE CASCADE,
            body TEXT NOT NULL,
            etag TEXT NOT NULL,
            expires_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        # No foreign key: the audit outlives the subscription. `callee_aor` is the callee's
        # canonical AOR, the key records are listed under.
        """CREATE TABLE decision (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            call_id TEXT NOT NULL,
            caller TEXT NOT NULL,
            caller_mno TEXT NOT NULL,
            callee TEXT NOT NULL,
            callee_aor TEXT NOT NULL,
            application TEXT NOT NULL,
            outcome TEXT NOT NULL,
            how TEXT NOT NULL,
            detail TEXT,
            inquiry TEXT,
            anonymous INTEGER NOT NULL,
            note TEXT
        )""",
        "CREATE INDEX decision_by_callee ON decision(callee_aor, at)",
    ),
    # 3: what connectivity gateways hold open (ims.gateway.pcp_gateway), by run: PCP mappings
    # with the nonce a later run deletes them with (RFC 6887 section 15), relay allocations.
    (
        """CREATE TABLE gateway_run (
            run_id TEXT PRIMARY KEY NOT NULL,
            owner TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            seq INTEGER NOT NULL
        )""",
        "CREATE INDEX gateway_run_by_owner ON gateway_run(owner, seq)",
        """CREATE TABLE pcp_mapping (
            run_id TEXT NOT NULL REFERENCES gateway_run(run_id) ON DELETE CASCADE,
            call_id TEXT NOT NULL,
            leg TEXT NOT NULL,
            server TEXT NOT NULL,
            server_port INTEGER NOT NULL,
            protocol INTEGER NOT NULL,
            opcode TEXT NOT NULL,
            internal_address TEXT NOT NULL,
            internal_port INTEGER NOT NULL,
            external_address TEXT NOT NULL,
            external_port INTEGER NOT NULL,
            peer_address TEXT,
            peer_port INTEGER,
            nonce BLOB NOT NULL CHECK (length(nonce) = 12),
            lifetime INTEGER NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (run_id, call_id, leg)
        )""",
        "CREATE INDEX pcp_mapping_expiry ON pcp_mapping(expires_at)",
        """CREATE TABLE relay_allocation (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES gateway_run(run_id) ON DELETE CASCADE,
            call_id TEXT NOT NULL,
            leg TEXT NOT NULL,
            relay_address TEXT NOT NULL,
            caller_side_port INTEGER NOT NULL,
            callee_side_port INTEGER NOT NULL,
            caller_peer TEXT,
            callee_peer TEXT,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX relay_allocation_by_call ON relay_allocation(run_id, call_id)",
        "CREATE INDEX relay_allocation_expiry ON relay_allocation(expires_at)",
    ),
)


class SqliteStore:
    """`Store` on one SQLite file (created, with its directory, when missing)."""

    def __init__(self, path: str | Path, *, migrations: Sequence[Migration] = MIGRATIONS,
                 busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._migrations = tuple(migrations)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the store {self.path}: {exc}") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(
                    f"{self.path}: SQLite refused WAL mode (journal_mode is {mode}); put the "
                    "store on a local file system"
                )
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreUnavailable(
                f"{self.path}: {exc}; is [store] path a ueconnect SQLite store?"
            ) from None
        except StoreUnavailable:
            self._db.close()
            raise
        self._subscribers = _Subscribers(self)
        self._bindings = _Bindings(self)
        self._sessions = _Sessions(self)
        self._rules = _RuleSets(self)
        self._decisions = _Decisions(self)
        self._allocations = _Allocations(self)

    # ---- Store ------------------------------------------------------------------------------

    @property
    def subscribers(self) -> _Subscribers:
        return self._subscribers

    @property
    def bindings(self) -> _Bindings:
        return self._bindings

    @property
    def sessions(self) -> _Sessions:
        return self._sessions

    @property
    def rules(self) -> _RuleSets:
        return self._rules

    @property
    def decisions(self) -> _Decisions:
        return self._decisions

    @property
    def allocations(self) -> _Allocations:
        return self._allocations

    def secret(self, name: str, create: Callable[[], bytes]) -> bytes:
        with self.write() as db:
            row = db.execute("SELECT value FROM secret WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return bytes(row[0])
            value = create()
            db.execute("INSERT INTO secret (name, value) VALUES (?, ?)", (name, value))
            return value

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- inspection (tests, `ueconnect` diagnostics) ----------------------------------------

    @property
    def schema_version(self) -> int:
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0])

    @property
    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    @property
    def foreign_keys(self) -> bool:
        return bool(self._db.execute("PRAGMA foreign_keys").fetchone()[0])

    # ---- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; taken up front so two writers never deadlock on upgrade."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"{self.path}: {exc} (another process holds it)") from None
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._db.execute(sql, tuple(args)).fetchall()

    def _migrate(self) -> None:
        known = len(self._migrations)
        with self.write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > known:
                raise SchemaTooNew(str(self.path), version, known)
            for migration in self._migrations[version:]:
                for statement in migration:
                    db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (known,))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


class _Subscribers:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def add(self, subscriber: Subscriber) -> None:
        s = subscriber
        with self._store.write() as db:
            if db.execute("SELECT 1 FROM subscriber WHERE impi = ?", (s.impi,)).fetchone():
                raise DuplicateSubscriber(s.impi, s.impi)
            for impu in s.impus:
                row = db.execute("SELECT impi FROM impu WHERE impu = ?", (impu,)).fetchone()
                if row is not None:
                    raise DuplicateSubscriber(impu, row[0])
            db.execute("INSERT INTO subscriber (impi, display_name, created_at) VALUES (?, ?, ?)",
                       (s.impi, s.display_name, s.created_at))
            db.executemany("INSERT INTO impu (impu, impi, position) VALUES (?, ?, ?)",
                           [(impu, s.impi, i) for i, impu in enumerate(s.impus)])
            db.executemany(
                "INSERT INTO credential (impi, realm, ha1_md5, ha1_sha256) VALUES (?, ?, ?, ?)",
                [(s.impi, c.realm, c.ha1_md5, c.ha1_sha256) for c in s.credentials],
            )

    def get(self, identity: str) -> Subscriber | None:
        # As _impi_of then _load, one query per form tried (the registrar asks per REGISTER).
        text = identity.strip()
        if "@" in text and ":" not in text.split("@", 1)[0]:
            try:
                impi = validate_impi(text)
            except ValueError:
                impi = None
            if impi is not None and (found := self._load(impi)) is not None:
                return found
        try:
            impu = canonical_aor(text)
        except ValueError:
            return None
        return self._load(impu, by_impu=True)

    def list(self) -> tuple[Subscriber, ...]:
        rows = self._store.read("SELECT impi FROM subscriber ORDER BY impi")
        return tuple(s for (impi,) in rows if (s := self._load(impi)) is not None)

    def remove(self, impi: str) -> Subscriber:
        with self._store.write() as db:
            found = self._impi_of(impi, public=False)
            subscriber = None if found is None else self._load(found)
            if subscriber is None:
                raise UnknownSubscriber(impi)
            # ON DELETE CASCADE takes its IMPUs, credentials and bindings along.
            db.execute("DELETE FROM subscriber WHERE impi = ?", (subscriber.impi,))
        return subscriber

    def _impi_of(self, identity: str, public: bool = True) -> str | None:
        text = identity.strip()
        if "@" in text and ":" not in text.split("@", 1)[0]:
            try:
                impi = validate_impi(text)
            except ValueError:
                impi = None
            if impi is not None and self._store.read(
                    "SELECT 1 FROM subscriber WHERE impi = ?", (impi,)):
                return impi
        if not public:
            return None
        try:
            impu = canonical_aor(text)
        except ValueError:
            return None
        rows = self._store.read("SELECT impi FROM impu WHERE impu = ?", (impu,))
        return str(rows[0][0]) if rows else None

    def _load(self, key: str, *, by_impu: bool = False) -> Subscriber | None:
        """The subscriber whose IMPI (or, `by_impu`, one of whose IMPUs) is `key`: one query,
        a row per (IMPU, credential) pair."""
        which = "(SELECT impi FROM impu WHERE impu = ?)" if by_impu else "?"
        rows = self._store.read(
            "SELECT s.impi, s.display_name, s.created_at, i.impu, c.realm, c.ha1_md5, "
            "c.ha1_sha256 FROM subscriber AS s "
            "LEFT JOIN impu AS i ON i.impi = s.impi "
            "LEFT JOIN credential AS c ON c.impi = s.impi "
            f"WHERE s.impi = {which} ORDER BY i.position, c.realm", (key,))
        if not rows:
            return None
        impi, display_name, created_at = rows[0][:3]
        impus = dict.fromkeys(r[3] for r in rows if r[3] is not None)
        realms = dict.fromkeys(r[4:] for r in rows if r[4] is not None)
        return _stored_record(
            Subscriber,
            impi=impi,
            impus=tuple(impus),
            credentials=tuple(
                _stored_record(DigestHA1, realm=realm, ha1_md5=md5, ha1_sha256=sha256)
                for realm, md5, sha256 in realms
            ),
            created_at=created_at,
            display_name=display_name,
        )


_BINDING_COLUMNS = (
    "aor, contact, expires_at, q, call_id, cseq, path, instance_id, reg_id, "
    "received_transport, received_host, received_port, registered_via, supports"
)


_INSERT_BINDING = f"INSERT INTO binding ({_BINDING_COLUMNS}) VALUES ({', '.join('?' * 14)})"


def _binding_row(b: Binding) -> tuple[Any, ...]:
    r = b.received
    return (
        b.aor, b.contact, b.expires_at, b.q, b.call_id, b.cseq, json.dumps(list(b.path)),
        b.instance_id, b.reg_id,
        r.transport if r else None, r.host if r else None, r.port if r else None,
        b.registered_via, json.dumps(list(b.supports)),
    )


def _binding(row: Sequence[Any]) -> Binding:
    (aor, contact, expires_at, q, call_id, cseq, path, instance_id, reg_id,
     transport, host, port, registered_via, supports) = row
    return _stored_record(
        Binding,
        aor=aor, contact=contact, expires_at=expires_at, call_id=call_id, cseq=cseq, q=q,
        path=tuple(json.loads(path)) if path != "[]" else (), instance_id=instance_id,
        reg_id=reg_id,
        received=Address(transport, host, port) if transport is not None else None,
        registered_via=registered_via,
        supports=tuple(json.loads(supports)) if supports != "[]" else (),
    )


class _Bindings:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def upsert(self, binding: Binding) -> tuple[Binding, ...]:
        b = binding
        select = f"SELECT id, {_BINDING_COLUMNS} FROM binding WHERE aor = ? AND (contact = ?"
        args: list[Any] = [b.aor, b.contact]
        if b.instance_id is not None and b.reg_id is not None:
            # RFC 5626 section 6: a REGISTER with the same instance-id and reg-id replaces
            # the flow's binding even when the contact URI changed.
            select += " OR (instance_id = ? AND reg_id = ?)"
            args += [b.instance_id, b.reg_id]
        with self._store.write() as db:
            old = db.execute(select + ") ORDER BY id", args).fetchall()
            if old:
                db.executemany("DELETE FROM binding WHERE id = ?", [(r[0],) for r in old])
            try:
                db.execute(_INSERT_BINDING, _binding_row(b))
            except sqlite3.IntegrityError as exc:
                # binding.aor references impu(impu): the AOR is no subscriber's IMPU.
                if "FOREIGN KEY" in str(exc):
                    raise UnknownSubscriber(b.aor) from None
                raise
        return tuple(_binding(r[1:]) for r in old)

    def remove(self, aor: str, contact: str) -> Binding | None:
        key = canonical_aor(aor)
        with self._store.write() as db:
            row = db.execute(f"SELECT id, {_BINDING_COLUMNS} FROM binding "
                             "WHERE aor = ? AND contact = ?", (key, contact)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM binding WHERE id = ?", (row[0],))
        return _binding(row[1:])

    def remove_all(self, aor: str) -> tuple[Binding, ...]:
        key = canonical_aor(aor)
        with self._store.write() as db:
            rows = db.execute(f"SELECT {_BINDING_COLUMNS} FROM binding WHERE aor = ? "
                              "ORDER BY id", (key,)).fetchall()
            db.execute("DELETE FROM binding WHERE aor = ?", (key,))
        return tuple(_binding(r) for r in rows)

    def list_for_aor(self, aor: str, now: float) -> tuple[Binding, ...]:
        # Highest q first (RFC 3261 section 20.10); a contact without q ranks as 1.0, the top
        # value, as registrars commonly treat it. Ties: the oldest binding first.
        rows = self._store.read(
            f"SELECT {_BINDING_COLUMNS} FROM binding WHERE aor = ? AND expires_at > ? "
            "ORDER BY coalesce(q, 1.0) DESC, id", (canonical_aor(aor), now))
        return tuple(_binding(r) for r in rows)

    def expire(self, now: float) -> tuple[Binding, ...]:
        with self._store.write() as db:
            rows = db.execute(f"SELECT {_BINDING_COLUMNS} FROM binding WHERE expires_at <= ? "
                              "ORDER BY expires_at, id", (now,)).fetchall()
            db.execute("DELETE FROM binding WHERE expires_at <= ?", (now,))
        return tuple(_binding(r) for r in rows)


_SESSION_COLUMNS = (
    "call_id, from_identity, to_identity, state, created_at, expires_at, details, ended_at"
)


def _session(row: Sequence[Any]) -> Session:
    call_id, from_identity, to_identity, state, created_at, expires_at, details, ended_at = row
    return Session(call_id, from_identity, to_identity, state, created_at, expires_at,
                   json.loads(details), ended_at)


class _Sessions:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def create(self, session: Session) -> None:
        s = session
        with self._store.write() as db:
            if db.execute("SELECT 1 FROM session WHERE call_id = ?", (s.call_id,)).fetchone():
                raise DuplicateSession(s.call_id)
            db.execute(
                f"INSERT INTO session ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (s.call_id, s.from_identity, s.to_identity, s.state, s.created_at,
                 s.expires_at, _json_object(s.details), s.ended_at),
            )

    def get(self, call_id: str) -> Session | None:
        rows = self._store.read(f"SELECT {_SESSION_COLUMNS} FROM session WHERE call_id = ?",
                                (call_id,))
        return _session(rows[0]) if rows else None

    def update(
        self,
        call_id: str,
        *,
        state: str | None = None,
        expires_at: float | None = None,
        details: JsonObject | None = None,
    ) -> Session:
        with self._store.write() as db:
            current = self._locked_get(db, call_id)
            if current.ended:
                raise SessionEnded(call_id)
            updated = Session(
                call_id, current.from_identity, current.to_identity,
                current.state if state is None else state, current.created_at,
                current.expires_at if expires_at is None else expires_at,
                current.details if details is None else details,
            )
            db.execute("UPDATE session SET state = ?, expires_at = ?, details = ? "
                       "WHERE call_id = ?",
                       (updated.state, updated.expires_at, _json_object(updated.details),
                        call_id))
        return updated

    def end(self, call_id: str, now: float) -> Session:
        with self._store.write() as db:
            current = self._locked_get(db, call_id)
            if current.ended:
                return current
            db.execute("UPDATE session SET state = ?, ended_at = ? WHERE call_id = ?",
                       (SESSION_ENDED, now, call_id))
        return Session(call_id, current.from_identity, current.to_identity, SESSION_ENDED,
                       current.created_at, current.expires_at, current.details, now)

    def list_active(self, now: float) -> tuple[Session, ...]:
        rows = self._store.read(
            f"SELECT {_SESSION_COLUMNS} FROM session WHERE ended_at IS NULL AND expires_at > ? "
            "ORDER BY created_at, call_id", (now,))
        return tuple(_session(r) for r in rows)

    def expire(self, now: float) -> tuple[Session, ...]:
        with self._store.write() as db:
            rows = db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM session WHERE ended_at IS NULL "
                "AND expires_at <= ? ORDER BY expires_at, call_id", (now,)).fetchall()
            db.execute("UPDATE session SET state = ?, ended_at = ? "
                       "WHERE ended_at IS NULL AND expires_at <= ?", (SESSION_ENDED, now, now))
        return tuple(
            Session(s.call_id, s.from_identity, s.to_identity, SESSION_ENDED, s.created_at,
                    s.expires_at, s.details, now)
            for s in map(_session, rows)
        )

    @staticmethod
    def _locked_get(db: sqlite3.Connection, call_id: str) -> Session:
        row = db.execute(f"SELECT {_SESSION_COLUMNS} FROM session WHERE call_id = ?",
                         (call_id,)).fetchone()
        if row is None:
            raise UnknownSession(call_id)
        return _session(row)


# --------------------------------------------------------------------------------------------
# The permission function's tables
# --------------------------------------------------------------------------------------------


def _aor_or_text(identity: str) -> str:
    try:
        return canonical_aor(identity)
    except StoreUsageError:
        return identity.strip()


class _RuleSets:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def put(self, identity: str, body: str, *, etag: str, expires_at: float,
            now: float) -> StoredRuleSet:
        impi = self._impi(identity)
        record = StoredRuleSet(impi, body, etag, expires_at, now)
        with self._store.write() as db:
            db.execute("INSERT OR REPLACE INTO rule_set (impi, body, etag, expires_at, "
                       "updated_at) VALUES (?, ?, ?, ?, ?)",
                       (impi, body, etag, expires_at, now))
        return record

    def get(self, identity: str, now: float) -> StoredRuleSet | None:
        impi = self._store.subscribers._impi_of(identity)
        if impi is None:
            return None
        rows = self._store.read("SELECT impi, body, etag, expires_at, updated_at FROM rule_set "
                                "WHERE impi = ? AND expires_at > ?", (impi, now))
        return StoredRuleSet(*rows[0]) if rows else None

    def remove(self, identity: str) -> StoredRuleSet | None:
        impi = self._store.subscribers._impi_of(identity)
        if impi is None:
            return None
        with self._store.write() as db:
            row = db.execute("SELECT impi, body, etag, expires_at, updated_at FROM rule_set "
                             "WHERE impi = ?", (impi,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM rule_set WHERE impi = ?", (impi,))
        return StoredRuleSet(*row)

    def _impi(self, identity: str) -> str:
        impi = self._store.subscribers._impi_of(identity)
        if impi is None:
            raise UnknownSubscriber(identity)
        return impi


_DECISION_COLUMNS = (
    "at, call_id, caller, caller_mno, callee, application, outcome, how, detail, inquiry, "
    "anonymous, note"
)


class _Decisions:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def record(self, decision: DecisionRecord) -> None:
        d = decision
        with self._store.write() as db:
            db.execute(
                f"INSERT INTO decision ({_DECISION_COLUMNS}, callee_aor) VALUES "
                f"({', '.join('?' * 13)})",
                (d.at, d.call_id, d.caller, d.caller_mno, d.callee, d.application,
                 str(d.outcome), str(d.how), d.detail, d.inquiry, int(d.anonymous), d.note,
                 _aor_or_text(d.callee)),
            )

    def list(self, subscriber: str, limit: int = 100) -> tuple[DecisionRecord, ...]:
        from ims.permission.audit import DecisionRecord

        if isinstance(limit, bool) or limit < 1:
            raise StoreUsageError(f"limit must be at least 1, not {limit!r}")
        impi = self._store.subscribers._impi_of(subscriber)
        if impi is not None:
            keys = [r[0] for r in self._store.read("SELECT impu FROM impu WHERE impi = ?",
                                                   (impi,))]
        else:
            keys = [_aor_or_text(subscriber)]
        rows = self._store.read(
            f"SELECT {_DECISION_COLUMNS} FROM decision WHERE callee_aor IN "
            f"({', '.join('?' * len(keys))}) ORDER BY at DESC, id DESC LIMIT ?",
            (*keys, limit))
        return tuple(
            DecisionRecord(at, call_id, caller, caller_mno, callee, application, outcome, how,
                           detail, inquiry, bool(anonymous), note)
            for (at, call_id, caller, caller_mno, callee, application, outcome, how, detail,
                 inquiry, anonymous, note) in rows
        )


# --------------------------------------------------------------------------------------------
# The connectivity gateway's allocations
# --------------------------------------------------------------------------------------------

_MAPPING_COLUMNS = (
    "call_id, leg, server, server_port, protocol, opcode, internal_address, internal_port, "
    "external_address, external_port, peer_address, peer_port, nonce, lifetime, expires_at"
)
_RELAY_COLUMNS = (
    "call_id, leg, relay_address, caller_side_port, callee_side_port, caller_peer, "
    "callee_peer, expires_at"
)
_RUN_COLUMNS = "r.owner, r.run_id, r.host, r.pid"


class _Allocations:
    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def put_mapping(self, record: PcpMappingRecord) -> None:
        m = record
        with self._store.write() as db:
            self._put_run(db, m.holder)
            db.execute(
                f"INSERT OR REPLACE INTO pcp_mapping (run_id, {_MAPPING_COLUMNS}) VALUES "
                f"({', '.join('?' * 16)})",
                (m.holder.run_id, m.call_id, m.leg, m.server, m.server_port, m.protocol,
                 m.opcode, m.internal_address, m.internal_port, m.external_address,
                 m.external_port, m.peer_address, m.peer_port, m.nonce, m.lifetime,
                 m.expires_at))

    def remove_mapping(self, run_id: str, call_id: str, leg: str) -> PcpMappingRecord | None:
        with self._store.write() as db:
            row = db.execute(
                f"SELECT {_RUN_COLUMNS}, {_MAPPING_COLUMNS} FROM pcp_mapping m JOIN gateway_run "
                "r USING (run_id) WHERE m.run_id = ? AND m.call_id = ? AND m.leg = ?",
                (run_id, call_id, leg)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM pcp_mapping WHERE run_id = ? AND call_id = ? AND leg = ?",
                       (run_id, call_id, leg))
            self._drop_idle_runs(db)
        return _mapping_record(row)

    def mappings(self, owner: str | None = None) -> tuple[PcpMappingRecord, ...]:
        where, args = ("WHERE r.owner = ?", (owner,)) if owner is not None else ("", ())
        rows = self._store.read(
            f"SELECT {_RUN_COLUMNS}, {_MAPPING_COLUMNS} FROM pcp_mapping m JOIN gateway_run r "
            f"USING (run_id) {where} ORDER BY r.seq, m.call_id, m.leg", args)
        return tuple(_mapping_record(r) for r in rows)

    def put_relays(self, run_id: str, call_id: str, records: Sequence[RelayRecord]) -> None:
        for r in records:
            if r.holder.run_id != run_id or r.call_id != call_id:
                raise InvalidRecord(f"relay record of {r.holder.run_id}/{r.call_id} given "
                                    f"for {run_id}/{call_id}")
        with self._store.write() as db:
            db.execute("DELETE FROM relay_allocation WHERE run_id = ? AND call_id = ?",
                       (run_id, call_id))
            if records:
                self._put_run(db, records[0].holder)
            db.executemany(
                f"INSERT INTO relay_allocation (run_id, {_RELAY_COLUMNS}) VALUES "
                f"({', '.join('?' * 9)})",
                [(r.holder.run_id, r.call_id, r.leg, r.relay_address, r.caller_side_port,
                  r.callee_side_port, r.caller_peer, r.callee_peer, r.expires_at)
                 for r in records])
            self._drop_idle_runs(db)

    def relays(self, owner: str | None = None) -> tuple[RelayRecord, ...]:
        where, args = ("WHERE r.owner = ?", (owner,)) if owner is not None else ("", ())
        rows = self._store.read(
            f"SELECT {_RUN_COLUMNS}, {_RELAY_COLUMNS} FROM relay_allocation a JOIN gateway_run "
            f"r USING (run_id) {where} ORDER BY r.seq, a.call_id, a.leg, a.id", args)
        return tuple(RelayRecord(GatewayRun(*row[:4]), *row[4:]) for row in rows)

    def forget_run(self, run_id: str, *, mappings: bool = False) -> int:
        with self._store.write() as db:
            gone = db.execute("DELETE FROM relay_allocation WHERE run_id = ?",
                              (run_id,)).rowcount
            if mappings:
                gone += db.execute("DELETE FROM pcp_mapping WHERE run_id = ?",
                                   (run_id,)).rowcount
            self._drop_idle_runs(db)
        return int(gone)

    def expire(self, now: float) -> int:
        with self._store.write() as db:
            gone = db.execute("DELETE FROM pcp_mapping WHERE expires_at <= ?", (now,)).rowcount
            gone += db.execute("DELETE FROM relay_allocation WHERE expires_at <= ?",
                               (now,)).rowcount
            self._drop_idle_runs(db)
        return int(gone)

    @staticmethod
    def _put_run(db: sqlite3.Connection, run: GatewayRun) -> None:
        row = db.execute("SELECT owner, host, pid FROM gateway_run WHERE run_id = ?",
                         (run.run_id,)).fetchone()
        if row is not None:
            if tuple(row) != (run.owner, run.host, run.pid):
                raise InvalidRecord(f"run {run.run_id} is recorded for another owner or process")
            return
        # `seq` orders runs by when they first recorded something (the listing's order).
        db.execute("INSERT INTO gateway_run (run_id, owner, host, pid, seq) VALUES (?, ?, ?, ?, "
                   "(SELECT coalesce(max(seq), 0) + 1 FROM gateway_run))",
                   (run.run_id, run.owner, run.host, run.pid))

    @staticmethod
    def _drop_idle_runs(db: sqlite3.Connection) -> None:
        """A run with nothing recorded any more is forgotten too."""
        db.execute("DELETE FROM gateway_run WHERE run_id NOT IN (SELECT run_id FROM pcp_mapping)"
                   " AND run_id NOT IN (SELECT run_id FROM relay_allocation)")


def _mapping_record(row: Sequence[Any]) -> PcpMappingRecord:
    (owner, run_id, host, pid, call_id, leg, server, server_port, protocol, opcode,
     internal_address, internal_port, external_address, external_port, peer_address, peer_port,
     nonce, lifetime, expires_at) = row
    return PcpMappingRecord(
        GatewayRun(owner, run_id, host, pid), call_id, leg, server, server_port, protocol,
        opcode, internal_address, internal_port, external_address, external_port, peer_address,
        peer_port, bytes(nonce), lifetime, expires_at)
