"""A throwaway PostgreSQL server for the tests and the benchmark.

``PgServer`` owns one server from ``initdb`` to removal: its temporary
directory under /tmp (data directory, log, Unix socket), the free TCP port it
listens on (127.0.0.1 only, never the machine's PostgreSQL on 5432) and its
settings. Nothing outside that directory is read or written, and ``stop()``
leaves nothing behind.

    with PgServer({"fsync": "off"}) as pg:
        dsn = pg.create_database("t1")   # postgresql://postgres@127.0.0.1:PORT/t1

As root, initdb and postgres refuse to run: the server is then initialised
and run as the ``postgres`` system user (which Debian's ``postgresql``
package creates), and the directory is handed to that user.

Every wait is bounded: subprocesses have timeouts, and ``pg_ctl -w`` itself
waits until the server accepts connections (or has failed) — no sleeps.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, LiteralString
from urllib.parse import quote

from tests.support.ports import free_port

BINARIES = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = "install PostgreSQL's server binaries: `apt-get install postgresql` (Debian)"
SYSTEM_PORT = 5432  # the machine's own PostgreSQL, which this never uses
# The tests' servers: fast, not durable. The tests check correctness, never what
# survives a power cut, so the server skips fsync (the benchmark starts its own
# with fsync on).
TEST_PG_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off", "max_connections": "200"}


class PgServerError(RuntimeError):
    """The throwaway server could not be found, started or stopped."""


def _version_key(path: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> (15,); ``.../9.6/bin`` -> (9, 6)."""
    return tuple(int(part) for part in path.parent.name.split("."))


def find_binaries() -> dict[str, Path]:
    """initdb, pg_ctl and postgres: from PATH, else from the newest
    ``/usr/lib/postgresql/*/bin`` (Debian keeps them off PATH)."""
    on_path = {name: shutil.which(name) for name in BINARIES}
    if all(on_path.values()):
        return {name: Path(found) for name, found in on_path.items() if found}
    candidates = [
        d for d in Path("/usr/lib/postgresql").glob("*/bin")
        if re.fullmatch(r"\d+(\.\d+)*", d.parent.name) and all((d / name).is_file() for name in BINARIES)
    ]
    if not candidates:
        missing = ", ".join(name for name, found in on_path.items() if not found)
        raise PgServerError(
            f"PostgreSQL server binaries not found ({missing} on neither PATH nor "
            f"/usr/lib/postgresql/*/bin): {INSTALL_HINT}"
        )
    newest = max(candidates, key=_version_key)
    return {name: newest / name for name in BINARIES}


@dataclass
class PgServer:
    """One PostgreSQL server in its own temporary directory, on its own port."""

    settings: dict[str, str] = field(default_factory=dict)  # extra ``-c key=value`` server settings
    timeout: float = 60.0  # seconds: the ceiling for initdb, start and stop, each
    port: int = 0  # chosen by start()
    directory: Path | None = None  # made by start(), removed by stop()
    binaries: dict[str, Path] = field(default_factory=dict)
    _run_as: pwd.struct_passwd | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        assert self.directory is not None, "server not started"
        return self.directory / "data"

    @property
    def log(self) -> Path:
        assert self.directory is not None, "server not started"
        return self.directory / "log"

    def dsn(self, dbname: str = "postgres") -> str:
        assert self.port, "server not started"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def start(self) -> PgServer:
        """initdb, then start on a free port; returns once it accepts connections."""
        if self.directory is not None:
            raise PgServerError(f"already started in {self.directory}")
        self.binaries = find_binaries()
        self._run_as = self._server_user()
        # Not pytest's tmp_path: that sits under a 0700 root-owned directory the
        # postgres user cannot enter.
        self.directory = Path(tempfile.mkdtemp(prefix="hl7alerts-pg-", dir="/tmp"))
        try:
            if self._run_as is not None:
                os.chown(self.directory, self._run_as.pw_uid, self._run_as.pw_gid)
            # --no-sync: initdb's closing fsync only protects the initial cluster
            # against a machine crash, which a throwaway server never outlives.
            # The server's own durability settings come from `settings`.
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--no-locale", "--no-sync",
            )
            self._start_on_free_port()
        except BaseException:
            self._remove_directory()
            raise
        return self

    def _start_on_free_port(self, attempts: int = 3) -> None:
        """pg_ctl start; another process may take the free port between our
        probe and the server's bind, so that one failure is retried."""
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            if self.port == SYSTEM_PORT:  # only free if the system server is down; never take it
                continue
            try:
                self.resume()
                return
            except PgServerError:
                if attempt == attempts or "could not bind" not in self._log_tail():
                    raise
        raise PgServerError(f"no free port other than {SYSTEM_PORT} after {attempts} attempts")

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its DSN."""
        self._admin("CREATE DATABASE {}", name)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ``name``, closing any connections still open to it."""
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions, disconnects clients),
        then removes the directory. Safe to call twice."""
        if self.directory is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(int(self.timeout)),
                              "-m", "fast", "stop")
                except PgServerError:
                    # Never leave a server running on a directory we are about to remove.
                    self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(int(self.timeout)),
                              "-m", "immediate", "stop")
        finally:
            self._remove_directory()

    def pause(self) -> None:
        """Fast shutdown, keeping the directory and the port: a database
        server going away (clients are disconnected) until ``resume``."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(int(self.timeout)), "-m", "fast", "stop")

    def resume(self) -> None:
        """Start on ``port`` (again, after ``pause``: its clients' DSNs name
        it); returns once it accepts connections."""
        options = [
            "-p", str(self.port), "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1",
            *(item for key, value in self.settings.items() for item in ("-c", f"{key}={value}")),
        ]
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(self.timeout)),
            "-o", shlex.join(options), "start",
        )

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------

    def _admin(self, statement: LiteralString, name: str) -> None:
        """One statement about database ``name``, outside any transaction
        (CREATE/DROP DATABASE cannot run inside one)."""
        import psycopg  # noqa: PLC0415 (only these two statements need a client)
        from psycopg import sql  # noqa: PLC0415

        timeout = int(self.timeout)
        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=timeout) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))

    @staticmethod
    def _server_user() -> pwd.struct_passwd | None:
        """None when we may run the server ourselves; the ``postgres`` user as root."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise PgServerError(
                "running as root, and PostgreSQL refuses to run as root: it must run as the "
                f"`postgres` system user, which does not exist here; {INSTALL_HINT} (it creates "
                "that user), or run as an ordinary user"
            ) from None

    def _run(self, binary: str, *args: str) -> None:
        """Run one PostgreSQL command (as the server user when we are root),
        bounded by ``timeout``; a failure raises with its output and the log."""
        command = [str(self.binaries[binary]), *args]
        # PG* variables are for clients; none of them may steer this server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        user: dict[str, Any] = {}
        if self._run_as is not None:
            env["HOME"] = self._run_as.pw_dir
            user = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        try:
            # stdin closed and output captured: with -l, pg_ctl hands the server
            # the log file, so no pipe outlives the command.
            done = subprocess.run(
                command, cwd=self.directory, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=self.timeout + 10, check=False, **user,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgServerError(
                f"{shlex.join(command)} timed out after {exc.timeout}s{self._log_tail()}"
            ) from None
        if done.returncode != 0:
            raise PgServerError(
                f"{shlex.join(command)} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}{self._log_tail()}"
            )

    def _log_tail(self, lines: int = 20) -> str:
        if self.directory is None:
            return ""
        with contextlib.suppress(OSError):
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
            return f"\n--- {self.log} (last {len(tail)} lines) ---\n" + "\n".join(tail)
        return ""

    def _remove_directory(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
        self.port = 0
