"""Every query of the store, written once: the unit of work's transaction.

`SqlTransaction` is the `Transaction` a unit of work gets, plus the store's
own operations (delivery marks, retention, the health probe, maintenance
times, listings for the command line), in the SQL that SQLite and
PostgreSQL both speak (``?`` marks; PostgreSQL's subclass turns them into
``%s``). What differs between them (the ordered-ingredients index, locks
between daemons, claiming outbox rows, an index hint, a date comparison) is
a hook the dialect overrides. Rows become values only through `rows.py`.
It runs on a writer thread (`writer.py`), never on the event loop. The
admin commands' listings (lab codes, rejected messages) are its mixin
`listings.Listings`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from hl7_alerts.alerts import AckRequest, Alert, AlertEvent
from hl7_alerts.model import AckCode, Header, Observation, OrderState, PastAlert, PatientKey
from hl7_alerts.store.base import (
    PAGING_EVENTS,
    AlertRecord,
    AuditRow,
    DedupKey,
    OutboxItem,
    OutboxRow,
    PriorAck,
    ScheduleRow,
)
from hl7_alerts.store.listings import Listings
from hl7_alerts.store.operations import OperationsQueries
from hl7_alerts.store.rows import (
    ALERT_COLUMNS,
    AUDIT_COLUMNS,
    OBSERVATION_COLUMNS,
    OBSERVATION_INSERT,
    ORDER_COLUMNS,
    OUTBOX_COLUMNS,
    RECORD_COLUMNS,
    SCHEDULE_COLUMNS,
    alert_from_row,
    audit_from_row,
    epoch,
    holds_text,
    observation_from_row,
    observation_rows,
    order_from_row,
    outbox_from_row,
    record_from_row,
    schedule_from_row,
)
from hl7_alerts.store.web import WebQueries
from hl7_alerts.strictjson import dumps
from hl7_alerts.terminology import Analyte
from hl7_alerts.timeutil import from_iso, to_iso, utc_stamp


class SqlTransaction(Listings, OperationsQueries, WebQueries):
    """`Transaction` over one DB-API connection (writer thread only), with
    the store's own operations (`operations.py`), the admin commands'
    listings (`listings.py`) and the web view's queries (`web.py`) beside
    the daemon's."""

    # SQLite picks the per-analyte index only when told; PostgreSQL's planner
    # needs no hint (and has no syntax for one).
    _ANALYTE_INDEX: ClassVar[str] = ""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.enqueued = 0

    # -- dialect hooks (and `Statements.execute`/`execute_many`) ----------------

    def batch_begun(self, *, alone: bool) -> None:
        """A transaction has begun; ``alone``: it runs one deferred unit."""

    def unit_begun(self, *, first: bool) -> None:
        """A unit is about to run; ``first``: nothing ran before it in this transaction."""

    def unit_released(self) -> None:
        """The unit's savepoint was released (its work stays in the batch)."""

    def unit_rolled_back(self) -> None:
        """The unit was rolled back to its savepoint."""

    def batch_committed(self) -> None:
        """The COMMIT covering the batch has returned."""

    def batch_rolled_back(self) -> None:
        """Nothing of the batch will commit."""

    def lock(self, *, message: DedupKey | None = None, patients: Iterable[PatientKey] = ()) -> None:
        """One writer has nothing to serialize with (see `Transaction.lock`)."""

    def try_timers(self) -> bool:
        return True

    def ordered_ingredients(self, patient: PatientKey) -> frozenset[str]:
        rows = self.execute(
            "SELECT DISTINCT ingredient FROM orders WHERE patient = ? AND ingredient IS NOT NULL",
            (patient.key,),
        ).fetchall()
        return frozenset(r[0] for r in rows)

    def pending_outbox(self, limit: int, after_id: int) -> list[OutboxRow]:
        """Undelivered rows above ``after_id``, oldest first (one publisher: no claims)."""
        rows = self.execute(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox "  # noqa: S608 (constants)
            "WHERE delivered_at IS NULL AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [outbox_from_row(r) for r in rows]

    def release_outbox(self) -> None:
        """One publisher holds no claims."""

    # -- queries -----------------------------------------------------------------

    def prior_message(self, key: DedupKey, digest: str) -> PriorAck | None:
        # Two probes of the (key, digest) unique index in one statement: the
        # resend with this digest, and any one other message under the key
        # (no ORDER BY: the index's first entry ends the search). At most two
        # rows, however often a sender has reused the control ID.
        k = (key.sending_application, key.sending_facility, key.control_id)
        rows = self.execute(
            "SELECT id, ack_code, ack_text, digest FROM messages WHERE sending_application = ? "
            "AND sending_facility = ? AND control_id = ? AND digest = ? UNION ALL "
            "SELECT * FROM (SELECT id, ack_code, ack_text, digest FROM messages "
            "WHERE sending_application = ? AND sending_facility = ? AND control_id = ? AND digest <> ? "
            "LIMIT 1) AS other",
            (*k, digest, *k, digest),
        ).fetchall()
        if not rows:
            return None
        r = min(rows, key=lambda r: r[3] != digest)
        return PriorAck(message_id=r[0], ack_code=AckCode(r[1]), ack_text=r[2], digest=r[3])

    def insert_message(
        self,
        key: DedupKey,
        header: Header,
        raw: bytes,
        *,
        digest: str,
        received_at: datetime,
        ack_code: AckCode,
        ack_text: str,
    ) -> int:
        cursor = self.execute(
            "INSERT INTO messages (sending_application, sending_facility, control_id, message_type, "
            "version, received_at, digest, raw, ack_code, ack_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id",
            (
                key.sending_application, key.sending_facility, key.control_id, header.type_code,
                header.version, to_iso(received_at), digest, raw, str(ack_code), ack_text,
            ),
        )
        row = cursor.fetchone()
        assert row is not None
        return int(row[0])

    def insert_rejected(
        self,
        header: Header | None,
        raw: bytes,
        *,
        received_at: datetime,
        ack_code: AckCode,
        reason: str,
        keep_rows: int | None = None,
    ) -> int:
        row = self.execute(
            "INSERT INTO rejected_messages (sending_application, sending_facility, control_id, "
            "received_at, raw, ack_code, reason) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                header.sending_application if header else None, header.sending_facility if header else None,
                header.control_id if header else None, to_iso(received_at), raw, str(ack_code), reason,
            ),
        ).fetchone()
        assert row is not None
        if keep_rows is None or int(row[0]) <= keep_rows:
            return 0
        # Ids only grow, so the rows above new_id - keep_rows are at most
        # keep_rows: one probe of the primary key, usually one row deleted.
        return int(self.execute(
            "DELETE FROM rejected_messages WHERE id <= ?", (int(row[0]) - keep_rows,)
        ).rowcount)

    def insert_observations(
        self, message_id: int, patient: PatientKey, observations: Sequence[Observation]
    ) -> None:
        self.execute_many(
            f"INSERT INTO observations ({OBSERVATION_INSERT}) "  # noqa: S608 (constants)
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            observation_rows(message_id, patient, observations),
        )

    def get_order(self, patient: PatientKey, order_id: str) -> OrderState | None:
        row = self.execute(
            f"SELECT {ORDER_COLUMNS} FROM orders WHERE patient = ? AND order_id = ?",  # noqa: S608 (constants)
            (patient.key, order_id),
        ).fetchone()
        return None if row is None else order_from_row(row)

    def put_order(self, patient: PatientKey, order: OrderState, message_id: int) -> None:
        self.execute(
            "INSERT INTO orders "
            "(patient, order_id, ingredient, drug_text, dose, start, stop, holds, message_id, dispensed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (patient, order_id) DO UPDATE SET "
            "ingredient = excluded.ingredient, drug_text = excluded.drug_text, dose = excluded.dose, "
            "start = excluded.start, stop = excluded.stop, holds = excluded.holds, "
            "message_id = excluded.message_id, dispensed = excluded.dispensed",
            (
                patient.key, order.order_id, order.ingredient, order.drug_text, order.dose,
                to_iso(order.start), to_iso(order.stop), holds_text(order), message_id,
                to_iso(order.dispensed),
            ),
        )

    def patient_orders(self, patient: PatientKey) -> tuple[OrderState, ...]:
        rows = self.execute(
            f"SELECT {ORDER_COLUMNS} FROM orders WHERE patient = ? ORDER BY start",  # noqa: S608 (constants)
            (patient.key,),
        ).fetchall()
        return tuple(order_from_row(r) for r in rows)

    def patient_history(
        self, patient: PatientKey, since: datetime | None, *, analytes: Sequence[str] | None = None
    ) -> tuple[Observation, ...]:
        sql = (
            f"SELECT {OBSERVATION_COLUMNS} FROM observations WHERE patient = ? AND superseded = 0"  # noqa: S608
        )
        params: list[Any] = [patient.key]
        if since is not None:
            sql += " AND observed_ts >= ?"
            params.append(epoch(since))
        if analytes is not None:
            sql += f" AND analyte IN ({', '.join('?' for _ in analytes)})"
            params.extend(analytes)
        rows = self.execute(sql + " ORDER BY observed_ts, id", params).fetchall()
        return tuple(observation_from_row(r) for r in rows)

    def latest_results(
        self,
        patient: PatientKey,
        before: datetime,
        since: datetime | None,
        *,
        analytes: Sequence[str] | None = None,
    ) -> tuple[Observation, ...]:
        # One indexed probe per analyte (a long history costs nothing here),
        # all in one statement: one execution instead of one per analyte.
        wanted = [a.value for a in Analyte] if analytes is None else list(analytes)
        if not wanted:
            return ()
        probe = (
            f"SELECT * FROM (SELECT {OBSERVATION_COLUMNS} FROM observations {self._ANALYTE_INDEX} "  # noqa: S608
            "WHERE patient = ? AND analyte = ? AND observed_ts < ? AND observed_ts >= ? "
            "AND superseded = 0 AND status IN ('F', 'C', 'P') "
            "ORDER BY observed_ts DESC, id DESC LIMIT 1) AS a"
        )
        bounds = (epoch(before), epoch(since) if since is not None else float("-inf"))
        params = [p for analyte in wanted for p in (patient.key, analyte, *bounds)]
        rows = self.execute(" UNION ALL ".join(probe for _ in wanted), params).fetchall()
        return tuple(sorted((observation_from_row(r) for r in rows), key=lambda o: o.observed_at))

    def supersede(self, patient: PatientKey, corrections: Sequence[Observation]) -> int:
        count = 0
        for o in corrections:
            cursor = self.execute(
                "UPDATE observations SET superseded = 1 WHERE patient = ? AND code = ? AND specimen_id = ? "
                "AND observed_ts = ? AND superseded = 0",
                (patient.key, o.code, o.specimen_id, epoch(o.observed_at)),
            )
            count += cursor.rowcount
        return count

    def alert_history(self, patient: PatientKey) -> tuple[PastAlert, ...]:
        rows = self.execute(
            "SELECT rule, state, opened_at, evidence_at FROM alerts "
            "WHERE patient = ? AND state != 'withdrawn' ORDER BY opened_at",
            (patient.key,),
        ).fetchall()
        out = []
        for rule, state, opened, evidence in rows:
            opened_at, evidence_at = from_iso(opened), from_iso(evidence)
            assert opened_at is not None
            assert evidence_at is not None
            out.append(
                PastAlert(rule=rule, open=state == "open", opened_at=opened_at, evidence_at=evidence_at)
            )
        return tuple(out)

    def find_patients(self, patient_id: str, id_type: str) -> list[PatientKey]:
        keys = set()
        for table in ("orders", "observations"):
            keys |= {
                r[0] for r in self.execute(f"SELECT DISTINCT patient FROM {table}")  # noqa: S608
            }
        found = []
        for key in sorted(keys):
            authority, _, rest = key.partition("|")
            kind, _, ident = rest.partition("|")
            if ident == patient_id and kind == id_type:
                found.append(PatientKey(id=ident, id_type=kind, authority=authority))
        return found

    def merge_patient(self, prior: PatientKey, surviving: PatientKey) -> list[str]:
        old, new = prior.key, surviving.key
        if old == new:
            return []
        folded: list[str] = []
        self.execute("UPDATE observations SET patient = ? WHERE patient = ?", (new, old))
        # The surviving record's own version of an order wins over the prior's.
        self.execute(
            "UPDATE orders SET patient = ? WHERE patient = ? AND NOT EXISTS "
            "(SELECT 1 FROM orders s WHERE s.patient = ? AND s.order_id = orders.order_id)",
            (new, old, new),
        )
        self.execute("DELETE FROM orders WHERE patient = ?", (old,))
        self.execute(
            "UPDATE monitoring SET patient = ?, patient_id = ?, patient_id_type = ?, "
            "patient_authority = ? WHERE patient = ? AND NOT EXISTS "
            "(SELECT 1 FROM monitoring s WHERE s.patient = ? AND s.order_id = monitoring.order_id)",
            (new, surviving.id, surviving.id_type, surviving.authority, old, new),
        )
        self.execute("DELETE FROM monitoring WHERE patient = ?", (old,))
        open_rules = {
            r[0] for r in self.execute(
                "SELECT rule FROM alerts WHERE patient = ? AND state = 'open'", (new,)
            )
        }
        next_episode = dict(
            self.execute(
                "SELECT rule, max(episode) FROM alerts WHERE patient = ? GROUP BY rule", (new,)
            )
        )
        moved = self.execute(
            "SELECT alert_id, rule, state FROM alerts WHERE patient = ? ORDER BY episode", (old,)
        ).fetchall()
        for alert_id, rule, was in moved:
            episode = next_episode.get(rule, 0) + 1
            next_episode[rule] = episode
            state = was
            if was == "open" and rule in open_rules:
                # The surviving identifier already has this alert open: keep
                # one open episode per rule; the prior one is folded into it.
                state = "resolved"
                folded.append(alert_id)
            elif was == "open":
                open_rules.add(rule)
            self.execute(
                "UPDATE alerts SET patient = ?, patient_id = ?, patient_id_type = ?, patient_authority = ?, "
                "episode = ?, state = ? WHERE alert_id = ?",
                (new, surviving.id, surviving.id_type, surviving.authority, episode, state, alert_id),
            )
        self.execute("UPDATE outbox SET patient = ? WHERE patient = ?", (new, old))
        return folded

    def open_alerts(self, patient: PatientKey) -> dict[str, Alert]:
        rows = self.execute(
            f"SELECT {ALERT_COLUMNS} FROM alerts WHERE patient = ? AND state = 'open'",  # noqa: S608
            (patient.key,),
        ).fetchall()
        return {r[4]: alert_from_row(r) for r in rows}

    def next_episodes(self, patient: PatientKey) -> dict[str, int]:
        rows = self.execute(
            "SELECT rule, max(episode) FROM alerts WHERE patient = ? GROUP BY rule", (patient.key,)
        ).fetchall()
        return {rule: episode + 1 for rule, episode in rows}

    def save_alert(self, alert: Alert, payload: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO alerts (alert_id, patient, patient_id, patient_id_type, patient_authority, rule, "
            "episode, state, severity, version, opened_at, evidence_at, payload, rests_on, evidence_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO UPDATE SET "
            "state = excluded.state, severity = excluded.severity, version = excluded.version, "
            "evidence_at = excluded.evidence_at, payload = excluded.payload, "
            "rests_on = excluded.rests_on, evidence_key = excluded.evidence_key",
            (
                alert.alert_id, alert.patient.key, alert.patient.id, alert.patient.id_type,
                alert.patient.authority, alert.rule, alert.episode, str(alert.state), str(alert.severity),
                alert.version, to_iso(alert.opened_at), to_iso(alert.evidence_at),
                dumps(payload), ",".join(alert.rests_on), alert.evidence_key,
            ),
        )

    def enqueue(self, item: OutboxItem, created_at: datetime) -> None:
        if item.quiet:
            # Recorded, never published: no outbox row, and no reminder clock
            # (notified_at stays as it was: nobody was paged).
            self.audit(
                "event", item.alert_id, created_at, version=item.version, event=item.event,
                detail=f"not published: {item.quiet}",
            )
        else:
            cursor = self.execute(
                "INSERT INTO outbox (alert_id, version, event, topic, payload, patient, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (item.alert_id, item.version, str(item.event), item.topic, item.payload, item.patient,
                 to_iso(created_at)),
            )
            self.enqueued += 1
            # Every alert event passes here, whichever unit of work made it: the
            # audit trail and the reminder clock are kept in one place.
            self.audit(
                "event", item.alert_id, created_at, version=item.version, event=item.event,
                outbox_id=int(cursor.fetchone()[0]), detail=item.topic,
            )
        if item.event == AlertEvent.ESCALATED:
            # Severity rose: the earlier acknowledgement was for a lesser alert.
            self.execute(
                "UPDATE alerts SET acknowledged_by = NULL, acknowledged_at = NULL, reminders_sent = 0 "
                "WHERE alert_id = ?",
                (item.alert_id,),
            )
        if item.event in PAGING_EVENTS and not item.quiet:
            self.execute(
                "UPDATE alerts SET notified_at = ?, notified_ts = ? WHERE alert_id = ?",
                (to_iso(created_at), epoch(created_at), item.alert_id),
            )

    def alert_record(self, alert_id: str) -> AlertRecord | None:
        sql = f"SELECT {RECORD_COLUMNS} FROM alerts WHERE alert_id = ?"  # noqa: S608 (constant columns)
        row = self.execute(sql, (alert_id,)).fetchone()
        return None if row is None else record_from_row(row)

    def record_ack(self, alert_id: str, request: AckRequest) -> None:
        self.execute(
            "UPDATE alerts SET acknowledged_by = ?, acknowledged_at = ? WHERE alert_id = ?",
            (request.by, to_iso(request.at), alert_id),
        )

    def record_reminder(self, alert_id: str) -> None:
        self.execute(
            "UPDATE alerts SET reminders_sent = reminders_sent + 1 WHERE alert_id = ?", (alert_id,)
        )

    def reminder_candidates(
        self, severities: Iterable[str], max_reminders: int, notified_before: datetime | None
    ) -> list[AlertRecord]:
        wanted = sorted(severities)
        marks = ", ".join("?" for _ in wanted)
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM alerts WHERE state = 'open' "  # noqa: S608 (constants, '?' marks)
            f"AND acknowledged_at IS NULL AND notified_ts IS NOT NULL AND reminders_sent < ? "
            f"AND severity IN ({marks})"
        )
        args: list[Any] = [max_reminders, *wanted]
        if notified_before is not None:
            sql += " AND notified_ts <= ?"
            args.append(epoch(notified_before))
        rows = self.execute(sql + " ORDER BY notified_ts, alert_id", args).fetchall()
        return [record_from_row(r) for r in rows]

    def put_schedule(self, row: ScheduleRow) -> None:
        p = row.patient
        self.execute(
            "INSERT INTO monitoring (patient, order_id, patient_id, patient_id_type, "
            "patient_authority, start, last_panel, due, fires_at, fires_ts, fired_due, state, first_seen) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (patient, order_id) DO UPDATE SET "
            "patient_id = excluded.patient_id, patient_id_type = excluded.patient_id_type, "
            "patient_authority = excluded.patient_authority, start = excluded.start, "
            "last_panel = excluded.last_panel, due = excluded.due, fires_at = excluded.fires_at, "
            "fires_ts = excluded.fires_ts, fired_due = excluded.fired_due, state = excluded.state, "
            "first_seen = excluded.first_seen",
            (
                p.key, row.order_id, p.id, p.id_type, p.authority, to_iso(row.start),
                to_iso(row.last_panel), to_iso(row.due), to_iso(row.fires_at), epoch(row.fires_at),
                to_iso(row.fired_due), str(row.state), to_iso(row.first_seen),
            ),
        )

    def patient_schedules(self, patient: PatientKey) -> list[ScheduleRow]:
        rows = self.execute(
            f"SELECT {SCHEDULE_COLUMNS} FROM monitoring WHERE patient = ? ORDER BY order_id",  # noqa: S608
            (patient.key,),
        ).fetchall()
        return [schedule_from_row(r) for r in rows]

    def due_schedules(self, fires_before: datetime | None) -> list[ScheduleRow]:
        sql = (
            f"SELECT {SCHEDULE_COLUMNS} FROM monitoring WHERE state = 'active' "  # noqa: S608
            "AND (fired_due IS NULL OR fired_due != due)"
        )
        args: list[Any] = []
        if fires_before is not None:
            sql += " AND fires_ts <= ?"
            args.append(epoch(fires_before))
        rows = self.execute(sql + " ORDER BY fires_ts, patient, order_id", args).fetchall()
        return [schedule_from_row(r) for r in rows]

    def list_schedules(self, *, include_stopped: bool = False) -> list[ScheduleRow]:
        where = "" if include_stopped else "WHERE state != 'stopped' "
        rows = self.execute(
            f"SELECT {SCHEDULE_COLUMNS} FROM monitoring {where}ORDER BY fires_ts, patient, order_id"  # noqa: S608
        ).fetchall()
        return [schedule_from_row(r) for r in rows]

    def audit(
        self,
        kind: str,
        alert_id: str,
        at: datetime,
        *,
        version: int | None = None,
        event: str | None = None,
        outbox_id: int | None = None,
        detail: str = "",
    ) -> None:
        self.execute(
            "INSERT INTO audit (at, kind, alert_id, version, event, outbox_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (utc_stamp(at), kind, alert_id, version, event, outbox_id, detail),
        )

    def list_alerts(self, *, include_closed: bool = False, limit: int = 100) -> list[AlertRecord]:
        where = "" if include_closed else "WHERE state = 'open' "
        rows = self.execute(
            f"SELECT {RECORD_COLUMNS} FROM alerts {where}ORDER BY opened_at DESC, alert_id LIMIT ?",  # noqa: S608
            (limit,),
        ).fetchall()
        return [record_from_row(r) for r in rows]

    def audit_trail(self, alert_id: str) -> list[AuditRow]:
        rows = self.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE alert_id = ? ORDER BY id", (alert_id,)  # noqa: S608
        ).fetchall()
        return [audit_from_row(r) for r in rows]
