"""Ingest: assemble a 300-slice 512x512 CT into a volume vs. just reading its files with pydicom.

The baseline is ``pydicom.dcmread`` of every file, datasets kept in a list (bytes read and
parsed, no pixel work); the
measured path is ``read_datasets`` + ``assemble_volumes`` (grouping, sorting, checks, pixels to
float32 HU). The target is a speed ratio of at least 0.5.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pydicom

from node.config import Settings

TARGET_RATIO = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, default=300, help="slices (default 300)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each; the best is reported (default 3)"
    )
    parser.add_argument(
        "--transfer-syntax", default="explicit", help="how the files are written (default explicit)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.dicom.ingest import assemble_volumes, read_datasets
    from node.synth.phantom import ScanParams, synthesize_study
    from node.synth.writer import write_ct_series

    study = synthesize_study(
        1, 0, scan=ScanParams.full(num_slices=args.slices, rows=args.size, columns=args.size)
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_ct_series(study, Path(tmp), transfer_syntax=args.transfer_syntax)
        for p in paths:  # warm the page cache for both sides
            p.read_bytes()
        base = ours = float("inf")
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            kept = [pydicom.dcmread(p) for p in paths]
            base = min(base, time.perf_counter() - start)
            start = time.perf_counter()
            datasets, _ = read_datasets(paths)
            result = assemble_volumes(datasets)
            ours = min(ours, time.perf_counter() - start)
            del kept, datasets
    (vol,) = result.volumes
    ratio = base / ours
    print(f"pydicom.dcmread of {len(paths)} files: {base:.3f} s ({len(paths) / base:.0f} files/s)")
    print(
        f"read_datasets + assemble_volumes -> {vol.shape} float32: {ours:.3f} s ({len(paths) / ours:.0f} files/s)"
    )
    print(
        f"speed ratio ingest/read = {ratio:.2f} (target >= {TARGET_RATIO}): {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}"
    )
    return 0 if ratio >= TARGET_RATIO else 1
