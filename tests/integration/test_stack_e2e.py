"""End to end on the real stack: C-STORE a CT study in, read the result back over DICOMweb."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from node.config import REPO_ROOT, Settings
from node.dicom.network import collect_files, send_files
from node.stack import services
from node.stack.process import ServiceError, free_port
from node.store.db import Database
from node.store.jobs import JobStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(make_service_dir):
    data_dir = make_service_dir("stack")
    settings = Settings(
        data_dir=data_dir, orthanc_http_port=0, orthanc_dicom_port=0, triton_grpc_port=0,
        triton_http_port=0, triton_metrics_port=0, viewer_port=0, workers=1, stable_age_seconds=2,
        job_retry_base_seconds=1.0,
    )
    state = services.up(settings, workers=1, viewer=False, progress=lambda line: None)
    db = Database(state.database_url)
    yield settings, state, JobStore(db)
    db.close()
    services.down(settings, progress=lambda line: None)
    # Keep the services' logs (no PHI: tested below) for whoever looks into a failed run.
    if (data_dir / "logs").is_dir():
        shutil.copytree(data_dir / "logs", REPO_ROOT / ".ainode" / "test-artifacts" / "stack_e2e_logs", dirs_exist_ok=True)
    shutil.rmtree(data_dir, ignore_errors=True)


def wait_for_job(jobs: JobStore, study_uid: str, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = jobs.get_by_study(study_uid)
        if job is not None:
            if not seen or seen[-1] != str(job.state):
                seen.append(str(job.state))
            if str(job.state) in ("done", "failed", "skipped"):
                return job, seen
        time.sleep(0.3)
    raise AssertionError(f"job for {study_uid} did not end in {timeout} s; states seen {seen}")


@pytest.fixture(scope="module")
def ct_study(tmp_path_factory: pytest.TempPathFactory):
    from node.synth.phantom import ScanParams, synthesize_study
    from node.synth.writer import write_ct_series

    study = synthesize_study(7, 0, scan=ScanParams(rows=256, columns=256, pixel_spacing=0.98, slice_thickness=5.0, coverage="chest"), cohort_seed=11)
    folder = tmp_path_factory.mktemp("ct")
    write_ct_series(study, folder)
    return study, folder


def test_ct_study_comes_back_with_a_result(stack, ct_study) -> None:
    settings, state, jobs = stack
    study, folder = ct_study
    report = send_files(collect_files([folder]), host="127.0.0.1", port=state.orthanc_dicom_port,
                        called_aet=state.orthanc_aet)
    assert report.sent == len(list(folder.iterdir())) and not report.failed
    job, seen = wait_for_job(jobs, study.study_instance_uid)
    assert str(job.state) == "done", job.reason
    assert {"fetch", "assemble", "inference", "outputs", "store", "total"} <= set(job.timings)
    assert job.result["objects"], job.result

    client = DICOMwebClient(url=state.dicomweb_url)
    series = client.search_for_series(study.study_instance_uid)
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    assert "CT" in modalities and "SR" in modalities
    sr_series = next(s for s in series if s["00080060"]["Value"][0] == "SR")
    instances = client.retrieve_series(study.study_instance_uid, sr_series["0020000E"]["Value"][0])
    sr = instances[0]
    assert sr.StudyInstanceUID == study.study_instance_uid
    assert sr.PatientID == study.patient_id
    referenced = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for ev in sr.CurrentRequestedProcedureEvidenceSequence
                  for s in ev.ReferencedSeriesSequence for item in [s]
                  if "ReferencedSOPSequence" in s}
    assert referenced, "the SR must reference the source images"

    # The node's own results do not queue the study again.
    time.sleep(settings.stable_age_seconds + 3)
    after = jobs.get(job.id)
    assert str(after.state) == "done" and after.generation == job.generation

    # The API on Orthanc's port shows the job.
    api = requests.get(f"{state.orthanc_url}/ainode/jobs/{job.id}", timeout=10).json()
    assert api["state"] == "done" and [e["state"] for e in api["events"]][:2] == ["queued", "running"]


def test_study_sent_again_is_requeued_not_duplicated(stack, ct_study) -> None:
    settings, state, jobs = stack
    study, folder = ct_study
    first, _ = wait_for_job(jobs, study.study_instance_uid)
    send_files(collect_files([folder])[:3], host="127.0.0.1", port=state.orthanc_dicom_port, called_aet=state.orthanc_aet)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and jobs.get(first.id).generation == first.generation:
        time.sleep(0.3)
    job, _ = wait_for_job(jobs, study.study_instance_uid)
    assert job.id == first.id and job.generation > first.generation
    assert str(job.state) == "done"
    # The new results replaced the old ones: one SR series in the study, not two.
    client = DICOMwebClient(url=state.dicomweb_url)
    srs = [s for s in client.search_for_series(study.study_instance_uid) if s["00080060"]["Value"][0] == "SR"]
    assert len(srs) == 1
    assert set(job.result["orthanc_instances"]).isdisjoint(first.result["orthanc_instances"])
    assert len([j for j in jobs.list(limit=100) if j.study_instance_uid == study.study_instance_uid]) == 1


def test_non_ct_study_is_skipped_with_reason(stack, tmp_path: Path) -> None:
    settings, state, jobs = stack
    from pydicom.data import get_testdata_file

    dx = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    dx.StudyInstanceUID = pydicom.uid.generate_uid()
    dx.SeriesInstanceUID = pydicom.uid.generate_uid()
    dx.SOPInstanceUID = pydicom.uid.generate_uid()
    dx.file_meta.MediaStorageSOPInstanceUID = dx.SOPInstanceUID
    path = tmp_path / "mr.dcm"
    dx.save_as(path)
    send_files([path], host="127.0.0.1", port=state.orthanc_dicom_port, called_aet=state.orthanc_aet)
    job, _ = wait_for_job(jobs, dx.StudyInstanceUID)
    assert str(job.state) == "skipped"
    assert "CT" in job.reason


def test_port_taken_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        settings = Settings(data_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none", workers=0)
        with pytest.raises(ServiceError, match="postgres: .* is unreachable"):
            services.up(settings, viewer=False, progress=lambda line: None)
        from node.stack.orthanc import EmbeddedOrthanc, OrthancPorts

        orthanc = EmbeddedOrthanc(tmp_path / "o", ports=OrthancPorts(http=taken, dicom=free_port()), with_plugin=False)
        with pytest.raises(ServiceError, match=f"orthanc: orthanc http port {taken} is already taken"):
            orthanc.start()


def test_stow_rs_study_is_processed(stack, tmp_path: Path) -> None:
    """DICOMweb STOW-RS into Orthanc queues the study like C-STORE does."""
    settings, state, jobs = stack
    from node.synth.phantom import ScanParams, synthesize_study
    from node.synth.writer import write_ct_series

    study = synthesize_study(8, 0, scan=ScanParams(rows=128, columns=128, pixel_spacing=0.9, slice_thickness=5.0,
                                                   coverage="chest", num_slices=24), cohort_seed=11)
    files = write_ct_series(study, tmp_path)
    client = DICOMwebClient(url=state.dicomweb_url)
    client.store_instances([pydicom.dcmread(f) for f in files])
    job, _ = wait_for_job(jobs, study.study_instance_uid)
    assert str(job.state) in ("done", "skipped"), job.reason
    assert job.attempts == 1


def test_no_phi_in_logs(stack, ct_study) -> None:
    """Patient name, ID and birth date never reach the node's logs (after the studies above ran)."""
    settings, state, jobs = stack
    study, folder = ct_study
    ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    secrets = [s for s in (str(ds.PatientName), str(ds.PatientID), str(ds.get("PatientBirthDate", ""))) if len(s) >= 4]
    assert len(secrets) >= 2
    logs = list((Path(settings.data_dir) / "logs").glob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{secret!r} found in {log.name}"
