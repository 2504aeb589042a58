"""`ainode demo`: the stack up, a synthetic patient's baseline and follow-up sent over C-STORE,
their jobs followed from queued to done, and where to look at the results."""

from __future__ import annotations

import time
from pathlib import Path

from node.cli import CommandError
from node.config import Settings
from node.stack.process import ServiceError

DEMO_SCAN = dict(rows=512, columns=512, pixel_spacing=0.78, slice_thickness=5.0, coverage="chest_abdomen_pelvis")


def write_demo_studies(out_dir: Path, patient: int) -> list[tuple[str, Path]]:
    """A baseline and a follow-up of one synthetic patient, as DICOM folders (written once per
    synthetic cohort version: a newer generator writes them afresh)."""
    from node.synth.lesions import COHORT_VERSION
    from node.synth.phantom import ScanParams, synthesize_study
    from node.synth.writer import write_ct_series

    studies = []
    for timepoint in (0, 1):
        folder = out_dir / f"cohort-v{COHORT_VERSION}" / f"patient{patient:03d}" / f"t{timepoint}"
        marker = folder / ".complete"
        if not marker.exists():
            study = synthesize_study(patient, timepoint, scan=ScanParams(**DEMO_SCAN), cohort_seed=2026)
            folder.mkdir(parents=True, exist_ok=True)
            write_ct_series(study, folder)
            marker.write_text(study.study_instance_uid)
        studies.append((marker.read_text().strip(), folder))
    return studies


def follow_job(jobs, study_uid: str, timeout: float, *, before: object | None = None) -> object:
    """Print each event of the study's job (queued, running, done ...) until it ends; return the job.

    ``before`` is the study's job as it was before this send (a study sent again): its earlier
    events are not printed, and the job is followed once it is queued again, not taken as done.
    """
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    printed = len(jobs.events(before.id)) if before is not None else 0
    waiting_said = False
    while time.monotonic() < deadline:
        job = jobs.get_by_study(study_uid)
        if job is None or (before is not None and job.generation == before.generation):
            if not waiting_said:
                again = " again (it was sent before)" if before is not None else ""
                print(f"  waiting for Orthanc to call the study stable{again} ...", flush=True)
                waiting_said = True
        else:
            events = jobs.events(job.id)
            for event in events[printed:]:
                message = f" ({event['message']})" if event["message"] else ""
                print(f"  [{time.monotonic() - start:5.1f} s] job {job.id}: {event['state']}{message}", flush=True)
            printed = len(events)
            if str(job.state) in ("done", "failed", "skipped"):
                return job
        time.sleep(0.25)
    raise CommandError(f"study {study_uid} did not finish within {timeout:.0f} s; `ainode status` and the logs in .ainode/logs say why")


def run_demo(settings: Settings, *, workers: int | None, patient: int, timeout: float) -> int:
    from node.dicom.network import collect_files, send_files
    from node.stack.services import load_state, up
    from node.store.db import Database
    from node.store.jobs import JobStore

    state = load_state(settings)
    if state is None:
        print("Starting the stack (first start takes a few seconds per service)")
        try:
            state = up(settings, workers=workers)
        except ServiceError as exc:
            raise CommandError(str(exc)) from None
    else:
        print(f"Using the running stack ({state.orthanc_url})")
    if not state.orthanc_dicom_port:
        raise CommandError("the demo sends over C-STORE to the embedded Orthanc; unset AINODE_ORTHANC_URL")

    print("Writing a synthetic patient's baseline and follow-up CT (synthetic data, not a real patient)")
    studies = write_demo_studies(settings.data_dir.resolve() / "demo", patient)
    db = Database(state.database_url)
    jobs = JobStore(db)
    try:
        for label, (uid, folder) in zip(("baseline", "follow-up"), studies, strict=True):
            files = collect_files([folder])
            before = jobs.get_by_study(uid)
            print(f"\nSending the {label} ({len(files)} CT slices) to {state.orthanc_aet}@127.0.0.1:{state.orthanc_dicom_port}")
            report = send_files(files, host="127.0.0.1", port=state.orthanc_dicom_port, called_aet=state.orthanc_aet)
            print(f"  sent {report.sent} in {report.seconds:.1f} s ({report.rate:.0f}/s)")
            job = follow_job(jobs, uid, timeout, before=before)
            _print_result(state, job, uid)
            if str(job.state) != "done":
                return 1
    finally:
        db.close()
    print("\nThe stack keeps running so you can look; `ainode down` stops it.")
    return 0


def _print_result(state, job, uid: str) -> None:
    result = job.result or {}
    print(f"  {job.state}" + (f": {job.reason}" if job.reason else ""))
    if job.timings:
        print("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in job.timings.items() if "." not in k))
    for line in result.get("summary", []):
        print(f"    {line}")
    if result.get("response"):
        print(f"  RECIST 1.1 response: {result['response']}")
    print(f"  Orthanc Explorer: {state.orthanc_url}/app/explorer.html#study?uuid={job.orthanc_study_id}")
    print(f"  DICOMweb:         {state.dicomweb_url}/studies/{uid}/series")
    print(f"  Job (JSON):       {state.orthanc_url}/ainode/jobs/{job.id}")
    print(f"  Lesions (JSON):   {state.orthanc_url}/ainode/studies/{uid}/lesions")
    if state.viewer_url:
        print(f"  Viewer:           {state.viewer_url}/viewer?StudyInstanceUIDs={uid}")
