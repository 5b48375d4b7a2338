"""A private PostgreSQL server for execution accuracy: ``initdb`` into a temporary directory, a
server listening only on a Unix socket there (no TCP port, no other cluster touched), databases
loaded from SQL dumps, queries run read-only with a statement timeout, the server stopped and its
directory removed at exit.

Model-written SQL is untrusted. A prediction must be exactly one statement (parsed with sqlglot,
and sent as a prepared statement, which the server refuses to hold more than one of), so
``COMMIT; ...`` cannot end the read-only transaction. It runs as a role that may only SELECT, whose
*role-level* settings make every transaction read-only and bound every statement's time, and which
may not create temporary tables; gold queries (from the data file, also untrusted) run as a second
role of the same kind, so nothing a prediction does to its own session reaches a gold query.

PostgreSQL refuses to run as root, so under root the server's commands run as the ``postgres``
system user (created by the Debian package) through ``runuser``. The binaries come from
``$EXPERTKIT_PG_BINDIR``, ``pg_config --bindir`` or ``/usr/lib/postgresql/<version>/bin``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertkit.errors import UsageError

INSTALL_HINT = "install the server (Debian: apt-get install postgresql) or set EXPERTKIT_PG_BINDIR"
PORT = 5432  # only names the socket file: the server listens on no TCP address
READER = "expertkit_reader"  # predictions run as this role: SELECT on the loaded tables, nothing else
GOLD = "expertkit_gold"  # gold queries run as this one, with the same rights
ROLE_CEILING_S = 60  # the role-level statement timeout: a session's own SET LOCAL is lower still


class UnsafeQueryError(Exception):
    """A prediction that is not exactly one SQL statement."""


def single_statement(sql: str) -> str:
    """``sql`` if it parses as exactly one PostgreSQL statement; else :class:`UnsafeQueryError`."""
    import sqlglot
    from sqlglot.errors import ErrorLevel, ParseError, TokenError

    try:
        statements = [s for s in sqlglot.parse(sql, read="postgres", error_level=ErrorLevel.RAISE) if s is not None]
    except (ParseError, TokenError) as exc:
        raise UnsafeQueryError(f"does not parse as PostgreSQL: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise UnsafeQueryError(f"expected exactly one statement, found {len(statements)}")
    return sql


def pg_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, if a server is installed."""
    candidates = [os.environ.get("EXPERTKIT_PG_BINDIR", "")]
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(found.stdout.strip())
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


@dataclass
class PostgresServer:
    """One private server; :meth:`start` it, :meth:`load` databases, :meth:`query` them."""

    bindir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="expertkit-pg-")))
    loaded: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def user(self) -> str | None:
        """The system user the server runs as (``postgres`` under root, else this user)."""
        return "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise UsageError(f"{args[0]} failed: {(result.stderr or result.stdout).strip()[-600:]}", INSTALL_HINT)
        return result

    def start(self) -> PostgresServer:
        if self.user is not None:
            shutil.chown(self.root, user=self.user)
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.root}' -p {PORT} -c fsync=off"
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        atexit.register(self.stop)
        with self.connect() as connection:
            for role in (READER, GOLD):
                connection.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
                connection.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
                connection.execute(f"ALTER ROLE {role} SET statement_timeout = '{ROLE_CEILING_S}s'")
                connection.execute(f"ALTER ROLE {role} SET idle_in_transaction_session_timeout = '{ROLE_CEILING_S}s'")
        return self

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, database: str = "postgres", user: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(host=str(self.root), port=PORT, user=user, dbname=database, autocommit=True)

    def load(self, database: str, dump: Path) -> str:
        """Create ``database`` from the SQL dump once (``psql`` stops at the first error)."""
        with self._lock:
            if database not in self.loaded:
                with self.connect() as connection:
                    connection.execute(f'CREATE DATABASE "{database}"')
                psql = [
                    "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-p", str(PORT),
                    "-U", "postgres", "-d", database, "-f", "-",
                ]  # fmt: skip
                command = ["runuser", "-u", self.user, "--", *psql] if self.user else psql
                command[command.index("psql")] = str(self.bindir / "psql")
                result = subprocess.run(command, input=dump.read_text(encoding="utf-8"), capture_output=True, text=True)
                if result.returncode != 0:
                    raise UsageError(f"loading {dump} failed: {result.stderr.strip()[-600:]}", "check the dump")
                self._grant_reader(database)
                self.loaded.add(database)
        return database

    def _grant_reader(self, database: str) -> None:
        """SELECT on every table of every user schema (defog's ewallet lives in ``consumer_div``)."""
        with self.connect(database) as connection:
            schemas = connection.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
            ).fetchall()
            connection.execute(f'REVOKE TEMPORARY, CREATE ON DATABASE "{database}" FROM PUBLIC')
            for (schema,) in schemas:
                connection.execute(f'REVOKE CREATE ON SCHEMA "{schema}" FROM PUBLIC')
                for role in (READER, GOLD):
                    connection.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
                    connection.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {role}')

    def query(
        self, database: str, sql: str, timeout_s: float, max_rows: int, gold: bool = False
    ) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (exactly one statement, sent as a prepared statement), run as a role that
        may only SELECT, in a read-only transaction (rolled back) with a statement timeout.

        Raises:
            UnsafeQueryError: ``sql`` is not exactly one statement.
        """
        single_statement(sql)
        with self.connect(database, GOLD if gold else READER) as connection:
            connection.autocommit = False
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION READ ONLY")
                cursor.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
                cursor.execute(sql, prepare=True)  # extended protocol: one statement only
                rows = cursor.fetchmany(max_rows + 1) if cursor.description else []
            connection.rollback()
        return [tuple(row) for row in rows]


_SERVER: PostgresServer | None = None
_SERVER_LOCK = threading.Lock()


def shared_server() -> PostgresServer:
    """The process's private server, started on first use and stopped at exit."""
    global _SERVER
    with _SERVER_LOCK:
        if _SERVER is None:
            bindir = pg_bindir()
            if bindir is None:
                raise UsageError("PostgreSQL execution needs a PostgreSQL server; none is installed", INSTALL_HINT)
            _SERVER = PostgresServer(bindir).start()
        return _SERVER
