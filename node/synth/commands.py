"""`ainode synth`: write a synthetic longitudinal CT cohort with ground truth."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from node.config import Settings
from node.synth.writer import TRANSFER_SYNTAXES

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="write a synthetic longitudinal CT cohort (DICOM + truth.json + masks.npz)"
    )
    p.add_argument("--patients", type=int, default=2, help="number of patients (default 2)")
    p.add_argument("--timepoints", type=int, default=2, help="studies per patient, 1-8 (default 2)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--small",
        action="store_true",
        help="small fast studies (about 128x128, 5 mm) instead of clinical ones",
    )
    p.add_argument(
        "--transfer-syntax",
        choices=sorted(TRANSFER_SYNTAXES),
        default="explicit",
        help="pixel encoding (default explicit VR little endian)",
    )
    p.add_argument(
        "--enhanced",
        action="store_true",
        help="write Enhanced CT (one multi-frame instance per study)",
    )
    p.add_argument("--no-masks", action="store_true", help="skip masks.npz")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli import CommandError
    from node.synth.cohort import write_cohort

    if args.patients < 1:
        raise CommandError("--patients must be at least 1")
    if not 1 <= args.timepoints <= 8:
        raise CommandError("--timepoints must be between 1 and 8")
    folders = write_cohort(
        args.out,
        patients=args.patients,
        timepoints=args.timepoints,
        seed=args.seed,
        small=args.small,
        transfer_syntax=args.transfer_syntax,
        enhanced=args.enhanced,
        masks=not args.no_masks,
    )
    print(f"wrote {len(folders)} studies of {args.patients} patients under {args.out}")
    return 0
