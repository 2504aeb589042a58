"""The job queue on a real Postgres: enqueue, lease, re-send, retry, expiry."""

from __future__ import annotations

import time

import pytest

from node.store.db import Database, migrate
from node.store.jobs import JobState, JobStore

pytestmark = pytest.mark.integration


@pytest.fixture()
def jobs(fresh_database_url: str):
    db = Database(fresh_database_url)
    yield JobStore(db)
    db.close()


def test_migrate_is_idempotent(fresh_database_url: str) -> None:
    assert migrate(fresh_database_url) == []


def test_resent_study_requeues_without_duplicate(jobs: JobStore) -> None:
    first = jobs.enqueue("orthanc-1", "1.2.3")
    again = jobs.enqueue("orthanc-1", "1.2.3")
    assert first.created and not again.created
    assert first.job_id == again.job_id
    assert again.generation == first.generation + 1
    assert jobs.counts()["queued"] == 1


def test_claim_finish_and_generation_guard(jobs: JobStore) -> None:
    jobs.enqueue("orthanc-2", "1.2.4")
    job = jobs.claim("w1", lease_seconds=60)
    assert job is not None and job.state is JobState.RUNNING and job.attempts == 1
    assert jobs.claim("w2", lease_seconds=60) is None
    # The study arrives again while it runs: the running result must not mark it done.
    jobs.enqueue("orthanc-2", "1.2.4")
    assert not jobs.finish(job, "w1", JobState.DONE, timings={"total": 1.0})
    again = jobs.claim("w2", lease_seconds=60)
    assert again is not None and again.id == job.id
    assert jobs.finish(again, "w2", JobState.DONE, timings={"total": 2.0}, result={"objects": 1})
    done = jobs.get(job.id)
    assert done.state is JobState.DONE and done.timings == {"total": 2.0}
    states = [e["state"] for e in jobs.events(job.id)]
    assert states[0] == "queued" and states[-1] == "done"


def test_expired_lease_is_taken_again_then_fails(jobs: JobStore) -> None:
    jobs.enqueue("orthanc-3", "1.2.5", max_attempts=2)
    first = jobs.claim("dead-worker", lease_seconds=1)
    assert first is not None
    time.sleep(1.2)
    second = jobs.claim("w2", lease_seconds=1)
    assert second is not None and second.id == first.id and second.attempts == 2
    assert not jobs.heartbeat(first, "dead-worker", lease_seconds=5)
    time.sleep(1.2)
    assert jobs.claim("w3", lease_seconds=1) is None
    failed = jobs.get(first.id)
    assert failed.state is JobState.FAILED and "lease expired" in failed.reason


def test_retry_later_then_requeue(jobs: JobStore) -> None:
    jobs.enqueue("orthanc-4", "1.2.6")
    job = jobs.claim("w1", lease_seconds=60)
    assert jobs.retry_later(job, "w1", reason="triton down", delay_seconds=3600)
    assert jobs.claim("w1", lease_seconds=60) is None
    assert jobs.get(job.id).reason == "triton down"
    assert jobs.requeue(job.id)
    assert jobs.claim("w1", lease_seconds=60) is not None


def test_own_results_do_not_requeue(jobs: JobStore) -> None:
    jobs.enqueue("orthanc-5", "1.2.7", last_update="20260101T000000")
    job = jobs.claim("w1", lease_seconds=60)
    jobs.mark_results_stored(job, "20260101T000009")
    assert jobs.finish(job, "w1", JobState.DONE)
    assert jobs.enqueue("orthanc-5", "1.2.7", last_update="20260101T000009") is None
    assert jobs.get(job.id).state is JobState.DONE
    assert jobs.enqueue("orthanc-5", "1.2.7", last_update="20260101T000100") is not None
    assert jobs.get(job.id).state is JobState.QUEUED
