"""One 300-slice study through all four models: CPU Triton against in-process ONNX Runtime.

The baseline is the node's Analyzer on ``OnnxBackend`` (ONNX Runtime in this process); the
contender is the same Analyzer on ``TritonBackend`` (the embedded CPU Triton, python backend
running ONNX Runtime, volumes through system shared memory), measured in the same run, each the
best of ``--repeats``. The repeats take turns (baseline, contender, baseline, ...), so that a
neighbour's load on a shared machine falls on both alike. Also printed: Triton with tensors
inside the gRPC messages.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from node.config import Settings

logger = logging.getLogger(__name__)

INFERENCE_STAGES = ("body_part", "detect", "segment", "embed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, default=300, help="slices of the 512x512 study (default 300)")
    parser.add_argument("--patient", type=int, default=5, help="synthetic patient seed")
    parser.add_argument("--repeats", type=int, default=3, help="runs per backend, taking turns; the best counts (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads, both backends (default 2)")
    parser.add_argument("--triton-url", default=None, help="use this Triton instead of starting the embedded one")
    parser.add_argument("--no-grpc-payload", action="store_true", help="skip the run without shared memory")


def _timed(analyzer, volume):
    t0 = time.perf_counter()
    result = analyzer.analyze(volume)
    return time.perf_counter() - t0, result


def run(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from node.cli import CommandError
    from node.inference.analyzer import Analyzer
    from node.inference.backend import OnnxBackend, TritonBackend
    from node.synth.phantom import ScanParams, synthesize_study

    os.environ.setdefault("AINODE_ORT_THREADS", str(args.threads))
    repository = Path(settings.model_repository)
    if not (repository / "onnx").is_dir():
        raise CommandError(f"no ONNX models in {repository / 'onnx'}: run `ainode train` or set model_repository")
    t0 = time.perf_counter()
    study = synthesize_study(args.patient, 0, scan=ScanParams.full(num_slices=args.slices))
    volume = study.to_volume()
    print(
        f"study: {volume.shape[0]} slices of {volume.shape[1]}x{volume.shape[2]}, spacing {volume.spacing[0]:.2f} mm, "
        f"{len(study.lesions)} true lesions (synthesized in {time.perf_counter() - t0:.1f} s)"
    )

    server = None
    work = None
    url = args.triton_url
    if url is None:
        from node.stack.process import free_port
        from node.stack.triton import EmbeddedTriton, TritonPorts

        work = Path(tempfile.mkdtemp(prefix="ainode-bench-triton-", dir="/tmp"))
        server = EmbeddedTriton(
            work, ports=TritonPorts(grpc=free_port(), http=free_port(), metrics=free_port()), repository=repository / "cpu"
        )
        t0 = time.perf_counter()
        server.start()
        url = server.grpc_url
        print(f"embedded CPU Triton ready in {time.perf_counter() - t0:.1f} s at {url}")
    try:
        local = OnnxBackend(repository, threads=args.threads)
        shm = TritonBackend(url, use_shared_memory=True)
        runs = [("onnxruntime in-process", local), ("triton + shared memory", shm)]
        payload = None
        if not args.no_grpc_payload:
            payload = TritonBackend(url, use_shared_memory=False)
            runs.append(("triton + gRPC payload", payload))
        small = synthesize_study(args.patient, 0, small=True).to_volume()
        for _, backend in runs:
            Analyzer(backend).analyze(small)  # warm-up: sessions, shared-memory regions
        results: dict[str, tuple[float, object]] = {}
        walls: dict[str, list[float]] = {label: [] for label, _ in runs}
        for _ in range(max(1, args.repeats)):
            for label, backend in runs:
                wall, analysis = _timed(Analyzer(backend), volume)
                walls[label].append(wall)
                if label not in results or wall < results[label][0]:
                    results[label] = (wall, analysis)
        for backend in (shm, payload):
            if backend is not None:
                backend.close()
    finally:
        if server is not None:
            server.stop()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)

    base_wall, base = results["onnxruntime in-process"]
    base_inf = sum(base.timings.get(s, 0.0) for s in INFERENCE_STAGES)
    print(f"{'backend':26s} {'study s':>8s} {'models s':>9s} {'ratio':>6s} {'models ratio':>13s} lesions  stages (s), every run's study s")
    for label, (wall, analysis) in results.items():
        inf = sum(analysis.timings.get(s, 0.0) for s in INFERENCE_STAGES)
        stages = " ".join(f"{k}={v:.2f}" for k, v in analysis.timings.items() if k != "total")
        print(
            f"{label:26s} {wall:8.2f} {inf:9.2f} {wall / base_wall:6.2f} {inf / max(base_inf, 1e-9):13.2f} "
            f"{len(analysis.lesions):7d}  {stages}; runs {' '.join(f'{w:.2f}' for w in walls[label])}"
        )
    triton_wall = results["triton + shared memory"][0]
    ok_ratio = triton_wall / base_wall <= 1.15
    ok_time = triton_wall < 30.0
    print(
        f"Triton overhead ratio {triton_wall / base_wall:.2f} (target <= 1.15: {'met' if ok_ratio else 'NOT met'}); "
        f"study through Triton {triton_wall:.1f} s (target < 30 s: {'met' if ok_time else 'NOT met'})"
    )
    return 0
