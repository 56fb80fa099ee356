"""The throwaway PostgreSQL server the tests run against: ours (its own port,
never the machine's 5432), reachable at the DSN the fixture hands out, and
its database is fresh and writable."""

from __future__ import annotations

import psycopg

from tests.support.pgserver import SYSTEM_PORT, PgServer


def test_pg_dsn_is_a_fresh_writable_database_on_our_own_server(pg_server: PgServer, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, connect_timeout=10) as conn:
        port = conn.execute("SHOW port").fetchone()
        assert port is not None
        assert int(port[0]) == pg_server.port != SYSTEM_PORT
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE probe (id integer PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO probe VALUES (%s, %s), (%s, %s)", (1, "ALT 3×ULN", 2, "ok"))
        conn.commit()
    with psycopg.connect(pg_dsn, connect_timeout=10) as conn:
        assert conn.execute("SELECT id, note FROM probe ORDER BY id").fetchall() == [(1, "ALT 3×ULN"), (2, "ok")]
