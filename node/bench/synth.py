"""Synthetic CT: time to synthesize a 300-slice 512x512 study (target under 5 s on one core).

Baseline, measured in the same run: drawing the same number of Gaussian noise voxels and
casting them to int16, i.e. the least any generator of such a volume must spend.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from node.config import Settings

TARGET_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, default=300, help="slices (default 300)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs; the best is reported (default 2)"
    )
    parser.add_argument("--write", action="store_true", help="also time writing the DICOM series")
    parser.add_argument("--seed", type=int, default=1, help="patient seed (default 1)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.synth.phantom import ScanParams, synthesize_study
    from node.synth.writer import write_ct_series

    scan = ScanParams.full(num_slices=args.slices, rows=args.size, columns=args.size)
    best = np.inf
    study = None
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        study = synthesize_study(args.seed, 0, scan=scan)
        best = min(best, time.perf_counter() - start)
    rng = np.random.default_rng(0)
    base = np.inf
    for _ in range(max(1, args.repeat)):
        start = time.perf_counter()
        noise = rng.standard_normal((args.slices, args.size, args.size), dtype=np.float32)
        noise *= 12.0
        noise.astype(np.int16)
        base = min(base, time.perf_counter() - start)
        del noise
    assert study is not None
    print(
        f"synthesize_study {study.shape[0]}x{study.shape[1]}x{study.shape[2]}: {best:.2f} s ({len(study.lesions)} lesions), target < {TARGET_S:.0f} s: {'PASS' if best < TARGET_S else 'FAIL'}"
    )
    print(
        f"baseline (noise only, same voxels): {base:.2f} s; ratio synth/baseline = {best / base:.2f}"
    )
    if args.write:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_ct_series(study, Path(tmp))
            print(f"write_ct_series: {time.perf_counter() - start:.2f} s")
    return 0 if best < TARGET_S else 1
