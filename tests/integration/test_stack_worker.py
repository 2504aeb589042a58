"""Worker failure handling on real Postgres and Orthanc: retries with backoff, then `failed` with the reason."""

from __future__ import annotations

import shutil
import time

import pytest

from node.config import Settings
from node.dicom.network import collect_files, send_files
from node.inference.analyzer import Analyzer
from node.inference.backend import TritonBackend
from node.orthanc_client import OrthancClient
from node.stack.orthanc import EmbeddedOrthanc, OrthancPorts
from node.stack.process import free_port
from node.store.db import Database
from node.store.jobs import JobState, JobStore
from node.worker import Worker

pytestmark = pytest.mark.integration


@pytest.fixture()
def orthanc(fresh_database_url: str, make_service_dir):
    root = make_service_dir("orthanc")
    server = EmbeddedOrthanc(root, ports=OrthancPorts(http=free_port(), dicom=free_port()),
                             database_url=fresh_database_url, stable_age=1, max_attempts=2)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_triton_down_retries_then_fails_with_reason(orthanc, fresh_database_url: str, tmp_path) -> None:
    database_url = fresh_database_url
    from node.synth.phantom import ScanParams, synthesize_study
    from node.synth.writer import write_ct_series

    study = synthesize_study(3, 0, scan=ScanParams(rows=96, columns=96, pixel_spacing=0.9, slice_thickness=5.0,
                                                   coverage="chest", num_slices=20), cohort_seed=5)
    write_ct_series(study, tmp_path)
    send_files(collect_files([tmp_path]), host="127.0.0.1", port=orthanc.ports.dicom, called_aet="AINODE")

    db = Database(database_url)
    jobs = JobStore(db)
    deadline = time.monotonic() + 60
    while jobs.get_by_study(study.study_instance_uid) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    settings = Settings(job_retry_base_seconds=0.5, job_lease_seconds=30)
    dead = TritonBackend(f"127.0.0.1:{free_port()}")
    worker = Worker(settings, db=db, orthanc=OrthancClient(orthanc.url), analyzer=Analyzer(dead), name="w-test")

    first = worker.run_once()
    assert first is not None and first.study_instance_uid == study.study_instance_uid
    retried = jobs.get(first.id)
    assert retried.state is JobState.QUEUED and retried.reason.startswith("analyze:")
    time.sleep(0.7)
    second = worker.run_once()
    assert second is not None and second.id == first.id
    failed = jobs.get(first.id)
    assert failed.state is JobState.FAILED
    assert "after 2 attempts" in failed.reason and "analyze:" in failed.reason
    events = [e["state"] for e in jobs.events(first.id)]
    assert events == ["queued", "running", "queued", "running", "failed"]
    # The study stays in Orthanc, visible and re-runnable.
    assert OrthancClient(orthanc.url).study(first.orthanc_study_id)
    db.close()
