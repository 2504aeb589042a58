"""`ainode inspect`: what the node would do with a folder of DICOM files, and why."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from node.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect", help="show the CT stacks found in a folder or file and every problem found"
    )
    p.add_argument(
        "path", type=Path, nargs="+", help="DICOM files or folders (searched recursively)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli import CommandError
    from node.dicom.ingest import assemble_volumes, read_datasets

    for path in args.path:
        if not path.exists():
            raise CommandError(
                f"{path} does not exist: give a DICOM file or a folder holding a study"
            )
    datasets, problems = read_datasets(args.path)
    result = assemble_volumes(datasets)
    problems = problems + result.problems
    used = {v.series_instance_uid for v in result.volumes}
    if args.json:
        print(
            json.dumps(
                {
                    "instances": len(datasets),
                    "stacks": [s.to_json() for s in result.stacks],
                    "volumes": [
                        {
                            "series_instance_uid": v.series_instance_uid,
                            "shape": list(v.shape),
                            "spacing": [round(x, 4) for x in v.spacing],
                            "affine": [[round(x, 4) for x in row] for row in v.affine.tolist()],
                        }
                        for v in result.volumes
                    ],
                    "problems": [p.to_json() for p in problems],
                },
                indent=1,
            )
        )
        return 0 if result.volumes else 1
    print(f"{len(datasets)} DICOM instances read")
    for s in result.stacks:
        status = "USED" if s.usable else "SKIPPED"
        spacing = "x".join(f"{v:.3g}" for v in s.spacing) if s.spacing else "?"
        cover = f"{s.coverage[0]:.1f}..{s.coverage[1]:.1f} mm" if s.coverage else "?"
        print(
            f"{status:8} series {s.series_instance_uid} {s.series_description!r}: {s.orientation}, {s.shape[0]}x{s.shape[1]}x{s.shape[2]} slices x rows x cols, spacing {spacing} mm, coverage {cover}"
        )
    if not result.stacks and not used:
        print("no CT stack found")
    for p in problems:
        print(f"  {p.severity:7} {p.code}: {p.message}")
    if not result.volumes:
        print(f"the node would skip this study: {result.reason()}")
        return 1
    return 0
