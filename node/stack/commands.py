"""`ainode up | down | status | send | worker | jobs | rerun | db migrate | demo`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

from node.cli import CommandError
from node.config import Settings
from node.stack.process import ServiceError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start Postgres, Triton, Orthanc (+ plugin, DICOMweb), workers and the viewer")
    p.add_argument("--workers", type=int, default=None, help="number of worker processes (default: settings.workers)")
    p.add_argument("--no-viewer", action="store_true", help="do not serve OHIF")
    p.set_defaults(func=cmd_up)

    p = subparsers.add_parser("down", help="stop everything `ainode up` started")
    p.set_defaults(func=cmd_down)

    p = subparsers.add_parser("status", help="health of each service, queue depth, jobs by state, last errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("send", help="send DICOM files or folders over C-STORE")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: the running node's DICOM port")
    p.add_argument("--aet", default=None, help="called AE title (default: the node's)")
    p.add_argument("--calling-aet", default="AINODE_SCU")
    p.set_defaults(func=cmd_send)

    p = subparsers.add_parser("worker", help="run one worker in the foreground (what `up` starts N of)")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--max-jobs", type=int, default=None, help="stop after this many jobs")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("viewer", help="serve OHIF in the foreground, /dicom-web proxied to Orthanc (what `up` starts)")
    p.add_argument("--port", type=int, default=None, help="default: settings.viewer_port")
    p.add_argument("--orthanc", default=None, help="Orthanc REST root (default: the running node's)")
    p.set_defaults(func=cmd_viewer)

    p = subparsers.add_parser("jobs", help="list jobs (newest first), or show one with its history")
    p.add_argument("job", nargs="?", type=int, help="a job id to show")
    p.add_argument("--state", default=None, choices=["queued", "running", "done", "failed", "skipped"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = subparsers.add_parser("rerun", help="queue a study again (by job id, Orthanc study id or Study Instance UID)")
    p.add_argument("key")
    p.set_defaults(func=cmd_rerun)

    p = subparsers.add_parser("db", help="database maintenance")
    inner = p.add_subparsers(dest="db_command", required=True)
    m = inner.add_parser("migrate", help="apply the migrations in sql/migrations (idempotent)")
    m.set_defaults(func=cmd_db_migrate)

    p = subparsers.add_parser("demo", help="bring the stack up, send a synthetic baseline and follow-up, follow their jobs")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--patient", type=int, default=1, help="synthetic patient seed")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each study")
    p.set_defaults(func=cmd_demo)


# -- up / down / status --------------------------------------------------------------------
def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from node.stack.services import up

    try:
        state = up(settings, workers=args.workers, viewer=not args.no_viewer)
    except ServiceError as exc:
        raise CommandError(str(exc)) from None
    _print_urls(state)
    return 0


def _print_urls(state) -> None:
    print()
    print(f"  Orthanc Explorer  {state.orthanc_url}/app/explorer.html")
    print(f"  DICOMweb          {state.dicomweb_url}")
    if state.orthanc_dicom_port:
        print(f"  DICOM (C-STORE)   {state.orthanc_aet}@127.0.0.1:{state.orthanc_dicom_port}")
    print(f"  Jobs (JSON)       {state.orthanc_url}/ainode/jobs")
    print(f"  Triton (gRPC)     {state.triton_url}")
    if state.viewer_url:
        print(f"  Viewer (OHIF)     {state.viewer_url}")
    print("  stop with `ainode down`")


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from node.stack.services import down

    if not down(settings):
        print("nothing was running")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from node.stack.services import status

    report = status(settings)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        for name, info in report["services"].items():
            mark = "ok  " if info.get("ok") else "DOWN"
            detail = {k: v for k, v in info.items() if k != "ok"}
            print(f"{mark} {name:9s} " + ", ".join(f"{k}={v}" for k, v in detail.items()))
        if report["jobs"] is not None:
            jobs = report["jobs"]
            print("jobs      " + ", ".join(f"{k} {v}" for k, v in jobs.items()) + f"  (queue depth {jobs.get('queued', 0)})")
        for err in report["last_errors"]:
            print(f"  job {err['id']} [{err['state']}] study {err['study_instance_uid']}: {err['reason']}")
    return 0 if all(s.get("ok") for s in report["services"].values()) else 1


# -- send ----------------------------------------------------------------------------------
def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from node.dicom.network import SendError, collect_files, send_files
    from node.stack.services import load_state

    state = load_state(settings)
    port = args.port or (state.orthanc_dicom_port if state else None) or settings.orthanc_dicom_port
    aet = args.aet or (state.orthanc_aet if state else settings.orthanc_aet)
    try:
        files = collect_files(args.paths)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    if not files:
        raise CommandError("no files to send")
    with tqdm(total=len(files), unit="inst", desc=f"C-STORE to {aet}@{args.host}:{port}") as bar:
        try:
            report = send_files(files, host=args.host, port=port, called_aet=aet, calling_aet=args.calling_aet,
                                progress=bar.update)
        except SendError as exc:
            raise CommandError(str(exc)) from None
    print(f"sent {report.sent} instance(s) in {report.seconds:.1f} s ({report.rate:.0f}/s)"
          + (f", {len(report.failed)} failed" if report.failed else "")
          + (f", {len(report.skipped)} not DICOM" if report.skipped else ""))
    for path, reason in (report.failed + report.skipped)[:10]:
        print(f"  {path}: {reason}")
    return 0 if not report.failed else 1


# -- worker / jobs -------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from node.worker import build_worker

    worker, db = build_worker(settings, index=args.index)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        worker.run(stop, max_jobs=args.max_jobs)
    finally:
        db.close()
    return 0


def cmd_viewer(args: argparse.Namespace, settings: Settings) -> int:
    from node.stack.viewer import DEFAULT_DIST_DIR, ViewerServer

    orthanc = args.orthanc or settings.orthanc_url
    if not orthanc:
        raise CommandError("no Orthanc: run `ainode up` or pass --orthanc http://host:8042")
    auth = (settings.orthanc_username, settings.orthanc_password) if settings.orthanc_username else None
    try:
        server = ViewerServer(DEFAULT_DIST_DIR, orthanc.rstrip("/") + "/dicom-web",
                              args.port if args.port is not None else settings.viewer_port, auth)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"OHIF at {server.url} (DICOMweb from {orthanc}); Ctrl-C stops", flush=True)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


def _jobs_store(settings: Settings):
    from node.store.db import Database, DatabaseUnavailable
    from node.store.jobs import JobStore

    if not settings.database_url:
        raise CommandError("no database: run `ainode up` or set AINODE_DATABASE_URL")
    try:
        db = Database(settings.database_url, timeout=5)
    except DatabaseUnavailable as exc:
        raise CommandError(str(exc)) from None
    return JobStore(db), db


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from node.store.jobs import JobState

    jobs, db = _jobs_store(settings)
    try:
        if args.job is not None:
            job = jobs.get(args.job)
            if job is None:
                raise CommandError(f"no job {args.job}")
            data = dict(job.to_json(), events=jobs.events(job.id))
            if args.json:
                print(json.dumps(data, indent=1))
            else:
                print(f"job {job.id}  {job.state}  study {job.study_instance_uid}  attempts {job.attempts}/{job.max_attempts}")
                if job.reason:
                    print(f"  reason: {job.reason}")
                if job.timings:
                    print("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in job.timings.items()))
                for line in job.result.get("summary", []):
                    print(f"  {line}")
                for ev in data["events"]:
                    print(f"  {ev['at'][:19]}  {ev['state']:8s} {ev['message'] or ''}")
            return 0
        items = jobs.list(state=JobState(args.state) if args.state else None, limit=args.limit)
        if args.json:
            print(json.dumps([j.to_json() for j in items], indent=1))
            return 0
        for job in items:
            total = job.timings.get("total")
            print(f"{job.id:5d}  {job.state:8s} {job.study_instance_uid or job.orthanc_study_id}"
                  + (f"  {total:.1f}s" if total else "") + (f"  {job.reason}" if job.reason else ""))
        return 0
    finally:
        db.close()


def cmd_rerun(args: argparse.Namespace, settings: Settings) -> int:
    jobs, db = _jobs_store(settings)
    try:
        job = jobs.get(int(args.key)) if args.key.isdigit() else jobs.get_by_study(args.key)
        if job is None or not jobs.requeue(job.id):
            raise CommandError(f"no job for {args.key}; `ainode jobs` lists them")
        print(f"job {job.id} queued again")
    finally:
        db.close()
    return 0


def cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from node.store.db import DatabaseUnavailable, migrate

    if not settings.database_url:
        raise CommandError("no database: set AINODE_DATABASE_URL or run `ainode up` (which migrates)")
    try:
        applied = migrate(settings.database_url)
    except DatabaseUnavailable as exc:
        raise CommandError(str(exc)) from None
    print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "; database is up to date"))
    return 0


# -- demo ----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from node.stack.demo import run_demo

    return run_demo(settings, workers=args.workers, patient=args.patient, timeout=args.timeout)
