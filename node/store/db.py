"""The database connector: one pool, named queries from sql/queries, numbered migrations."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
QUERIES_DIR = SQL_DIR / "queries"
_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION_RE = re.compile(r"^(\d{3})_[\w-]+\.sql$")


class DatabaseUnavailable(RuntimeError):
    """Postgres cannot be reached at the configured URL."""


class Database:
    """Owns the psycopg connection pool; every database call of the node goes through it."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 4, timeout: float = 10.0) -> None:
        if not url:
            raise ValueError("url: a Postgres URL is required")
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": False},
            timeout=timeout,
            open=False,
            name="ainode",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"Postgres at {redact_url(url)} is not reachable: {exc}") from exc
        except Exception as exc:  # psycopg_pool.PoolTimeout
            raise DatabaseUnavailable(
                f"Postgres at {redact_url(url)} is not reachable within {timeout:.0f} s; "
                "check AINODE_DATABASE_URL or run `ainode up`"
            ) from exc

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; the transaction commits on success and rolls back on error."""
        with self._pool.connection() as conn:
            yield conn

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@cache
def load_queries(name: str) -> dict[str, str]:
    """Named queries of ``sql/queries/<name>.sql``: blocks that start with ``-- name: NAME``."""
    text = (QUERIES_DIR / f"{name}.sql").read_text()
    parts = _NAME_RE.split(text)
    queries = {}
    for key, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[key] = body.strip().rstrip(";")
    return queries


def migration_files() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _MIGRATION_RE.match(path.name)
        if match is None:
            raise ValueError(f"migration {path.name}: name must look like 001_description.sql")
        found.append((path.stem, path))
    return found


def migrate(url: str) -> list[str]:
    """Apply every migration not yet applied, in order, each in its own transaction.

    Returns the names applied now. Safe to run again and concurrently (an advisory lock
    serialises migrators).
    """
    applied_now: list[str] = []
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"Postgres at {redact_url(url)} is not reachable: {exc}") from exc
    with conn:
        conn.execute("select pg_advisory_lock(724201)")
        try:
            conn.execute(
                "create table if not exists schema_migrations ("
                " name text primary key, applied_at timestamptz not null default now())"
            )
            done = {row[0] for row in conn.execute("select name from schema_migrations")}
            for name, path in migration_files():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("insert into schema_migrations (name) values (%s)", (name,))
                logger.info("applied migration %s", name)
                applied_now.append(name)
        finally:
            conn.execute("select pg_advisory_unlock(724201)")
    return applied_now
