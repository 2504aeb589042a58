"""Intra-patient lesion matching by graph pruning (Algorithm 1 of the Deep Lesion Graph work).

The lesions of one patient are the nodes of a graph whose edge weights are Euclidean
distances between lesion embeddings. Nodes of the same study closer than ``t1`` are merged
(the same lesion found twice); edges longer than ``t2`` are dropped; of the edges from a node
into one other study only the nearest is kept (the exclusion step: a lesion matches at most one
lesion per other study, so a kept edge is a mutual nearest neighbour between two studies); each
connected group is one lesion followed over time. Same-study nodes that were not merged are never
joined directly.

:func:`match_lesions` runs the algorithm for many patients at once, vectorised over all
intra-patient pairs, so a cohort the size of DeepLesion (32,735 lesions) takes well under a
second. :func:`match_patient_reference` is a plain, loop-by-loop transcription used to check it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

logger = logging.getLogger(__name__)

__all__ = [
    "SyntheticCohort",
    "TuningResult",
    "assign_tracks",
    "groups_from_labels",
    "match_lesions",
    "match_patient_reference",
    "pairwise_accuracy",
    "simulate_cohort",
    "tune_thresholds",
]


def _components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _first_of_groups(keys: list[np.ndarray], within: list[np.ndarray]) -> np.ndarray:
    """Boolean mask of the rows that come first in their group of equal ``keys``, ordering
    rows inside a group by the arrays ``within`` (most significant first), then row index."""
    n = within[0].size
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.lexsort([np.arange(n), *reversed(within), *reversed(keys)])
    first = np.ones(n, dtype=bool)
    same = np.ones(n - 1, dtype=bool)
    for key in keys:
        k = key[order]
        same &= k[1:] == k[:-1]
    first[1:] = ~same
    mask = np.zeros(n, dtype=bool)
    mask[order[first]] = True
    return mask


def _intra_patient_pairs(patient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j), i before j in a patient-sorted order, of lesions of the same patient."""
    order = np.argsort(patient, kind="stable")
    sorted_patient = patient[order]
    n = patient.size
    boundaries = np.flatnonzero(np.r_[True, sorted_patient[1:] != sorted_patient[:-1], True])
    ends = np.repeat(boundaries[1:], np.diff(boundaries))  # end (exclusive) of each row's patient
    partners = ends - np.arange(n) - 1
    total = int(partners.sum())
    first = np.repeat(np.arange(n), partners)
    starts = np.cumsum(partners) - partners
    second = first + 1 + (np.arange(total) - np.repeat(starts, partners))
    return order[first], order[second]


def match_lesions(
    embeddings: np.ndarray,
    study: np.ndarray,
    *,
    t1: float,
    t2: float,
    patient: np.ndarray | None = None,
) -> np.ndarray:
    """Group lesions into matched lesion groups by Algorithm 1.

    Parameters
    ----------
    embeddings:
        float array (n, d), one embedding per lesion.
    study:
        integer array (n,): the study each lesion belongs to (any ids, unique across patients
        or not).
    t1:
        intra-study threshold: same-study lesions closer than this are merged.
    t2:
        inter-study threshold: edges longer than this are dropped.
    patient:
        integer array (n,) of patient ids; ``None`` means one patient. Lesions of different
        patients are never matched.

    Returns
    -------
    numpy.ndarray
        int64 array (n,): a group label per lesion, ``0..n_groups-1``, numbered in order of
        first appearance.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings: expected shape (n, d), got {embeddings.shape}")
    n = embeddings.shape[0]
    study = np.asarray(study)
    if study.shape != (n,):
        raise ValueError(f"study: expected shape ({n},), got {study.shape}")
    patient = np.zeros(n, dtype=np.int64) if patient is None else np.asarray(patient)
    if patient.shape != (n,):
        raise ValueError(f"patient: expected shape ({n},), got {patient.shape}")
    if not (np.isfinite(t1) and t1 >= 0):
        raise ValueError(f"t1: expected a finite number >= 0, got {t1}")
    if not (np.isfinite(t2) and t2 >= 0):
        raise ValueError(f"t2: expected a finite number >= 0, got {t2}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings: every value must be finite")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Studies of different patients must not collide.
    study_key = np.unique(np.stack([patient, study], axis=1), axis=0, return_inverse=True)[1].ravel()

    i, j = _intra_patient_pairs(patient)
    d = np.sqrt(np.maximum(np.einsum("ij,ij->i", embeddings[i] - embeddings[j], embeddings[i] - embeddings[j]), 0.0))
    same_study = study_key[i] == study_key[j]

    # 2: merge same-study nodes closer than t1.
    merge = same_study & (d < t1)
    node = _components(n, i[merge], j[merge])
    node_study = np.zeros(node.max() + 1, dtype=np.int64)
    node_study[node] = study_key

    # 3: keep inter-study edges no longer than t2; one edge per pair of merged nodes (nearest).
    keep = ~same_study & (d <= t2)
    a, b, w = node[i[keep]], node[j[keep]], d[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    unique = _first_of_groups([lo, hi], [w])
    a, b, w = lo[unique], hi[unique], w[unique]

    # 4: exclusion: an edge survives when it is the nearest from a into b's study and from b
    # into a's study (ties broken by node order).
    src, dst, w2 = np.r_[a, b], np.r_[b, a], np.r_[w, w]
    nearest = _first_of_groups([src, node_study[dst]], [w2, dst])
    survive = nearest[: a.size] & nearest[a.size :]
    # 5: each connected group is one lesion.
    group = _components(node_study.size, a[survive], b[survive])[node]
    # Renumber in order of first appearance so labels are stable for equal input.
    _, first_index, inverse = np.unique(group, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first_index))
    return rank[inverse.ravel()].astype(np.int64)


def match_patient_reference(embeddings: np.ndarray, study: Sequence[int], *, t1: float, t2: float) -> np.ndarray:
    """Algorithm 1 for one patient, written step by step with loops; slow, used as a reference."""
    emb = np.asarray(embeddings, dtype=np.float64)
    n = len(study)
    dist = [[float(np.linalg.norm(emb[p] - emb[q])) for q in range(n)] for p in range(n)]
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p, q in itertools.combinations(range(n), 2):
        if study[p] == study[q] and dist[p][q] < t1:
            parent[find(p)] = find(q)
    members: dict[int, list[int]] = {}
    for p in range(n):
        members.setdefault(find(p), []).append(p)
    nodes = sorted(members, key=lambda r: members[r][0])
    node_study = {r: study[members[r][0]] for r in nodes}
    edges: dict[tuple[int, int], float] = {}
    for x, y in itertools.combinations(nodes, 2):
        if node_study[x] == node_study[y]:
            continue
        w = min(dist[p][q] for p in members[x] for q in members[y])
        if w <= t2:
            edges[(x, y)] = w

    def nearest(x: int, other: int, target_study: int) -> bool:
        w = edges[(x, other) if (x, other) in edges else (other, x)]
        for (u, v), wv in edges.items():
            if x not in (u, v):
                continue
            k = v if u == x else u
            if k == other or node_study[k] != target_study:
                continue
            if wv < w or (wv == w and nodes.index(k) < nodes.index(other)):
                return False
        return True

    kept = [(x, y) for (x, y) in edges if nearest(x, y, node_study[y]) and nearest(y, x, node_study[x])]
    for x, y in kept:
        parent[find(x)] = find(y)
    labels: dict[int, int] = {}
    out = np.zeros(n, dtype=np.int64)
    for p in range(n):
        out[p] = labels.setdefault(find(p), len(labels))
    return out


def _as_labels(groups: Iterable[Iterable[Hashable]]) -> dict[Hashable, int]:
    labels: dict[Hashable, int] = {}
    for g, members in enumerate(groups):
        for m in members:
            if m in labels:
                raise ValueError(f"groups: item {m!r} is in more than one group")
            labels[m] = g
    return labels


def pairwise_accuracy(
    predicted_groups: Iterable[Iterable[Hashable]],
    truth_groups: Iterable[Iterable[Hashable]],
) -> tuple[float, float]:
    """Pairwise same-lesion precision and recall of predicted groups against true tracks.

    A pair of lesions is positive when both are in one group. Items missing from one side
    count as singletons there. With no predicted (true) pairs, precision (recall) is 1.0.

    Returns
    -------
    tuple of float
        (precision, recall).
    """
    pred = _as_labels(predicted_groups)
    truth = _as_labels(truth_groups)
    items = set(pred) | set(truth)
    pred_sizes: dict[int, int] = {}
    truth_sizes: dict[int, int] = {}
    cells: dict[tuple[int, int], int] = {}
    for k, item in enumerate(items):
        p = pred.get(item, -1 - k)
        t = truth.get(item, -1 - k)
        pred_sizes[p] = pred_sizes.get(p, 0) + 1
        truth_sizes[t] = truth_sizes.get(t, 0) + 1
        cells[(p, t)] = cells.get((p, t), 0) + 1

    def pairs(counts: Iterable[int]) -> int:
        return sum(c * (c - 1) // 2 for c in counts)

    tp = pairs(cells.values())
    pp = pairs(pred_sizes.values())
    tt = pairs(truth_sizes.values())
    return (tp / pp if pp else 1.0, tp / tt if tt else 1.0)


def groups_from_labels(labels: np.ndarray, ids: Sequence[Hashable] | None = None) -> list[list[Hashable]]:
    """Turn a label per item into a list of groups of item ids (indices when ``ids`` is None)."""
    labels = np.asarray(labels)
    ids = range(labels.size) if ids is None else ids
    groups: dict[int, list[Hashable]] = {}
    for lab, item in zip(labels.tolist(), ids, strict=True):
        groups.setdefault(lab, []).append(item)
    return list(groups.values())


def assign_tracks(groups: np.ndarray, previous: np.ndarray, previous_rank: dict[int, int] | None = None) -> dict[int, int]:
    """Map re-derived groups onto existing tracks so that a track keeps its UID.

    Parameters
    ----------
    groups:
        int array (n,): group label of each lesion after matching.
    previous:
        int array (n,): the id of the track each lesion belonged to before, -1 for none.
    previous_rank:
        optional tie-breaker: lower rank wins when overlaps are equal (e.g. track age);
        defaults to the track id.

    Returns
    -------
    dict
        group label -> existing track id, for the groups that inherit one. Each existing track
        goes to at most one group: the one sharing the most lesions with it (greedy, largest
        overlap first). Groups missing from the mapping need a new track.
    """
    groups = np.asarray(groups, dtype=np.int64)
    previous = np.asarray(previous, dtype=np.int64)
    if groups.shape != previous.shape:
        raise ValueError(f"previous: expected shape {groups.shape}, got {previous.shape}")
    rank = previous_rank or {}
    overlap: dict[tuple[int, int], int] = {}
    for g, t in zip(groups.tolist(), previous.tolist(), strict=True):
        if t >= 0:
            overlap[(g, t)] = overlap.get((g, t), 0) + 1
    candidates = sorted(overlap.items(), key=lambda kv: (-kv[1], rank.get(kv[0][1], kv[0][1]), kv[0][0]))
    result: dict[int, int] = {}
    taken: set[int] = set()
    for (g, t), _ in candidates:
        if g in result or t in taken:
            continue
        result[g] = t
        taken.add(t)
    return result


@dataclass(frozen=True, kw_only=True)
class SyntheticCohort:
    """Lesion embeddings of a synthetic longitudinal cohort with their true tracks.

    ``patient``, ``study`` and ``truth`` are int arrays (n,); ``study`` ids are unique across
    the cohort; ``truth`` is the true lesion (track) id, unique across the cohort;
    ``study_time`` is the time point (0 = baseline) of each lesion's study.
    """

    embeddings: np.ndarray
    patient: np.ndarray
    study: np.ndarray
    study_time: np.ndarray
    truth: np.ndarray

    @property
    def size(self) -> int:
        return int(self.patient.size)


def simulate_cohort(
    *,
    patients: int,
    studies: int,
    lesions: int,
    dim: int = 64,
    noise: float = 0.4,
    type_spread: float = 0.6,
    duplicate_rate: float = 0.02,
    seed: int = 0,
) -> SyntheticCohort:
    """Simulate lesion embeddings of a longitudinal cohort (e.g. DeepLesion's 4,427 patients,
    10,594 studies, 32,735 lesions).

    Each true lesion has a unit-norm centre built from one of eight type directions plus its
    own direction (``type_spread`` sets how far lesions of one type sit apart); each sighting
    adds Gaussian noise of total norm about ``noise``. Lesions appear and vanish between
    studies; a few are detected twice in one study (``duplicate_rate``). A stand-in for the
    learned embedder until it lands: tuning on it says how the algorithm behaves, not how the
    real embedder separates lesions.
    """
    if patients < 1 or studies < patients:
        raise ValueError("studies: need at least one study per patient")
    if lesions < studies:
        raise ValueError("lesions: need at least one lesion per study")
    rng = np.random.default_rng(seed)
    studies_per_patient = 1 + rng.multinomial(studies - patients, np.full(patients, 1 / patients))
    sightings_per_study = 1 + rng.multinomial(lesions - studies, np.full(studies, 1 / studies))
    types = rng.normal(size=(8, dim))
    types /= np.linalg.norm(types, axis=1, keepdims=True)

    emb_rows: list[np.ndarray] = []
    pat_rows: list[np.ndarray] = []
    study_rows: list[np.ndarray] = []
    time_rows: list[np.ndarray] = []
    truth_rows: list[np.ndarray] = []
    next_truth = 0
    study_offset = 0
    for p, k in enumerate(studies_per_patient.tolist()):
        counts = sightings_per_study[study_offset : study_offset + k]
        pool = max(int(counts.max()) + 1, int(round(counts.mean() * 1.4)))
        centres = types[rng.integers(0, 8, size=pool)] + type_spread * rng.normal(size=(pool, dim)) / np.sqrt(dim)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        # Lesions present at earlier time points are likelier to persist: sample with weights.
        weight = rng.gamma(2.0, size=pool)
        for t, c in enumerate(counts.tolist()):
            chosen = rng.choice(pool, size=min(c, pool), replace=False, p=weight / weight.sum())
            emb = centres[chosen] + noise * rng.normal(size=(chosen.size, dim)) / np.sqrt(dim)
            # A lesion detected twice in one study: two boxes on one image, nearly one embedding.
            twice = rng.random(chosen.size) < duplicate_rate
            again = emb[twice] + 0.25 * noise * rng.normal(size=(int(twice.sum()), dim)) / np.sqrt(dim)
            ids = np.concatenate([chosen, chosen[twice]])
            emb = np.concatenate([emb, again])
            emb_rows.append(emb)
            pat_rows.append(np.full(ids.size, p))
            study_rows.append(np.full(ids.size, study_offset + t))
            time_rows.append(np.full(ids.size, t))
            truth_rows.append(next_truth + ids)
        next_truth += pool
        study_offset += k
    return SyntheticCohort(
        embeddings=np.concatenate(emb_rows).astype(np.float32),
        patient=np.concatenate(pat_rows).astype(np.int64),
        study=np.concatenate(study_rows).astype(np.int64),
        study_time=np.concatenate(time_rows).astype(np.int64),
        truth=np.concatenate(truth_rows).astype(np.int64),
    )


@dataclass(frozen=True, kw_only=True)
class TuningResult:
    """Thresholds chosen by :func:`tune_thresholds` and the accuracy they gave."""

    t1: float
    t2: float
    precision: float
    recall: float


def tune_thresholds(
    cohort: SyntheticCohort,
    *,
    t1_grid: Sequence[float] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5),
    t2_grid: Sequence[float] = tuple(np.round(np.arange(0.2, 1.41, 0.05), 2)),
) -> TuningResult:
    """Grid-search T1 and T2 on a cohort; pick the best F1 of pairwise precision and recall.

    Ties go to the smaller thresholds (the more conservative matcher).
    """
    if not t1_grid or not t2_grid:
        raise ValueError("t1_grid: both grids must be non-empty")
    truth = groups_from_labels(cohort.truth)
    best: TuningResult | None = None
    best_f1 = -1.0
    for t1 in t1_grid:
        for t2 in t2_grid:
            labels = match_lesions(cohort.embeddings, cohort.study, t1=float(t1), t2=float(t2), patient=cohort.patient)
            precision, recall = pairwise_accuracy(groups_from_labels(labels), truth)
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            logger.debug("t1=%.3f t2=%.3f precision=%.4f recall=%.4f", t1, t2, precision, recall)
            if f1 > best_f1 + 1e-12:
                best_f1 = f1
                best = TuningResult(t1=float(t1), t2=float(t2), precision=precision, recall=recall)
    assert best is not None
    return best
