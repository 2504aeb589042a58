"""C-STORE throughput of the node's Orthanc with the ainode plugin against the same Orthanc without it."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from node.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, default=300, help="slices of the CT series (512x512)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant; the median is reported")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")


def _storescu(files: list[Path], port: int) -> float:
    """Seconds DCMTK storescu takes to send ``files`` (TCP_NODELAY on, as the node's senders do)."""
    env = dict(os.environ, TCP_NODELAY="1")
    start = time.perf_counter()
    subprocess.run(["storescu", "-aec", "AINODE", "-xs", "127.0.0.1", str(port), *map(str, files)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def run(args: argparse.Namespace, settings: Settings) -> int:
    import requests

    from node.stack.orthanc import EmbeddedOrthanc, OrthancPorts
    from node.stack.postgres import EmbeddedPostgres
    from node.stack.process import free_port
    from node.store.db import migrate
    from node.synth.phantom import ScanParams, synthesize_study
    from node.synth.writer import write_ct_series

    if shutil.which("storescu") is None:
        print("bench ingest: DCMTK's storescu is missing; run `make install`")
        return 1
    root = Path(tempfile.mkdtemp(prefix="ainode-bench-ingest-", dir="/tmp"))
    pg = EmbeddedPostgres(root / "pg")
    servers: list[EmbeddedOrthanc] = []
    try:
        print(f"writing a {args.slices}-slice 512x512 synthetic CT ...", flush=True)
        study = synthesize_study(1, 0, scan=ScanParams.full(num_slices=args.slices), cohort_seed=99)
        files = write_ct_series(study, root / "ct")
        url = pg.start()
        migrate(url)
        variants = {}
        for name, with_plugin in (("without plugin", False), ("with plugin", True)):
            server = EmbeddedOrthanc(root / name.replace(" ", "-"), ports=OrthancPorts(http=free_port(), dicom=free_port()),
                                     database_url=url, with_plugin=with_plugin, name=name.replace(" ", "-"), stable_age=3600)
            server.start()
            servers.append(server)
            variants[name] = server
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, server in variants.items():
                # A fresh study each time: delete what the previous round stored.
                for study_id in requests.get(server.url + "/studies", timeout=30).json():
                    requests.delete(f"{server.url}/studies/{study_id}", timeout=60)
                seconds = _storescu(files, server.ports.dicom)
                rates[name].append(len(files) / seconds)
                print(f"  round {round_ + 1} {name:15s} {len(files) / seconds:7.1f} instances/s", flush=True)
        base = statistics.median(rates["without plugin"])
        plugin = statistics.median(rates["with plugin"])
        print(f"\nC-STORE of {len(files)} x 512x512 CT into Orthanc (median of {args.rounds} rounds, storescu, TCP_NODELAY)")
        print(f"  without plugin: {base:7.1f} instances/s")
        print(f"  with plugin:    {plugin:7.1f} instances/s")
        print(f"  ratio with/without: {plugin / base:.3f}  (plugin cost {100 * (1 - plugin / base):+.1f}% of throughput; target < 10%)")
        return 0
    finally:
        for server in servers:
            server.stop()
        pg.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
