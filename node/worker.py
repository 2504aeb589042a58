"""Workers: take a study's job with a lease, run the pipeline, store the results in Orthanc.

Many workers (processes, machines) share the queue. A failing job is retried with backoff and
then ends ``failed`` with its reason; a study the models cannot use ends ``skipped``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from node.config import Settings
from node.orthanc_client import OrthancClient, OrthancRefused
from node.pipeline import StudyOutcome, Tracking, analyze_datasets, study_date
from node.store.db import Database
from node.store.jobs import Job, JobState, JobStore

logger = logging.getLogger(__name__)


def worker_name(index: int = 0) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


class _Heartbeat:
    """Keeps a job's lease while it runs; says so when the lease was lost."""

    def __init__(self, jobs: JobStore, job: Job, worker: str, lease_seconds: int) -> None:
        self._jobs, self._job, self._worker, self._lease = jobs, job, worker, lease_seconds
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(max(1.0, self._lease / 3)):
            try:
                if not self._jobs.heartbeat(self._job, self._worker, lease_seconds=self._lease):
                    self.lost = True
                    return
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried next period
                logger.warning("job %d: lease renewal failed: %s", self._job.id, exc)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Worker:
    """One worker loop. ``analyzer`` and ``lesion_store`` are built once and reused per job."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        orthanc: OrthancClient,
        analyzer: Any,
        lesion_store: Any | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = JobStore(db)
        self.orthanc = orthanc
        self.analyzer = analyzer
        self.lesion_store = lesion_store
        self.name = name or worker_name()
        self._secret: bytes | None = None

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, max_jobs: int | None = None) -> int:
        done = 0
        logger.info("worker %s started", self.name)
        while not stop.is_set():
            try:
                job = self.jobs.claim(self.name, lease_seconds=self.settings.job_lease_seconds)
            except Exception as exc:  # database away: wait and try again
                logger.error("worker %s: cannot reach the job queue (%s); retrying", self.name, exc)
                stop.wait(5.0)
                continue
            if job is None:
                stop.wait(self.settings.worker_poll_seconds)
                continue
            self.process(job)
            done += 1
            if max_jobs is not None and done >= max_jobs:
                break
        logger.info("worker %s stopped after %d jobs", self.name, done)
        return done

    def run_once(self) -> Job | None:
        job = self.jobs.claim(self.name, lease_seconds=self.settings.job_lease_seconds)
        if job is not None:
            self.process(job)
        return job

    # -- one job ----------------------------------------------------------------------------
    def process(self, job: Job) -> None:
        started = time.perf_counter()
        stage = "fetch"
        log = {"job": job.id, "study": job.study_instance_uid}
        logger.info("job %(job)s: study %(study)s started", log)
        try:
            with _Heartbeat(self.jobs, job, self.name, self.settings.job_lease_seconds) as beat:
                t0 = time.perf_counter()
                try:
                    datasets = list(self.orthanc.iter_study_datasets(job.orthanc_study_id))
                except OrthancRefused as exc:
                    self._finish(job, JobState.FAILED, f"study no longer in Orthanc: {exc}", {}, {})
                    return
                fetch_s = time.perf_counter() - t0
                stage = "analyze"
                outcome = analyze_datasets(datasets, analyzer=self.analyzer, tracker=self._tracker())
                outcome.timings = {"fetch": fetch_s, **outcome.timings}
                if outcome.state == "skipped":
                    outcome.timings["total"] = time.perf_counter() - started
                    self._finish(job, JobState.SKIPPED, outcome.reason, outcome.timings, outcome.result_json())
                    return
                stage = "store"
                t0 = time.perf_counter()
                stored = [self.orthanc.store(ds) for ds in outcome.objects]
                # New results supersede the previous run's (a study sent again): no duplicates.
                superseded = [i for i in job.result.get("orthanc_instances", []) if i not in stored]
                for instance_id in superseded:
                    self.orthanc.delete_instance(instance_id)
                last_update = self.orthanc.study(job.orthanc_study_id).get("LastUpdate")
                self.jobs.mark_results_stored(job, last_update)
                outcome.timings["store"] = time.perf_counter() - t0
                outcome.timings["total"] = time.perf_counter() - started
                if beat.lost:
                    logger.warning("job %(job)s: lease lost while running; another worker took it", log)
                result = outcome.result_json() | {"orthanc_instances": stored}
                self._finish(job, JobState.DONE, _done_reason(outcome), outcome.timings, result)
        except Exception as exc:  # the job boundary: every failure becomes a retry or a failed row
            reason = f"{stage}: {type(exc).__name__}: {exc}"
            logger.exception("job %(job)s failed", log)
            self._retry_or_fail(job, reason)

    def _finish(self, job: Job, state: JobState, reason: str | None, timings: dict, result: dict) -> None:
        if self.jobs.finish(job, self.name, state, reason=reason, timings=timings, result=result):
            logger.info("job %d: %s%s (%.1f s)", job.id, state, f": {reason}" if reason else "", timings.get("total", 0.0))
        else:
            logger.info("job %d: study was sent again while running; the newer job will run", job.id)

    def _retry_or_fail(self, job: Job, reason: str) -> None:
        if job.attempts >= job.max_attempts:
            self._finish(job, JobState.FAILED, f"{reason} (after {job.attempts} attempts)", {}, {})
            return
        delay = self.settings.job_retry_base_seconds * (2 ** (job.attempts - 1))
        if self.jobs.retry_later(job, self.name, reason=reason, delay_seconds=delay):
            logger.warning("job %d: attempt %d failed, retry in %.0f s: %s", job.id, job.attempts, delay, reason)

    # -- tracking ---------------------------------------------------------------------------
    def _tracker(self):
        if self.lesion_store is None:
            return None
        from node.lesions.identity import load_secret, patient_key

        if self._secret is None:
            self._secret = load_secret(self.settings.data_dir)

        def track(volume, lesions, model_versions, source) -> Tracking:
            patient_id = str(getattr(source, "PatientID", "") or "")
            if not patient_id.strip():
                return Tracking(lesions=list(lesions), response=None, time_point=None)
            key = patient_key(
                patient_id=patient_id,
                issuer_of_patient_id=str(getattr(source, "IssuerOfPatientID", "") or "") or None,
                secret=self._secret,
            )
            tracked = self.lesion_store.record_study(
                patient_key=key,
                study_instance_uid=volume.study_instance_uid,
                study_date=study_date(source),
                series_instance_uid=volume.series_instance_uid,
                lesions=lesions,
                model_versions=model_versions,
                settings=self.settings,
            )
            return Tracking(lesions=tracked.lesions, response=tracked.response, time_point=tracked.time_point)

        return track


def _done_reason(outcome: StudyOutcome) -> str | None:
    notes = []
    if outcome.excluded:
        notes.append(f"{len(outcome.excluded)} lesion(s) left out of the objects")
    if outcome.problems:
        notes.append("; ".join(outcome.problems[:3]))
    return "; ".join(notes) or None


def build_worker(settings: Settings, *, index: int = 0) -> tuple[Worker, Database]:
    """A worker wired to the configured database, Orthanc and inference backend."""
    from node.inference.analyzer import Analyzer
    from node.inference.backend import open_backend
    from node.store.lesions import LesionStore

    if not settings.database_url:
        raise ValueError("database_url: the worker needs AINODE_DATABASE_URL (or `ainode up`)")
    if not settings.orthanc_url:
        raise ValueError("orthanc_url: the worker needs AINODE_ORTHANC_URL (or `ainode up`)")
    db = Database(settings.database_url)
    auth = (settings.orthanc_username, settings.orthanc_password) if settings.orthanc_username else None
    orthanc = OrthancClient(settings.orthanc_url, auth=auth)
    analyzer = Analyzer(open_backend(settings), detection_threshold=settings.detection_threshold, detector_zoom=settings.detector_zoom)
    worker = Worker(settings, db=db, orthanc=orthanc, analyzer=analyzer, lesion_store=LesionStore(db),
                    name=worker_name(index))
    return worker, db
