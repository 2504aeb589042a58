"""The durable job queue: one job per study, leased by workers, in Postgres."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from node.store.db import Database, load_queries


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, kw_only=True)
class Job:
    id: int
    orthanc_study_id: str
    study_instance_uid: str | None
    state: JobState
    generation: int
    attempts: int
    max_attempts: int
    reason: str | None
    timings: Mapping[str, float] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)
    lease_owner: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        return cls(
            id=row["id"],
            orthanc_study_id=row["orthanc_study_id"],
            study_instance_uid=row["study_instance_uid"],
            state=JobState(row["state"]),
            generation=row["generation"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            reason=row["reason"],
            timings=row["timings"] or {},
            result=row["result"] or {},
            lease_owner=row["lease_owner"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
        out["state"] = str(self.state)
        out["timings"] = dict(self.timings)
        out["result"] = dict(self.result)
        return out


@dataclass(frozen=True, kw_only=True)
class Enqueued:
    job_id: int
    generation: int
    created: bool


class JobStore:
    """Every query on the jobs tables."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._q = load_queries("jobs")

    def enqueue(
        self,
        orthanc_study_id: str,
        study_instance_uid: str | None,
        *,
        max_attempts: int = 3,
        last_update: str | None = None,
    ) -> Enqueued | None:
        """Queue a study (again). None when the study only changed by the node's own results.

        ``last_update`` is Orthanc's LastUpdate of the study; when it equals the value the worker
        recorded right after storing its results, the change is the node's own and is ignored.
        """
        with self._db.connection() as conn:
            row = conn.execute(
                self._q["enqueue"],
                {
                    "orthanc_study_id": orthanc_study_id,
                    "study_instance_uid": study_instance_uid,
                    "max_attempts": max_attempts,
                    "last_update": last_update,
                },
            ).fetchone()
            if row is None:
                return None
            message = "received" if row["created"] else "received again: re-queued"
            conn.execute(self._q["add_event"], {"job_id": row["id"], "state": "queued", "message": message})
        return Enqueued(job_id=row["id"], generation=row["generation"], created=row["created"])

    def enqueue_if_absent(self, orthanc_study_id: str, study_instance_uid: str | None, *, max_attempts: int = 3) -> bool:
        """Queue a study that has no job yet; True when a job was created."""
        with self._db.connection() as conn:
            row = conn.execute(
                self._q["enqueue_if_absent"],
                {"orthanc_study_id": orthanc_study_id, "study_instance_uid": study_instance_uid, "max_attempts": max_attempts},
            ).fetchone()
            if row is not None:
                conn.execute(self._q["add_event"], {"job_id": row["id"], "state": "queued", "message": "found by the start-up sweep"})
        return row is not None

    def claim(self, worker: str, *, lease_seconds: int) -> Job | None:
        with self._db.connection() as conn:
            for row in conn.execute(self._q["fail_exhausted"]).fetchall():
                conn.execute(self._q["add_event"], {"job_id": row["id"], "state": "failed", "message": "lease expired too often"})
            row = conn.execute(self._q["claim"], {"worker": worker, "lease_seconds": lease_seconds}).fetchone()
            if row is None:
                return None
            conn.execute(
                self._q["add_event"],
                {"job_id": row["id"], "state": "running", "message": f"attempt {row['attempts']} by {worker}"},
            )
        return Job.from_row(row)

    def heartbeat(self, job: Job, worker: str, *, lease_seconds: int) -> bool:
        with self._db.connection() as conn:
            row = conn.execute(self._q["heartbeat"], {"id": job.id, "worker": worker, "lease_seconds": lease_seconds}).fetchone()
        return row is not None

    def finish(
        self,
        job: Job,
        worker: str,
        state: JobState,
        *,
        reason: str | None = None,
        timings: Mapping[str, float] | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> bool:
        """End a job; False when it was re-queued (study sent again) or its lease was lost meanwhile."""
        with self._db.connection() as conn:
            row = conn.execute(
                self._q["finish"],
                {
                    "id": job.id,
                    "worker": worker,
                    "generation": job.generation,
                    "state": str(state),
                    "reason": reason,
                    "timings": Jsonb(dict(timings or {})),
                    "result": Jsonb(dict(result or {})),
                },
            ).fetchone()
            if row is not None:
                conn.execute(self._q["add_event"], {"job_id": job.id, "state": str(state), "message": reason})
        return row is not None

    def retry_later(self, job: Job, worker: str, *, reason: str, delay_seconds: float) -> bool:
        with self._db.connection() as conn:
            row = conn.execute(
                self._q["retry_later"],
                {"id": job.id, "worker": worker, "generation": job.generation, "reason": reason, "delay_seconds": delay_seconds},
            ).fetchone()
            if row is not None:
                conn.execute(
                    self._q["add_event"],
                    {"job_id": job.id, "state": "queued", "message": f"retry in {delay_seconds:.0f} s: {reason}"},
                )
        return row is not None

    def mark_results_stored(self, job: Job, last_update: str | None) -> None:
        with self._db.connection() as conn:
            conn.execute(self._q["mark_results_stored"], {"id": job.id, "last_update": last_update})

    def requeue(self, job_id: int) -> bool:
        with self._db.connection() as conn:
            row = conn.execute(self._q["requeue"], {"id": job_id}).fetchone()
            if row is not None:
                conn.execute(self._q["add_event"], {"job_id": job_id, "state": "queued", "message": "re-run requested"})
        return row is not None

    def get(self, job_id: int) -> Job | None:
        with self._db.connection() as conn:
            row = conn.execute(self._q["get"], {"id": job_id}).fetchone()
        return Job.from_row(row) if row else None

    def get_by_study(self, key: str) -> Job | None:
        """The job of a study, by Orthanc study id or Study Instance UID."""
        with self._db.connection() as conn:
            row = conn.execute(self._q["get_by_study"], {"key": key}).fetchone()
        return Job.from_row(row) if row else None

    def events(self, job_id: int) -> list[dict[str, Any]]:
        with self._db.connection() as conn:
            rows = conn.execute(self._q["events"], {"id": job_id}).fetchall()
        return [{"at": r["at"].isoformat(), "state": r["state"], "message": r["message"]} for r in rows]

    def list(self, *, state: JobState | None = None, limit: int = 50) -> list[Job]:
        with self._db.connection() as conn:
            rows = conn.execute(self._q["list"], {"state": str(state) if state else None, "limit": limit}).fetchall()
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._db.connection() as conn:
            rows = conn.execute(self._q["counts"]).fetchall()
        counts = {str(s): 0 for s in JobState}
        counts.update({r["state"]: r["n"] for r in rows})
        return counts

    def last_errors(self, limit: int = 5) -> list[dict[str, Any]]:
        with self._db.connection() as conn:
            rows = conn.execute(self._q["last_errors"], {"limit": limit}).fetchall()
        return [dict(r, updated_at=r["updated_at"].isoformat()) for r in rows]
