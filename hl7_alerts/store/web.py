"""The web view's queries: alert lists, an alert's events, a patient's trend,
users, sessions and the access audit.

`WebQueries` is a mixin of `SqlTransaction` (`queries.py`), so the same SQL
runs on the daemon's transaction class of each dialect (``?`` marks, turned
into ``%s`` by PostgreSQL's `execute`) and on the web view's read-only
connections (`reader.py`). The web process writes only its own tables
(`web_users`, `web_sessions`, `web_access`) and, for an acknowledgement,
goes through `lifecycle.acknowledge_alert` like a pager's ack: nothing here
writes clinical data. Rows become values only through `rows.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hl7_alerts.model import PatientKey
from hl7_alerts.store.base import (
    AccessRow,
    AlertFilter,
    AlertRecord,
    EventRow,
    PatientAlert,
    Transaction,
    WebSession,
)
from hl7_alerts.store.rows import (
    ACCESS_COLUMNS,
    EVENT_COLUMNS,
    PATIENT_ALERT_COLUMNS,
    RECORD_COLUMNS,
    SESSION_COLUMNS,
    access_from_row,
    event_from_row,
    patient_alert_from_row,
    record_from_row,
    session_from_row,
)
from hl7_alerts.store.statements import Statements
from hl7_alerts.timeutil import to_iso, utc_stamp

# Most severe first; ties newest first.
_SEVERITY_ORDER = "CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'warning' THEN 2 ELSE 3 END"


class WebQueries(Statements):
    """The web view's queries, on whatever connection ``execute`` runs."""

    # -- alerts ------------------------------------------------------------------

    def filtered_alerts(self, wanted: AlertFilter) -> list[AlertRecord]:
        """Alerts matching ``wanted``, most severe first, then newest."""
        where = [] if wanted.include_closed else ["state = 'open'"]
        args: list[Any] = []
        if wanted.severity is not None:
            where.append("severity = ?")
            args.append(wanted.severity)
        if wanted.rule is not None:
            where.append("rule = ?")
            args.append(wanted.rule)
        if wanted.acknowledged is not None:
            where.append("acknowledged_at IS NOT NULL" if wanted.acknowledged else "acknowledged_at IS NULL")
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self.execute(
            f"SELECT {RECORD_COLUMNS} FROM alerts {clause}"  # noqa: S608 (constants, '?' marks)
            f"ORDER BY {_SEVERITY_ORDER}, opened_at DESC, alert_id LIMIT ?",
            (*args, wanted.limit),
        ).fetchall()
        return [record_from_row(r) for r in rows]

    def alert_events(self, alert_id: str) -> list[EventRow]:
        """Every event of the alert as it went out (its outbox rows), in order."""
        rows = self.execute(
            f"SELECT {EVENT_COLUMNS} FROM audit a JOIN outbox o ON o.id = a.outbox_id "  # noqa: S608
            "WHERE a.alert_id = ? AND a.kind = 'event' ORDER BY a.id",
            (alert_id,),
        ).fetchall()
        return [event_from_row(r) for r in rows]

    def patient_alerts(self, patient: PatientKey, since: datetime | None) -> list[PatientAlert]:
        """The patient's alerts opened at or after ``since`` (withdrawn ones too:
        the page says so), oldest first."""
        rows = self.execute(
            f"SELECT {PATIENT_ALERT_COLUMNS} FROM alerts WHERE patient = ? ORDER BY opened_at",  # noqa: S608
            (patient.key,),
        ).fetchall()
        found = [patient_alert_from_row(r) for r in rows]
        return [a for a in found if since is None or a.opened_at >= since]

    # -- users ---------------------------------------------------------------------

    def put_user(self, username: str, password_hash: str, at: datetime) -> bool:
        """Add the user, or set a new password (ending their sessions).
        True when the user is new."""
        existed = self.password_hash(username) is not None
        self.execute(
            "INSERT INTO web_users (username, password_hash, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash",
            (username, password_hash, to_iso(at)),
        )
        if existed:
            self.execute("DELETE FROM web_sessions WHERE username = ?", (username,))
        return not existed

    def remove_user(self, username: str) -> bool:
        """Remove the user and end their sessions; False when there was none."""
        self.execute("DELETE FROM web_sessions WHERE username = ?", (username,))
        return bool(self.execute("DELETE FROM web_users WHERE username = ?", (username,)).rowcount)

    def users(self) -> list[tuple[str, str]]:
        """(name, created at) of every local user, by name."""
        rows = self.execute("SELECT username, created_at FROM web_users ORDER BY username").fetchall()
        return [(r[0], r[1]) for r in rows]

    def password_hash(self, username: str) -> str | None:
        row = self.execute("SELECT password_hash FROM web_users WHERE username = ?", (username,)).fetchone()
        return None if row is None else str(row[0])

    # -- sessions ------------------------------------------------------------------

    def add_session(self, session: WebSession) -> None:
        self.execute(
            f"INSERT INTO web_sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
            (
                session.token_hash,
                session.username,
                session.via,
                session.csrf,
                session.created_ts,
                session.seen_ts,
            ),
        )

    def session(self, token_hash: str) -> WebSession | None:
        row = self.execute(
            f"SELECT {SESSION_COLUMNS} FROM web_sessions WHERE token_hash = ?",  # noqa: S608 (constants)
            (token_hash,),
        ).fetchone()
        return None if row is None else session_from_row(row)

    def touch_session(self, token_hash: str, seen_ts: float) -> None:
        self.execute("UPDATE web_sessions SET seen_ts = ? WHERE token_hash = ?", (seen_ts, token_hash))

    def end_session(self, token_hash: str) -> None:
        self.execute("DELETE FROM web_sessions WHERE token_hash = ?", (token_hash,))

    def end_stale_sessions(self, seen_before: float, created_before: float) -> int:
        return int(
            self.execute(
                "DELETE FROM web_sessions WHERE seen_ts < ? OR created_ts < ?", (seen_before, created_before)
            ).rowcount
        )

    # -- the access audit ----------------------------------------------------------

    def record_access(
        self,
        *,
        at: datetime,
        username: str,
        via: str,
        peer: str,
        action: str,
        alert_id: str | None = None,
        patient: PatientKey | None = None,
        detail: str = "",
    ) -> None:
        self.execute(
            "INSERT INTO web_access (at, at_ts, username, via, peer, action, alert_id, patient, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                utc_stamp(at),
                at.timestamp(),
                username,
                via,
                peer,
                action,
                alert_id,
                None if patient is None else patient.key,
                detail,
            ),
        )

    def access_trail(self, alert_id: str) -> list[AccessRow]:
        """Who looked at (or acknowledged) this alert, oldest first."""
        rows = self.execute(
            f"SELECT {ACCESS_COLUMNS} FROM web_access WHERE alert_id = ? ORDER BY id",  # noqa: S608
            (alert_id,),
        ).fetchall()
        return [access_from_row(r) for r in rows]

    def failed_logins(self, username: str, peer: str, since: datetime) -> int:
        """Failed sign-ins for this user name, or from this address, since ``since``."""
        row = self.execute(
            "SELECT count(*) FROM web_access WHERE action = 'login_failed' AND at_ts >= ? "
            "AND (username = ? OR peer = ?)",
            (since.timestamp(), username, peer),
        ).fetchone()
        return int(row[0])


def web(tx: Transaction) -> WebQueries:
    """The web view's queries on a unit of work's transaction: every
    backend's transaction is a `SqlTransaction`, which has them."""
    if not isinstance(tx, WebQueries):
        raise TypeError(f"{type(tx).__name__} has no web view queries")
    return tx
