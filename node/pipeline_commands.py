"""`ainode analyze PATH --out DIR`: the whole pipeline on a local folder, without Orthanc."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from node.cli import CommandError
from node.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="run the models on a local DICOM folder and write SEG, SR and presentation state")
    p.add_argument("path", type=Path, nargs="+", help="DICOM files or folders of one study")
    p.add_argument("--out", type=Path, required=True, help="folder for the result objects and summary")
    p.add_argument("--keep-empty-frames", action="store_true", help="SEG with every frame (for older viewers)")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    from node.dicom.ingest import read_datasets
    from node.inference.analyzer import Analyzer
    from node.inference.backend import open_backend
    from node.pipeline import analyze_datasets

    for path in args.path:
        if not path.exists():
            raise CommandError(f"{path}: no such file or folder")
    datasets, problems = read_datasets(args.path)
    for problem in problems:
        print(f"warning: {problem.message}")
    if not datasets:
        raise CommandError("no readable DICOM instances in " + ", ".join(map(str, args.path)))
    backend = open_backend(settings)
    try:
        outcome = analyze_datasets(datasets, analyzer=Analyzer(backend, detection_threshold=settings.detection_threshold, detector_zoom=settings.detector_zoom),
                                   omit_empty_frames=not args.keep_empty_frames)
    finally:
        backend.close()
    args.out.mkdir(parents=True, exist_ok=True)
    if outcome.state != "done":
        print(f"skipped: {outcome.reason}")
        return 1
    for ds in outcome.objects:
        name = f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(args.out / name, enforce_file_format=True)
        print(f"wrote {args.out / name}")
    summary = "\n".join(outcome.summary_lines) or "no lesion found"
    (args.out / "summary.txt").write_text(summary + "\n")
    (args.out / "result.json").write_text(json.dumps(outcome.result_json() | {"timings": outcome.timings}, indent=1))
    print(summary)
    print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in outcome.timings.items() if "." not in k))
    return 0
