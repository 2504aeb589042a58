"""The node's stack: start, describe and stop Postgres, Triton, Orthanc, the workers and the viewer.

Services whose URL is configured (AINODE_DATABASE_URL, AINODE_TRITON_URL, AINODE_ORTHANC_URL) are
used as they are; the others start embedded, with all state under the data directory. What
runs is written to ``<data_dir>/run/stack.json`` so that every other command finds it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from node.config import Settings
from node.stack.process import ServiceError, free_port, read_pid, start_process, stop_service

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StackState:
    database_url: str
    triton_url: str
    orthanc_url: str
    orthanc_dicom_port: int | None
    orthanc_aet: str
    viewer_url: str | None = None
    embedded: list[str] = field(default_factory=list)
    workers: int = 0
    started_at: float = 0.0

    @property
    def dicomweb_url(self) -> str:
        return f"{self.orthanc_url}/dicom-web"


def state_file(settings: Settings) -> Path:
    return settings.run_dir / "stack.json"


def load_state(settings: Settings) -> StackState | None:
    try:
        return StackState(**json.loads(state_file(settings).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def recorded_services(run_dir: Path, pattern: str = "*") -> list[str]:
    """Names of the services `up` recorded a pid file for (alive or not), sorted."""
    return sorted(p.stem for p in run_dir.glob(f"{pattern}.pid")) if run_dir.is_dir() else []


def stack_running(settings: Settings) -> bool:
    """Whether a stack started from this data directory still has a live process."""
    if any(read_pid(settings.run_dir / f"{n}.pid") for n in recorded_services(settings.run_dir)):
        return True
    return (settings.data_dir / "postgres" / "postmaster.pid").exists()


def effective_settings(settings: Settings) -> Settings:
    """Settings with the URLs of the running stack filled in where the user set none."""
    state = load_state(settings)
    if state is None or not stack_running(settings):
        return settings
    return settings.with_overrides(
        database_url=settings.database_url or state.database_url,
        triton_url=settings.triton_url or state.triton_url,
        orthanc_url=settings.orthanc_url or state.orthanc_url,
    )


def _port(value: int) -> int:
    return value if value else free_port()


def _triton_ready(url: str) -> None:
    import tritonclient.grpc as grpcclient

    if not grpcclient.InferenceServerClient(url).is_server_ready():
        raise RuntimeError("Triton answers but is not ready")


def _check_url(name: str, url: str, probe) -> None:
    try:
        probe()
    except Exception as exc:
        raise ServiceError(f"{name}: {url} is unreachable ({type(exc).__name__}); check the URL or unset it to start the embedded {name}") from exc


def up(settings: Settings, *, workers: int | None = None, viewer: bool = True, progress=print) -> StackState:
    """Start every service that is not configured externally; wait until each is healthy."""
    from node.stack.orthanc import EmbeddedOrthanc, OrthancPorts
    from node.stack.postgres import EmbeddedPostgres
    from node.stack.triton import EmbeddedTriton, TritonPorts
    from node.store.db import migrate

    data_dir = settings.data_dir.resolve()
    run_dir, log_dir = settings.run_dir.resolve(), settings.log_dir.resolve()
    if load_state(settings) is not None and stack_running(settings):
        raise ServiceError(f"the stack in {data_dir} is already up; `ainode status` shows it, `ainode down` stops it")
    embedded: list[str] = []
    started: list[Any] = []
    try:
        # Postgres
        if settings.database_url:
            import psycopg

            _check_url("postgres", settings.database_url, lambda: psycopg.connect(settings.database_url, connect_timeout=5).close())
            database_url = settings.database_url
        else:
            t0 = time.monotonic()
            pg = EmbeddedPostgres(data_dir / "postgres")
            database_url = pg.start()
            started.append(pg)
            embedded.append("postgres")
            progress(f"postgres   ready in {time.monotonic() - t0:4.1f} s  (embedded, {data_dir / 'postgres'})")
        applied = migrate(database_url)
        if applied:
            progress(f"database   migrated: {', '.join(applied)}")

        # Triton
        if settings.triton_url:
            _check_url("triton", settings.triton_url, lambda: _triton_ready(settings.triton_url))
            triton_url = settings.triton_url
        else:
            t0 = time.monotonic()
            triton = EmbeddedTriton(
                data_dir / "triton",
                ports=TritonPorts(grpc=_port(settings.triton_grpc_port), http=_port(settings.triton_http_port),
                                  metrics=_port(settings.triton_metrics_port)),
                repository=Path(settings.model_repository).resolve() / "cpu",
                run_dir=run_dir, log_dir=log_dir,
            )
            triton.start()
            started.append(triton)
            embedded.append("triton")
            triton_url = triton.grpc_url
            progress(f"triton     ready in {time.monotonic() - t0:4.1f} s  grpc {triton_url}, http {triton.http_url}")

        # The viewer's port is chosen now so that Orthanc Explorer can link to it.
        from node.stack.viewer import DEFAULT_DIST_DIR

        viewer_port = _port(settings.viewer_port) if viewer and (DEFAULT_DIST_DIR / "index.html").is_file() else None

        # Orthanc
        dicom_port: int | None = None
        if settings.orthanc_url:
            _check_url("orthanc", settings.orthanc_url, lambda: requests.get(settings.orthanc_url + "/system", timeout=5).raise_for_status())
            orthanc_url = settings.orthanc_url
        else:
            t0 = time.monotonic()
            orthanc = EmbeddedOrthanc(
                data_dir / "orthanc",
                ports=OrthancPorts(http=_port(settings.orthanc_http_port), dicom=_port(settings.orthanc_dicom_port)),
                aet=settings.orthanc_aet, database_url=database_url, run_dir=run_dir, log_dir=log_dir,
                stable_age=settings.stable_age_seconds, max_attempts=settings.job_max_attempts,
                viewer_url=f"http://127.0.0.1:{viewer_port}" if viewer_port else None,
            )
            orthanc.start()
            started.append(orthanc)
            embedded.append("orthanc")
            orthanc_url, dicom_port = orthanc.url, orthanc.ports.dicom
            progress(f"orthanc    ready in {time.monotonic() - t0:4.1f} s  http {orthanc_url}, DICOM {settings.orthanc_aet}@127.0.0.1:{dicom_port}")

        state = StackState(
            database_url=database_url, triton_url=triton_url, orthanc_url=orthanc_url,
            orthanc_dicom_port=dicom_port, orthanc_aet=settings.orthanc_aet, embedded=embedded,
            started_at=time.time(),
        )

        # Workers
        n = settings.workers if workers is None else workers
        env = {"AINODE_DATABASE_URL": database_url, "AINODE_TRITON_URL": triton_url,
               "AINODE_ORTHANC_URL": orthanc_url, "AINODE_DATA_DIR": str(data_dir)}
        for i in range(n):
            start_process(f"worker-{i}", [sys.executable, "-m", "node.cli", "worker", "--index", str(i)],
                          run_dir=run_dir, log_dir=log_dir, env=env)
        state.workers = n
        if n:
            progress(f"workers    {n} started (logs in {log_dir})")

        # Viewer
        if viewer:
            state.viewer_url = _start_viewer(viewer_port, orthanc_url, run_dir, log_dir, progress)

        run_dir.mkdir(parents=True, exist_ok=True)
        state_file(settings).write_text(json.dumps(asdict(state), indent=1))
        return state
    except BaseException:
        for service in reversed(started):
            service.stop()
        for name in recorded_services(run_dir, "worker-*"):
            stop_service(name, run_dir)
        raise


def _start_viewer(port: int | None, orthanc_url: str, run_dir: Path, log_dir: Path, progress) -> str | None:
    from node.stack.process import check_ports_free, wait_until

    if port is None:
        progress("viewer     OHIF is not installed (`deploy/install.sh install-viewer`); skipped")
        return None
    check_ports_free("viewer", {"viewer": port})
    proc = start_process("viewer", [sys.executable, "-m", "node.cli", "viewer", "--port", str(port),
                                    "--orthanc", orthanc_url], run_dir=run_dir, log_dir=log_dir)
    url = f"http://127.0.0.1:{port}"
    wait_until("viewer", lambda: requests.get(url + "/app-config.js", timeout=2).ok, timeout=30, proc=proc,
               log_file=log_dir / "viewer.log")
    progress(f"viewer     OHIF at {url}")
    return url


def down(settings: Settings, *, progress=print) -> list[str]:
    """Stop what `up` started, workers first; returns the names stopped."""
    from node.stack.postgres import EmbeddedPostgres

    run_dir = settings.run_dir.resolve()
    stopped = []
    names = recorded_services(run_dir)
    order = [n for n in names if n.startswith("worker-")] + [n for n in ("viewer", "orthanc", "triton") if n in names]
    for name in order:
        if stop_service(name, run_dir):
            stopped.append(name)
            progress(f"stopped {name}")
    pg_dir = settings.data_dir.resolve() / "postgres"
    if (pg_dir / "postmaster.pid").exists():
        EmbeddedPostgres(pg_dir).stop()
        stopped.append("postgres")
        progress("stopped postgres")
    state_file(settings).unlink(missing_ok=True)
    return stopped


def status(settings: Settings) -> dict[str, Any]:
    """Health of each service, queue depth, jobs by state, last errors."""
    state = load_state(settings)
    eff = effective_settings(settings)
    report: dict[str, Any] = {"services": {}, "jobs": None, "last_errors": []}
    services = report["services"]

    if eff.database_url:
        try:
            from node.store.db import Database, redact_url
            from node.store.jobs import JobStore

            with Database(eff.database_url, timeout=5) as db:
                jobs = JobStore(db)
                report["jobs"] = jobs.counts()
                report["last_errors"] = jobs.last_errors(5)
            services["postgres"] = {"ok": True, "url": redact_url(eff.database_url)}
        except Exception as exc:
            services["postgres"] = {"ok": False, "error": str(exc).splitlines()[0]}
    else:
        services["postgres"] = {"ok": False, "error": "not configured and not running (`ainode up`)"}

    if eff.triton_url:
        try:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(eff.triton_url)
            models = [m.name for m in client.get_model_repository_index().models if m.state == "READY"]
            services["triton"] = {"ok": client.is_server_ready(), "url": eff.triton_url, "models_ready": models}
        except Exception as exc:
            services["triton"] = {"ok": False, "url": eff.triton_url, "error": type(exc).__name__}
    else:
        services["triton"] = {"ok": False, "error": "not configured and not running (`ainode up`)"}

    if eff.orthanc_url:
        try:
            system = requests.get(eff.orthanc_url + "/system", timeout=3).json()
            services["orthanc"] = {"ok": True, "url": eff.orthanc_url, "version": system.get("Version"),
                                   "dicom": f"{system.get('DicomAet')}@127.0.0.1:{system.get('DicomPort')}",
                                   "dicomweb": eff.orthanc_url + "/dicom-web"}
        except Exception as exc:
            services["orthanc"] = {"ok": False, "url": eff.orthanc_url, "error": type(exc).__name__}
    else:
        services["orthanc"] = {"ok": False, "error": "not configured and not running (`ainode up`)"}

    run_dir = settings.run_dir
    alive = [w for w in recorded_services(run_dir, "worker-*") if read_pid(run_dir / f"{w}.pid")]
    services["workers"] = {"ok": bool(alive) or (state is not None and state.workers == 0),
                           "running": len(alive), "expected": state.workers if state else 0}
    if state is not None and state.viewer_url:
        try:
            ok = requests.get(state.viewer_url, timeout=3).ok
        except requests.RequestException:
            ok = False
        services["viewer"] = {"ok": ok, "url": state.viewer_url}
    return report
