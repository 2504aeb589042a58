"""Shared fixtures: real services started on free ports in temporary directories."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.stack.postgres import EmbeddedPostgres
from node.store.db import migrate


def service_dir(prefix: str) -> Path:
    """A directory for a service's state outside pytest's 0700 temp root.

    As root, pgserver runs Postgres as the user ``pgserver``, which must be able to traverse
    every parent; pytest resets its temp root to 0700 whenever another session starts.
    """
    return Path(tempfile.mkdtemp(prefix=f"ainode-{prefix}-", dir="/tmp"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[EmbeddedPostgres]:
    """One embedded Postgres (pgvector) for the whole test session."""
    root = service_dir("pg")
    server = EmbeddedPostgres(root / "pgdata")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(postgres_server: EmbeddedPostgres) -> str:
    """URL of a migrated database; tests share it, so each test uses its own keys."""
    url = postgres_server.url
    migrate(url)
    return url


@pytest.fixture()
def fresh_database_url(postgres_server: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, migrated, empty database for one test."""
    import re

    import psycopg

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    base = postgres_server.url
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}"')
        conn.execute(f'create database "{name}"')
    url = _with_database(base, name)
    migrate(url)
    yield url
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def _with_database(url: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def make_service_dir():
    """``make_service_dir(prefix)``: see :func:`service_dir`."""
    return service_dir
