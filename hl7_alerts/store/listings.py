"""The queries of the commands a site runs on its first days: which lab
codes the stored results carry (`hl7-alerts codes`), and the rejected
messages (`hl7-alerts rejected list|show|resend`).

A mixin of `queries.SqlTransaction`, kept apart so that module stays one
screenful per concern; the same rules hold: SQL both dialects speak, ``?``
marks, rows mapped only through `rows.py`.
"""

from __future__ import annotations

from datetime import datetime

from hl7_alerts.store.base import CodeCount, RejectedMessage
from hl7_alerts.store.rows import (
    CODE_COUNT_COLUMNS,
    REJECTED_COLUMNS,
    code_count_from_row,
    rejected_from_row,
)
from hl7_alerts.store.statements import Statements
from hl7_alerts.timeutil import to_iso


class Listings(Statements):
    """What the admin commands read (and a resend writes) in the store."""

    def code_counts(self) -> list[CodeCount]:
        rows = self.execute(
            f"SELECT {CODE_COUNT_COLUMNS} FROM observations "  # noqa: S608 (constants)
            "GROUP BY code, code_system, analyte ORDER BY count(*) DESC, code, code_system"
        ).fetchall()
        return [code_count_from_row(r) for r in rows]

    def list_rejected(self, limit: int) -> list[RejectedMessage]:
        rows = self.execute(
            f"SELECT {REJECTED_COLUMNS} FROM rejected_messages ORDER BY id DESC LIMIT ?", (limit,)  # noqa: S608
        ).fetchall()
        return [rejected_from_row(r) for r in rows]

    def rejected_message(self, rejected_id: int) -> RejectedMessage | None:
        row = self.execute(
            f"SELECT {REJECTED_COLUMNS}, raw FROM rejected_messages WHERE id = ?", (rejected_id,)  # noqa: S608
        ).fetchone()
        return None if row is None else rejected_from_row(row[:-1], raw=row[-1])

    def record_resend(self, rejected_id: int, at: datetime, ack_code: str, text: str) -> None:
        self.execute(
            "UPDATE rejected_messages SET resent_at = ?, resend_ack = ?, resend_text = ? WHERE id = ?",
            (to_iso(at), ack_code, text, rejected_id),
        )
