"""`ainode tracks PATIENT` and `ainode similar LESION`: the lesion graph from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from node.config import Settings
from node.lesions.identity import load_secret, patient_key
from node.lesions.plot import track_chart_png
from node.lesions.records import LesionType
from node.lesions.retrieval import similar_lesions
from node.store.db import Database, DatabaseUnavailable
from node.store.lesions import LesionStore


def register(subparsers: argparse._SubParsersAction) -> None:
    tracks = subparsers.add_parser("tracks", help="a patient's lesion tracks, measurements over time and RECIST responses")
    tracks.add_argument("patient", help="Patient ID as in the DICOM header (hashed locally), or a key with --key")
    tracks.add_argument("--issuer", default=None, help="Issuer of Patient ID, when the PACS sets one")
    tracks.add_argument("--key", action="store_true", help="PATIENT is already the pseudonymous key")
    tracks.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tracks.add_argument("--png", type=Path, default=None, help="also write the chart to this PNG file")
    tracks.set_defaults(func=run_tracks)

    similar = subparsers.add_parser("similar", help="the lesions of other patients most similar to a lesion")
    similar.add_argument("lesion", type=int, help="lesion id (from `ainode tracks` or the API)")
    similar.add_argument("-k", type=int, default=10, help="how many (default 10)")
    similar.add_argument("--type", choices=[t.value for t in LesionType], default=None)
    similar.add_argument("--site", default=None)
    similar.add_argument("--min-mm", type=float, default=None, help="smallest long axis")
    similar.add_argument("--max-mm", type=float, default=None, help="largest long axis")
    similar.add_argument("--json", action="store_true", help="print JSON instead of a table")
    similar.set_defaults(func=run_similar)


def _store(settings: Settings) -> LesionStore:
    from node.cli import CommandError

    if not settings.database_url:
        raise CommandError("no database: set AINODE_DATABASE_URL (or database_url in ainode.toml), or start the node with `ainode up`")
    try:
        return LesionStore(Database(settings.database_url, max_size=2))
    except DatabaseUnavailable as exc:
        raise CommandError(str(exc)) from None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_tracks(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli import CommandError

    key = args.patient if args.key else patient_key(
        patient_id=args.patient, issuer_of_patient_id=args.issuer, secret=load_secret(settings.data_dir)
    )
    store = _store(settings)
    try:
        data = store.patient_tracks(key)
    finally:
        store.db.close()
    if data is None:
        raise CommandError("no lesions recorded for that patient (check the Patient ID and --issuer)")
    if args.png is not None:
        args.png.write_bytes(track_chart_png(data))
    if args.json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    print(f"patient key {key}")
    for track in data["tracks"]:
        print(f"{track['tracking_id'] or '(untracked)'}  {track['tracking_uid'] or ''}")
        for les in track["lesions"]:
            flags = f"  [{', '.join(les['flags'])}]" if les["flags"] else ""
            print(
                f"  lesion {les['lesion_id']:>6}  {les['time_point'] or '':<12} {les['study_date'] or '':<10}  "
                f"{les['lesion_type']:<11} long {_fmt(les['long_axis_mm'])} mm  short {_fmt(les['short_axis_mm'])} mm  "
                f"volume {_fmt(les['volume_mm3'], 0)} mm3{flags}"
            )
    for r in data["responses"]:
        change = _fmt(r["change_from_baseline_pct"])
        print(f"{r['time_point']:<12} {r['category']:<8} sum {_fmt(r['sum_of_diameters_mm'])} mm  from baseline {change} %"
              f"  new lesions {'yes' if r['new_lesions'] else 'no'}")
    return 0


def run_similar(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli import CommandError

    store = _store(settings)
    try:
        hits = similar_lesions(
            store, args.lesion, k=args.k, lesion_type=args.type, site=args.site, min_mm=args.min_mm, max_mm=args.max_mm
        )
    except LookupError as exc:
        raise CommandError(f"{exc}; pick a lesion id from `ainode tracks`") from None
    finally:
        store.db.close()
    if args.json:
        print(json.dumps(hits, indent=1, default=str))
        return 0
    for h in hits:
        print(f"lesion {h['lesion_id']:>8}  distance {h['distance']:.3f}  {h['lesion_type']:<11} "
              f"long {_fmt(h['long_axis_mm'])} mm  study {h['study_instance_uid']}")
    return 0
