"""Lesion graph: Algorithm 1 on a DeepLesion-sized cohort, HNSW retrieval vs exact search, inserts.

Everything runs on synthetic embeddings (of the embedder's size) in an embedded Postgres started in a temporary
directory. Three parts, each printed with its baseline measured in the same run:

1. matching of 4,427 patients / 10,594 studies / 32,735 lesions (DeepLesion's size) with the
   vectorised Algorithm 1, against the step-by-step reference on a sample of patients;
2. top-10 retrieval among ``--embeddings`` stored embeddings through the HNSW index, against
   exact search (sequential scan) on the same queries: p50 latency and recall@10. The default
   (200,000) keeps the HNSW build to a few minutes on 2 cores; ``--embeddings 1000000`` is the
   issue's size;
3. lesion insert throughput through ``LesionStore.record_study`` (matching, tracks and RECIST
   included), against the bulk COPY load rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from node.config import Settings
from node.lesions.matching import (
    groups_from_labels,
    match_lesions,
    match_patient_reference,
    pairwise_accuracy,
    simulate_cohort,
)
from node.lesions.records import Lesion, LesionType, RecistAxes
from node.lesions.retrieval import recall_at_k
from node.store.lesions import EMBEDDING_DIM

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", type=int, default=200_000, help="embeddings stored for retrieval (default 200000; the issue's size is 1000000)")
    parser.add_argument("--queries", type=int, default=200, help="retrieval queries (default 200)")
    parser.add_argument("--studies", type=int, default=300, help="studies recorded for the insert throughput (default 300)")
    parser.add_argument("--ef-search", type=int, default=500, help="HNSW ef_search (default 500: recall@10 0.97 at 200k)")
    parser.add_argument("--skip-retrieval", action="store_true", help="only matching and inserts")
    parser.add_argument("--seed", type=int, default=0)


# Noise of the simulated sightings, set so that two sightings of one lesion lie as far apart as
# the committed embedder puts them (median about 0.15 on unseen synthetic patients; the default
# 0.4 gives 0.56, beyond the configured T2 for a fifth of the pairs). The simulation has no tail:
# its accuracy line shows the algorithm on the configured thresholds, not the embedder's
# accuracy, which is `ainode eval`'s lesion-graph line.
SIMULATED_NOISE = 0.12


def _bench_matching(settings: Settings, seed: int) -> None:
    cohort = simulate_cohort(patients=4427, studies=10594, lesions=32735, seed=seed + 1, noise=SIMULATED_NOISE)
    start = time.perf_counter()
    labels = match_lesions(cohort.embeddings, cohort.study, t1=settings.match_t1, t2=settings.match_t2, patient=cohort.patient)
    fast = time.perf_counter() - start
    precision, recall = pairwise_accuracy(groups_from_labels(labels), groups_from_labels(cohort.truth))
    sample = np.unique(cohort.patient)[:300]
    start = time.perf_counter()
    n_sample = 0
    for p in sample:
        sel = cohort.patient == p
        match_patient_reference(cohort.embeddings[sel], cohort.study[sel].tolist(), t1=settings.match_t1, t2=settings.match_t2)
        n_sample += int(sel.sum())
    reference_per_lesion = (time.perf_counter() - start) / n_sample
    print(f"matching: {cohort.size} lesions, {len(np.unique(cohort.study))} studies, 4427 patients in {fast:.2f} s "
          f"(target < 5 s); T1={settings.match_t1} T2={settings.match_t2}: pairwise precision {precision:.4f} recall {recall:.4f} "
          f"(simulated embeddings, noise {SIMULATED_NOISE}; the embedder's own accuracy: `ainode eval`)")
    print(f"  baseline: step-by-step reference {reference_per_lesion * 1e6:.0f} us/lesion on {n_sample} lesions "
          f"-> {reference_per_lesion * cohort.size:.1f} s for the cohort; vectorised is {reference_per_lesion * cohort.size / fast:.1f}x faster")


def _clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(max(n // 50, 10), EMBEDDING_DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = centres[rng.integers(0, centres.shape[0], size=n)] + 0.4 * rng.normal(size=(n, EMBEDDING_DIM)).astype(np.float32) / 8
    return emb.astype(np.float32)


def _bench_retrieval(store, args: argparse.Namespace, rng: np.random.Generator) -> float:
    n = args.embeddings
    emb = _clustered(n, rng)
    patients = max(n // 8, 1)
    keys = [f"bench-{i}" for i in range(patients)]
    types = [t.value for t in LesionType]
    store.rebuild_embedding_index(drop=True)
    start = time.perf_counter()
    loaded = store.bulk_load_embeddings(
        patient_keys=keys,
        lesion_patient=rng.integers(0, patients, size=n),
        embeddings=emb,
        lesion_types=[types[i] for i in rng.integers(0, 8, size=n)],
        long_axis_mm=rng.uniform(5, 80, size=n).round(1),
    )
    copy_s = time.perf_counter() - start
    start = time.perf_counter()
    store.rebuild_embedding_index(drop=False)
    build_s = time.perf_counter() - start
    print(f"retrieval: loaded {loaded} lesions + embeddings by COPY in {copy_s:.1f} s ({loaded / copy_s:.0f} lesions/s); "
          f"HNSW index built in {build_s:.1f} s")
    queries = _clustered(args.queries, rng)
    approx_ids, exact_ids, approx_t, exact_t = [], [], [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = store.similar(embedding=q, k=10, ef_search=args.ef_search, details=False)
        approx_t.append(time.perf_counter() - t0)
        approx_ids.append([h["lesion_id"] for h in hits])
        t0 = time.perf_counter()
        hits = store.similar(embedding=q, k=10, exact=True, details=False)
        exact_t.append(time.perf_counter() - t0)
        exact_ids.append([h["lesion_id"] for h in hits])
    p50_a, p50_e = np.median(approx_t) * 1e3, np.median(exact_t) * 1e3
    p95_a = np.percentile(approx_t, 95) * 1e3
    recall = recall_at_k(approx_ids, exact_ids)
    print(f"  HNSW top-10 among {n}: p50 {p50_a:.2f} ms (p95 {p95_a:.2f} ms; target p50 < 20 ms), recall@10 {recall:.4f} vs exact (target >= 0.95)")
    print(f"  baseline: exact search p50 {p50_e:.2f} ms -> HNSW is {p50_e / p50_a:.1f}x faster")
    return loaded / copy_s


def _bench_inserts(store, settings: Settings, args: argparse.Namespace, rng: np.random.Generator, copy_rate: float | None) -> None:
    cohort = simulate_cohort(patients=max(args.studies // 3, 1), studies=args.studies, lesions=args.studies * 3,
                             dim=EMBEDDING_DIM, seed=args.seed + 7)
    start = time.perf_counter()
    count = 0
    for study in np.unique(cohort.study):
        sel = np.flatnonzero(cohort.study == study)
        lesions = [
            Lesion(
                index=k, key_slice=5, box=(0.0, 0.0, 10.0, 10.0), score=0.9, lesion_type=LesionType.LIVER,
                recist=RecistAxes(long_axis_mm=20.0, short_axis_mm=10.0, long_axis_endpoints=((0.0, 0.0), (10.0, 0.0)),
                                  short_axis_endpoints=((5.0, 0.0), (5.0, 5.0))),
                volume_mm3=800.0, embedding=cohort.embeddings[i],
            )
            for k, i in enumerate(sel)
        ]
        store.record_study(
            patient_key=f"insert-{cohort.patient[sel[0]]}", study_instance_uid=f"2.25.{study + 1}",
            study_date=dt.date(2020, 1, 1) + dt.timedelta(days=int(cohort.study_time[sel[0]]) * 60),
            series_instance_uid=f"2.25.{study + 1}.1", lesions=lesions, model_versions={"embedder": "bench"}, settings=settings,
        )
        count += len(lesions)
    elapsed = time.perf_counter() - start
    print(f"inserts: {count} lesions in {args.studies} studies through record_study in {elapsed:.1f} s: "
          f"{count / elapsed:.0f} lesions/s, {args.studies / elapsed:.1f} studies/s (matching, tracks and RECIST included)")
    if copy_rate:
        print(f"  baseline: bulk COPY {copy_rate:.0f} lesions/s -> record_study runs at {count / elapsed / copy_rate:.3f}x of it")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from node.cli import CommandError
    from node.stack.postgres import EmbeddedPostgres
    from node.store.db import Database, migrate
    from node.store.lesions import LesionStore

    if args.embeddings < 1000:
        raise CommandError("--embeddings: use at least 1000")
    rng = np.random.default_rng(args.seed)
    _bench_matching(settings, args.seed)
    with tempfile.TemporaryDirectory(prefix="ainode-bench-graph-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pgdata")
        url = server.start()
        try:
            migrate(url)
            db = Database(url, max_size=2)
            try:
                store = LesionStore(db)
                copy_rate = None if args.skip_retrieval else _bench_retrieval(store, args, rng)
                _bench_inserts(store, settings, args, rng, copy_rate)
            finally:
                db.close()
        finally:
            server.stop()
    return 0
