"""Embedded Postgres 16 with pgvector, from the pgserver wheel; no root or system service needed."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

from node.stack.process import ServiceError

logger = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Postgres in ``data_dir`` listening on a Unix socket only; stays up until :meth:`stop`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._server = None

    def start(self) -> str:
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pgserver.get_server(self.data_dir, cleanup_mode=None)
        except Exception as exc:  # pgserver raises CalledProcessError, TimeoutExpired, AssertionError
            log = self.data_dir / "log"
            raise ServiceError(f"postgres: embedded server in {self.data_dir} did not start ({exc}); see {log}") from exc
        url = self._server.get_uri()
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("select 1")
        return url

    @property
    def url(self) -> str:
        if self._server is None:
            raise ServiceError("postgres: not started")
        return self._server.get_uri()

    def stop(self) -> None:
        import pgserver

        if not (self.data_dir / "postmaster.pid").exists():
            return
        try:
            pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=_system_user(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - report and carry on stopping the rest
            logger.warning("postgres: stop failed: %s", exc)


def _system_user() -> str | None:
    import os

    return "pgserver" if os.geteuid() == 0 else None
