"""What the node does inside Orthanc: queue stable studies, answer /ainode/ routes. Nothing heavy.

Orthanc calls the callbacks synchronously, so they only record a job in Postgres and return;
inference runs in the workers. The `orthanc` module is passed in (``register(orthanc, config)``),
so tests can hand in a strict fake.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.api import Response, Route, dispatch, job_routes, json_response

logger = logging.getLogger("node.orthanc_plugin")

RETRY_SECONDS = 10.0
EXPLORER_JS = Path(__file__).resolve().parents[1] / "orthanc" / "explorer.js"


def _study_uid(info: Mapping[str, Any]) -> str | None:
    """Study Instance UID from Orthanc's JSON of a study."""
    return info.get("MainDicomTags", {}).get("StudyInstanceUID")


class OrthancLogHandler(logging.Handler):
    """Bridges the node's log records to Orthanc's own log."""

    def __init__(self, orthanc: Any) -> None:
        super().__init__(logging.INFO)
        self._orthanc = orthanc

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"ainode {record.name}: {self.format(record)}"
            if record.levelno >= logging.ERROR:
                self._orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                self._orthanc.LogWarning(message)
            else:
                self._orthanc.LogInfo(message)
        except Exception:  # noqa: BLE001 - logging must never break Orthanc
            pass


class PluginApp:
    """The plugin's state: a lazily opened database, pending enqueues, the route table."""

    def __init__(self, orthanc: Any, config: Mapping[str, Any]) -> None:
        self._orthanc = orthanc
        self._url: str | None = config.get("DatabaseUrl")
        self._max_attempts = int(config.get("MaxAttempts", 3))
        self._lock = threading.Lock()
        self._db = None
        self._jobs = None
        self._routes: list[Route] | None = None
        self._pending: set[str] = set()
        self._stop = threading.Event()
        self._retry_thread: threading.Thread | None = None

    # -- database -----------------------------------------------------------------------
    def jobs(self):
        from node.store.db import Database
        from node.store.jobs import JobStore

        with self._lock:
            if self._jobs is None:
                if not self._url:
                    raise RuntimeError("no database configured (AINode.DatabaseUrl)")
                self._db = Database(self._url, min_size=1, max_size=4, timeout=5)
                self._jobs = JobStore(self._db)
            return self._jobs

    def routes(self) -> list[Route]:
        if self._routes is None:
            from node.lesions.api import lesion_routes
            from node.store.lesions import LesionStore

            routes = [Route(method="GET", pattern=r"/ainode/health", handler=self._health)]
            routes += job_routes(self.jobs(), enqueue_study=self._enqueue_by_id)
            routes += lesion_routes(LesionStore(self._db))
            self._routes = routes
        return self._routes

    def _health(self, groups, query, body) -> Response:
        counts = self.jobs().counts()
        return json_response({"status": "ok", "jobs": counts, "pending_enqueues": len(self._pending)})

    # -- queueing -----------------------------------------------------------------------
    def _study_info(self, orthanc_study_id: str) -> dict[str, Any]:
        return json.loads(self._orthanc.RestApiGet(f"/studies/{orthanc_study_id}"))

    def _enqueue_by_id(self, orthanc_study_id: str) -> dict[str, Any]:
        info = self._study_info(orthanc_study_id)
        uid = _study_uid(info)
        queued = self.jobs().enqueue(orthanc_study_id, uid, max_attempts=self._max_attempts)
        return {"job_id": queued.job_id, "generation": queued.generation, "study_instance_uid": uid}

    def enqueue(self, orthanc_study_id: str) -> None:
        try:
            info = self._study_info(orthanc_study_id)
        except Exception as exc:  # the study was deleted meanwhile
            logger.warning("study %s vanished before it could be queued: %s", orthanc_study_id, exc)
            return
        uid = _study_uid(info)
        try:
            queued = self.jobs().enqueue(
                orthanc_study_id, uid, max_attempts=self._max_attempts, last_update=info.get("LastUpdate")
            )
        except Exception as exc:  # database down: keep the study, retry in the background
            with self._lock:
                self._pending.add(orthanc_study_id)
            logger.error(
                "study %s stays in Orthanc but is not queued yet (database unreachable: %s); retrying every %.0f s",
                uid, exc, RETRY_SECONDS,
            )
            return
        if queued is None:
            logger.info("study %s changed only by the node's own results; not queued again", uid)
        elif queued.created:
            logger.info("study %s queued as job %d", uid, queued.job_id)
        else:
            logger.info("study %s received again: job %d queued again", uid, queued.job_id)
        with self._lock:
            self._pending.discard(orthanc_study_id)

    def sweep(self, page: int = 500) -> int:
        """Queue every stored study that has no job (e.g. it became stable while the database was down)."""
        queued = 0
        since = 0
        while not self._stop.is_set():
            studies = json.loads(self._orthanc.RestApiGet(f"/studies?expand&since={since}&limit={page}"))
            for study in studies:
                uid = _study_uid(study)
                if self.jobs().enqueue_if_absent(study["ID"], uid, max_attempts=self._max_attempts):
                    queued += 1
            if len(studies) < page:
                break
            since += page
        if queued:
            logger.warning("start-up sweep: %d stored study(ies) had no job and were queued", queued)
        return queued

    def _publish_metrics(self) -> None:
        """Job counts as Orthanc metrics (its /tools/metrics-prometheus), e.g. ainode_jobs_queued."""
        try:
            counts = self.jobs().counts()
        except Exception:  # noqa: BLE001 - the database may be down; the error is logged elsewhere
            counts = {}
        try:
            for state, n in counts.items():
                self._orthanc.SetMetricsValue(f"ainode_jobs_{state}", float(n))
            self._orthanc.SetMetricsValue("ainode_pending_enqueues", float(len(self._pending)))
        except Exception:  # noqa: BLE001 - metrics are best effort
            pass

    def _retry_pending(self) -> None:
        try:
            self.sweep()
        except Exception as exc:  # database still down: the pending retries below take over
            logger.error("start-up sweep failed (%s); studies stay in Orthanc, `ainode rerun` queues one by hand", exc)
        while not self._stop.wait(RETRY_SECONDS):
            self._publish_metrics()
            with self._lock:
                pending = sorted(self._pending)
            for study_id in pending:
                if self._stop.is_set():
                    return
                self.enqueue(study_id)

    # -- Orthanc callbacks --------------------------------------------------------------
    def on_change(self, change_type: Any, level: Any, resource_id: str) -> None:
        ct = self._orthanc.ChangeType
        try:
            if change_type == ct.STABLE_STUDY:
                self.enqueue(resource_id)
            elif change_type == ct.ORTHANC_STARTED:
                self._retry_thread = threading.Thread(target=self._retry_pending, name="ainode-retry", daemon=True)
                self._retry_thread.start()
                logger.info("ainode plugin ready")
            elif change_type == ct.ORTHANC_STOPPED:
                self._stop.set()
                if self._db is not None:
                    self._db.close()
        except Exception:  # the Orthanc boundary: never let an exception reach Orthanc
            logger.exception("ainode plugin: change callback failed")

    def on_rest(self, output: Any, uri: str, **request: Any) -> None:
        method = request.get("method", "GET")
        query = {k: v for k, v in (request.get("get") or {}).items()}
        body = request.get("body") or b""
        try:
            routes = self.routes()
        except Exception as exc:  # database down
            response = json_response({"error": f"database unreachable: {exc}"}, 503)
        else:
            response = dispatch(routes, method, uri, query, body)
        if response.status == 200:
            output.AnswerBuffer(response.body, response.content_type)
        else:
            output.SetHttpHeader("Content-Type", response.content_type)
            output.SendHttpStatus(response.status, response.body)


def register(orthanc: Any, config: Mapping[str, Any]) -> PluginApp:
    """Register the node's callbacks with Orthanc; called once by orthanc/plugin.py."""
    node_logger = logging.getLogger("node")
    node_logger.setLevel(logging.INFO)
    node_logger.addHandler(OrthancLogHandler(orthanc))
    node_logger.propagate = False
    # Extension modules (numpy, Pillow) are imported here, on Orthanc's main thread: a first
    # import from an HTTP thread of the embedded interpreter crashed Orthanc.
    import node.lesions.api  # noqa: F401
    import node.store.lesions  # noqa: F401

    app = PluginApp(orthanc, config)
    orthanc.RegisterOnChangeCallback(app.on_change)
    orthanc.RegisterRestCallback("/ainode/.*", app.on_rest)
    if EXPLORER_JS.is_file():
        js = EXPLORER_JS.read_text().replace("__AINODE_VIEWER_URL__", str(config.get("ViewerUrl") or ""))
        orthanc.ExtendOrthancExplorer(js)
    return app
