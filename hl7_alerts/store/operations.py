"""The store's own operations: delivery marks, the outbox backlog, the health
probe, maintenance times and retention.

`OperationsQueries` is a mixin of `SqlTransaction` (`queries.py`): the same
SQL on each dialect's transaction class, run by the writer (`writer.py`) as
units of work. Retention goes a chunk at a time, each chunk its own unit,
so messages arriving meanwhile are not held up behind one long delete.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from hl7_alerts.store.base import OutboxBacklog
from hl7_alerts.store.rows import epoch
from hl7_alerts.store.statements import Statements
from hl7_alerts.timeutil import from_iso, to_iso, utc_stamp


class OperationsQueries(Statements):
    """What the store does for itself rather than for a message."""

    def audit_outbox(self, ids: Sequence[int], kind: str, at: datetime, detail: str) -> None:
        """Audit a publish attempt, delivery or failure of outbox rows."""
        self.execute_many(
            "INSERT INTO audit (at, kind, alert_id, version, event, outbox_id, detail) "
            "SELECT ?, ?, alert_id, version, event, id, ? FROM outbox WHERE id = ?",
            [(utc_stamp(at), kind, detail, i) for i in ids],
        )

    def mark_delivered(self, ids: Sequence[int], at: datetime) -> None:
        """Rows the broker PUBACKed: delivered, and audited as such."""
        self.execute_many(
            "UPDATE outbox SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
            [(to_iso(at), i) for i in ids],
        )
        self.audit_outbox(ids, "delivered", at, "")

    def outbox_backlog(self) -> OutboxBacklog:
        depth, oldest_id = self.execute(
            "SELECT count(*), min(id) FROM outbox WHERE delivered_at IS NULL"
        ).fetchone()
        oldest = None
        if oldest_id is not None:
            row = self.execute("SELECT created_at FROM outbox WHERE id = ?", (oldest_id,)).fetchone()
            oldest = from_iso(row[0])
        return OutboxBacklog(depth=depth, oldest_created_at=oldest)

    def probe_write(self, at: datetime) -> None:
        """One tiny write: committing it proves the store takes writes now."""
        self.execute(
            "INSERT INTO health_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            (to_iso(at),),
        )

    def last_run(self, task: str) -> datetime | None:
        row = self.execute("SELECT last_run FROM maintenance WHERE task = ?", (task,)).fetchone()
        return None if row is None else from_iso(row[0])

    def mark_run(self, task: str, at: datetime) -> None:
        self.execute(
            "INSERT INTO maintenance (task, last_run) VALUES (?, ?) "
            "ON CONFLICT (task) DO UPDATE SET last_run = excluded.last_run",
            (task, to_iso(at)),
        )

    # Retention, a chunk at a time (each chunk is its own unit of work, so
    # messages arriving meanwhile are not held up behind one long delete);
    # each returns how many rows it touched. TPMT and NUDT15 results (a
    # genotype does not expire), orders, alerts, the outbox and every audit
    # table are never touched.

    _REFERENCED = (
        "(EXISTS (SELECT 1 FROM observations o WHERE o.message_id = m.id) "
        "OR EXISTS (SELECT 1 FROM orders r WHERE r.message_id = m.id))"
    )

    def prune_observations(self, before: datetime, chunk: int) -> int:
        return int(self.execute(
            "DELETE FROM observations WHERE id IN (SELECT id FROM observations WHERE observed_ts < ? "
            "AND coalesce(analyte, '') NOT IN ('TPMT', 'NUDT15') ORDER BY observed_ts LIMIT ?)",
            (epoch(before), chunk),
        ).rowcount)

    def prune_messages(self, before: datetime, chunk: int) -> int:
        """Messages received before ``before`` that nothing still points at."""
        old = self.EARLIER.format(col="m.received_at")
        return int(self.execute(
            f"DELETE FROM messages WHERE id IN (SELECT m.id FROM messages m WHERE {old} "  # noqa: S608
            f"AND NOT {self._REFERENCED} ORDER BY m.id LIMIT ?)",
            (to_iso(before), chunk),
        ).rowcount)

    def clear_raw(self, before: datetime, chunk: int) -> int:
        """Messages an order or a kept observation still points at keep their
        row (foreign keys hold) but lose their raw bytes."""
        old = self.EARLIER.format(col="m.received_at")
        return int(self.execute(
            f"UPDATE messages SET raw = ? WHERE id IN (SELECT m.id FROM messages m WHERE {old} "  # noqa: S608
            f"AND length(m.raw) > 0 AND {self._REFERENCED} ORDER BY m.id LIMIT ?)",
            (b"", to_iso(before), chunk),
        ).rowcount)

    def prune_rejected(self, before: datetime, chunk: int) -> int:
        old = self.EARLIER.format(col="received_at")
        return int(self.execute(
            f"DELETE FROM rejected_messages WHERE id IN (SELECT id FROM rejected_messages "  # noqa: S608
            f"WHERE {old} ORDER BY id LIMIT ?)",
            (to_iso(before), chunk),
        ).rowcount)
