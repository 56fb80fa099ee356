"""What every query class runs on: one DB-API connection and the dialect's
way to execute a statement.

`Statements` is the root of `SqlTransaction` and its query mixins
(`operations.py`, `web.py`): they write SQL once with ``?`` marks and call
`execute`; PostgreSQL's transaction class overrides `execute` and
`execute_many` to turn the marks into ``%s`` (and NUL bytes into U+FFFD),
and `EARLIER` to compare ISO 8601 texts as dates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class Statements:
    """Statements on one connection (writer thread or a reader's)."""

    # "column is before the parameter", both ISO 8601 texts, compared as dates.
    EARLIER: ClassVar[str] = "{col} < ?"

    def __init__(self, conn: Any) -> None:
        self.connection = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute one statement; return its cursor."""
        return self.connection.execute(sql, params)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.connection.executemany(sql, rows)
