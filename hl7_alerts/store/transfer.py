"""Moving a site's store from SQLite to PostgreSQL (`hl7-alerts store migrate`).

This module owns the copy, and only the copy: which tables go (`TABLES`:
everything a daemon needs to carry on, history, orders, schedules, open
alerts, the outbox and the audit trail; not the health probe, not the
schema's own bookkeeping), in which order (parents before the rows that
reference them), and what a second run does to rows already there.

- Both ends are first brought to the current schema by the backends' own
  migrations; a store newer than this code knows is refused
  (`SchemaTooNewError`), as is a source that is no hl7-alerts store (it is
  never created, nor written to beyond its schema migration).
- The source is read through a read-only connection inside one read
  transaction: one consistent snapshot, even while its daemon still runs.
- Everything is written in ONE PostgreSQL transaction, ids kept: it lands
  whole or not at all. Each chunk of a table is COPYed into a temporary
  table and merged with one ``INSERT ... ON CONFLICT``: mutable rows are
  upserted (changed ones only, ``IS DISTINCT FROM``), append-only ones
  (`audit`, whose triggers forbid updates) are inserted when missing.
  Running it again is harmless, and picks up what changed in between (an
  alert resolved, an outbox row delivered, a rejected message resent).
  Orders and schedules that an ADT^A40 merge removed from SQLite are removed
  from PostgreSQL too; rows SQLite's retention pruned stay until
  PostgreSQL's own retention prunes them.
- The identity sequences are then moved past the copied ids, so daemons
  inserting afterwards never collide with them.
- A target that daemons have already written to (ids beyond the source's,
  or a newest row the source does not have) is refused: the copy would
  overwrite their work.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hl7_alerts.store.base import SchemaTooNewError, StoreError
from hl7_alerts.store.postgres import migrate as migrate_postgres
from hl7_alerts.store.postgres import text_safe
from hl7_alerts.store.schema import SCHEMA_VERSION
from hl7_alerts.store.sqlite import migrate as migrate_sqlite
from hl7_alerts.store.sqlite import narrow_store

CHUNK = 5_000  # rows read from SQLite and sent to PostgreSQL at a time
LOCK_TIMEOUT = "30s"  # how long to wait for a running PostgreSQL daemon's transaction

# Tables a store has that are not copied: the schema's bookkeeping (each end
# keeps its own), the row /healthz rewrites, and the web view's signed-in
# sessions (people sign in again after the move).
NOT_COPIED = frozenset({"schema_version", "health_probe", "web_sessions"})


class TransferError(StoreError):
    """The copy could not be made. PostgreSQL has none of it (its schema may
    have been migrated, which is harmless)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """How one table is copied."""

    name: str
    key: tuple[str, ...]  # the primary key: the ON CONFLICT target
    update: bool  # mutable rows: DO UPDATE the changed ones; else DO NOTHING (append-only)
    order: str  # SQLite ORDER BY: the order rows are written in
    identity: bool = False  # an ``id`` identity column, whose sequence must move past the copies
    # Columns never changed once a row is written: PostgreSQL's newest row
    # must read the same in SQLite, or daemons have written to PostgreSQL.
    fixed: tuple[str, ...] = ()
    # SQLite deletes these rows in normal operation (an ADT^A40 merge moves
    # a patient's orders and schedules): PostgreSQL follows.
    mirror_deletes: bool = False


TABLES: tuple[Table, ...] = (
    Table(name="messages", key=("id",), update=True, order="id", identity=True,
          fixed=("digest", "received_at")),
    # Mutable since migration 8: a resend is recorded on the row.
    Table(name="rejected_messages", key=("id",), update=True, order="id", identity=True,
          fixed=("received_at", "reason")),
    Table(name="observations", key=("id",), update=True, order="id", identity=True,
          fixed=("code", "observed_at", "value_text")),
    Table(name="orders", key=("patient", "order_id"), update=True, order="patient, order_id",
          mirror_deletes=True),
    # Closed alerts first: one that was resolved in SQLite since the last run
    # must be closed here before its successor episode opens (alerts_one_open).
    Table(name="alerts", key=("alert_id",), update=True, order="state = 'open', alert_id"),
    Table(name="outbox", key=("id",), update=True, order="id", identity=True,
          fixed=("alert_id", "version", "event", "created_at")),
    Table(name="audit", key=("id",), update=False, order="id", identity=True,
          fixed=("at", "kind", "alert_id")),
    Table(name="monitoring", key=("patient", "order_id"), update=True, order="patient, order_id",
          mirror_deletes=True),
    Table(name="maintenance", key=("task",), update=True, order="task"),
    # The web view's users and its access audit (append-only, as `audit`).
    Table(name="web_users", key=("username",), update=True, order="username"),
    Table(name="web_access", key=("id",), update=False, order="id", identity=True,
          fixed=("at", "action", "username")),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TableCopy:
    """What happened to one table."""

    rows: int  # rows in the SQLite store, every one sent
    written: int  # of those, inserted or changed in PostgreSQL (0 when it already had them all)
    removed: int = 0  # rows PostgreSQL had that SQLite no longer has (merged away)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """The outcome of one `migrate_sqlite_to_postgres`."""

    source: Path
    target: str  # "database hl7 on db1:5432": no password
    tables: dict[str, TableCopy] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def written(self) -> int:
        return sum(t.written for t in self.tables.values())

    @property
    def removed(self) -> int:
        return sum(t.removed for t in self.tables.values())

    @property
    def copied(self) -> dict[str, int]:
        """Rows copied per table."""
        return {name: t.rows for name, t in self.tables.items()}


def migrate_sqlite_to_postgres(sqlite_path: Path | str, dsn: str, *, chunk: int = CHUNK) -> Transfer:
    """Copy every table of the SQLite store at ``sqlite_path`` into the
    PostgreSQL database at ``dsn``, migrating both to the current schema
    first, in one PostgreSQL transaction. Raises `SchemaTooNewError` for a
    store newer than this code, `TransferError` for anything else."""
    path = Path(sqlite_path)
    _migrate_source(path)
    try:
        target = psycopg.connect(
            dsn, autocommit=True, connect_timeout=10, application_name="hl7-alerts store migrate"
        )
    except psycopg.Error as exc:
        raise TransferError(f"cannot connect to the PostgreSQL store: {exc}".strip()) from exc
    with target:
        info = target.info
        where = f"database {info.dbname} on {info.host}:{info.port}"
        try:
            _refuse_too_new(_pg_version(target), f"the PostgreSQL {where}")
            migrate_postgres(target)
            source = sqlite3.connect(f"{_uri(path)}?mode=ro", uri=True, isolation_level=None)
            try:
                tables = _copy(source, target, chunk)
            finally:
                source.close()
        except sqlite3.Error as exc:
            raise TransferError(f"reading {path}: {exc}") from exc
        except psycopg.Error as exc:
            raise TransferError(f"writing to the PostgreSQL {where}: {exc}".strip()) from exc
        # Fresh statistics for the planner; the copy is committed either way.
        with contextlib.suppress(psycopg.Error):
            target.execute(
                sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(sql.Identifier(t.name) for t in TABLES))
            )
    return Transfer(source=path, target=where, tables=tables)


# -- the source ---------------------------------------------------------------


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def _migrate_source(path: Path) -> None:
    """Bring the SQLite store to the current schema, as `SqliteStore.open`
    would, but never create one: a mistyped path must not become an empty store."""
    if not path.is_file():
        raise TransferError(f"no SQLite store at {path}")
    try:
        narrow_store(path)  # it is opened for writing: SQLite's side files take its mode
    except OSError as exc:
        raise TransferError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        conn = sqlite3.connect(f"{_uri(path)}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise TransferError(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "messages" not in tables:
            raise TransferError(f"{path} is not an hl7-alerts store (it has no messages table)")
        if "schema_version" in tables:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            _refuse_too_new(row[0] or 0, f"the SQLite store {path}")
        migrate_sqlite(conn)
    except sqlite3.Error as exc:
        raise TransferError(f"cannot migrate {path}: {exc}") from exc
    finally:
        conn.close()


def _pg_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0) if row else 0


def _refuse_too_new(version: int, what: str) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"{what} has schema version {version}, newer than this hl7-alerts knows ({SCHEMA_VERSION}): "
            f"run the migration with the hl7-alerts that wrote it"
        )


# -- the copy -----------------------------------------------------------------


def _copy(source: sqlite3.Connection, target: psycopg.Connection[Any], chunk: int) -> dict[str, TableCopy]:
    source.execute("BEGIN")  # one snapshot of every table, whatever the daemon writes meanwhile
    try:
        present = {
            r[0] for r in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        } - NOT_COPIED
        unknown = sorted(n for n in present - {t.name for t in TABLES} if not n.startswith("sqlite_"))
        if unknown:
            # A table added by a migration this module was not taught: copying
            # the rest would silently leave it behind.
            raise TransferError(f"do not know how to copy table(s) {', '.join(unknown)}")
        done: dict[str, TableCopy] = {}
        with target.transaction():
            target.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            # Daemons already on PostgreSQL may read meanwhile, not write.
            target.execute(
                sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(t.name) for t in TABLES)
                )
            )
            for table in TABLES:
                if table.identity:
                    _refuse_diverged(source, target, table)
            for table in TABLES:
                done[table.name] = _copy_table(source, target, table, chunk)
            for table in TABLES:
                if table.identity:
                    # Next id: past everything there (1 on an empty table).
                    target.execute(
                        sql.SQL(
                            "SELECT setval(pg_get_serial_sequence({name}, 'id'), "
                            "(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
                        ).format(name=sql.Literal(table.name), table=sql.Identifier(table.name))
                    )
        return done
    finally:
        with contextlib.suppress(sqlite3.Error):
            source.execute("ROLLBACK")


def _refuse_diverged(source: sqlite3.Connection, target: psycopg.Connection[Any], table: Table) -> None:
    """A target that daemons have written to since it was filled is not
    overwritten: its newest row must be one the source has too."""
    name = sql.Identifier(table.name)
    pg_max = target.execute(sql.SQL("SELECT max(id) FROM {}").format(name)).fetchone()
    newest = pg_max[0] if pg_max else None
    if newest is None:
        return
    quoted = _q(table.name)
    sqlite_max = source.execute(f"SELECT max(id) FROM {quoted}").fetchone()[0]  # noqa: S608 (constant name)
    reason = ""
    if sqlite_max is None or newest > sqlite_max:
        reason = f"ids up to {newest}, SQLite's end at {sqlite_max or 0}"
    elif table.fixed:
        cols = ", ".join(_q(c) for c in table.fixed)
        ours = source.execute(f"SELECT {cols} FROM {quoted} WHERE id = ?", (newest,)).fetchone()  # noqa: S608
        theirs = target.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in table.fixed), name
            ),
            (newest,),
        ).fetchone()
        if ours is not None and tuple(ours) != tuple(theirs or ()):
            reason = f"row {newest} differs"
    if reason:
        raise TransferError(
            f"the PostgreSQL store already has {table.name} the SQLite store does not ({reason}): "
            "daemons have written to it, and copying would overwrite their work. "
            "Migrate into an empty database, before any daemon runs on it."
        )


def _copy_table(
    source: sqlite3.Connection, target: psycopg.Connection[Any], table: Table, chunk: int
) -> TableCopy:
    """Each chunk is COPYed into a temporary table, then merged into the real
    one by a single INSERT ... SELECT ... ON CONFLICT: the comparison with
    what is there already happens in the server, not row by row over the wire."""
    columns = [r[1] for r in source.execute(f"PRAGMA table_info({_q(table.name)})")]
    types = dict(
        target.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table.name,),
        ).fetchall()
    )
    if set(columns) != set(types):
        raise TransferError(
            f"{table.name} has columns {sorted(columns)} in SQLite but {sorted(types)} in PostgreSQL"
        )
    convert = _converters([types[c] for c in columns])
    stage = sql.Identifier(f"hl7_alerts_stage_{table.name}")
    column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    target.execute(
        sql.SQL("CREATE TEMP TABLE {stage} (LIKE {table}) ON COMMIT DROP").format(
            stage=stage, table=sql.Identifier(table.name)
        )
    )
    load = sql.SQL("COPY {stage} ({columns}) FROM STDIN").format(stage=stage, columns=column_list)
    merge = _merge(table, columns, stage)
    empty = sql.SQL("TRUNCATE {}").format(stage)
    key_at = [columns.index(k) for k in table.key]
    keys: set[tuple[Any, ...]] = set()
    rows = written = 0
    cursor = source.execute(
        f"SELECT {', '.join(_q(c) for c in columns)} FROM {_q(table.name)} ORDER BY {table.order}"  # noqa: S608
    )
    with target.cursor() as out:
        while batch := cursor.fetchmany(chunk):
            with out.copy(load) as copy:
                for row in batch:
                    copy.write_row(text_safe(convert(row) if convert else row))
            out.execute(merge)
            written += max(out.rowcount, 0)
            out.execute(empty)
            rows += len(batch)
            if table.mirror_deletes:
                keys.update(tuple(r[i] for i in key_at) for r in batch)
    removed = _remove_missing(target, table, keys) if table.mirror_deletes else 0
    return TableCopy(rows=rows, written=written, removed=removed)


def _remove_missing(target: psycopg.Connection[Any], table: Table, keys: set[tuple[Any, ...]]) -> int:
    key_list = sql.SQL(", ").join(sql.Identifier(k) for k in table.key)
    there = target.execute(sql.SQL("SELECT {} FROM {}").format(key_list, sql.Identifier(table.name)))
    gone = [tuple(r) for r in there.fetchall() if tuple(r) not in keys]
    if gone:
        match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in table.key)
        with target.cursor() as out:
            out.executemany(
                sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(table.name), match), gone
            )
    return len(gone)


def _merge(table: Table, columns: Sequence[str], stage: sql.Identifier) -> sql.Composed:
    """INSERT the staged rows, keeping their keys, in the table's order; on a
    key already there, update what changed (mutable tables) or leave it be
    (append-only ones)."""
    ident = sql.Identifier
    rest = [c for c in columns if c not in table.key]
    action: sql.Composable
    if table.update and rest:
        action = sql.SQL("DO UPDATE SET {sets} WHERE ROW({old}) IS DISTINCT FROM ROW({new})").format(
            sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=ident(c)) for c in rest),
            old=sql.SQL(", ").join(sql.SQL("{t}.{c}").format(t=ident(table.name), c=ident(c)) for c in rest),
            new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{c}").format(c=ident(c)) for c in rest),
        )
    else:
        action = sql.SQL("DO NOTHING")
    column_list = sql.SQL(", ").join(ident(c) for c in columns)
    return sql.SQL(
        "INSERT INTO {t} ({cols}) SELECT {cols} FROM {stage} ORDER BY {order} ON CONFLICT ({key}) {action}"
    ).format(
        t=ident(table.name),
        cols=column_list,
        stage=stage,
        order=sql.SQL(table.order),  # a constant of TABLES
        key=sql.SQL(", ").join(ident(k) for k in table.key),
        action=action,
    )


def _converters(pg_types: Sequence[str]) -> Callable[[Sequence[Any]], list[Any]] | None:
    """SQLite is loosely typed: a BLOB column may hand back text (written by
    hand, or by an old version). BYTEA takes bytes: text would be read as
    BYTEA's escape format, and HL7's ``\\`` escapes would be mangled. Numbers
    need nothing: COPY sends them as text, which DOUBLE PRECISION reads
    exactly (an integer in a REAL column too)."""
    blobs = [i for i, kind in enumerate(pg_types) if kind == "bytea"]
    if not blobs:
        return None

    def convert(row: Sequence[Any]) -> list[Any]:
        out = list(row)
        for i in blobs:
            if isinstance(out[i], str):
                out[i] = out[i].encode()
        return out

    return convert


def _q(name: str) -> str:
    """A SQLite identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'
