"""Evaluation metrics as pure functions on plain arrays: boxes, FROC, Dice, rank correlation,
embedding retrieval.

The FROC follows DeepLesion's published evaluation code (the 3DCE ``FROC`` / ``sens_at_FP``
functions): detections of all images are sorted by score; a detection that hits no truth
lesion is a false positive; a detection that hits one (or more) counts every lesion it hits
as found; a second detection of an already found lesion is neither a hit nor a false positive.
The sensitivity at ``r`` false positives per image is the sensitivity at the last operating
point whose false positives per image are strictly below ``r``.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence

import numpy as np

__all__ = [
    "FROC_RATES",
    "dice",
    "froc_curve",
    "iou",
    "knn_type_accuracy",
    "retrieval_at_k",
    "sensitivity_at_fps",
    "spearman",
]

#: False positives per image (or per volume) at which sensitivities are reported.
FROC_RATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def iou(box: Sequence[float], boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Intersection over union of one box (x0, y0, x1, y1) with each row of ``boxes`` (m, 4).

    Boxes are continuous (a box from 0 to 2 is 2 wide). Empty boxes give 0.
    """
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,):
        raise ValueError(f"box: expected 4 numbers (x0, y0, x1, y1), got shape {b.shape}")
    others = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(b[2], others[:, 2]) - np.maximum(b[0], others[:, 0]), 0.0, None)
    iy = np.clip(np.minimum(b[3], others[:, 3]) - np.maximum(b[1], others[:, 1]), 0.0, None)
    inter = ix * iy
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    area_o = np.clip(others[:, 2] - others[:, 0], 0.0, None) * np.clip(others[:, 3] - others[:, 1], 0.0, None)
    union = area_b + area_o - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def froc_curve(
    scores: Sequence[float] | np.ndarray,
    hits: Sequence[Collection[Hashable]],
    *,
    n_truth: int,
    n_images: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and false positives per image at every operating point, best score first.

    Parameters
    ----------
    scores:
        one score per detection.
    hits:
        per detection, the ids of the truth lesions it hits (empty: a false positive). Ids
        must be unique across the cohort.
    n_truth:
        number of truth lesions evaluated.
    n_images:
        number of images (or volumes) the detections come from.

    Returns
    -------
    tuple of numpy.ndarray
        (sensitivity, false positives per image), one value per detection in score order.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(hits) != scores.size:
        raise ValueError(f"hits: expected {scores.size} entries (one per score), got {len(hits)}")
    if n_truth < 0:
        raise ValueError(f"n_truth: must be 0 or more, got {n_truth}")
    if n_images < 1:
        raise ValueError(f"n_images: must be at least 1, got {n_images}")
    order = np.argsort(-scores, kind="stable")
    found: set[Hashable] = set()
    tps = np.zeros(scores.size)
    fps = np.zeros(scores.size)
    false = 0
    for rank, index in enumerate(order):
        hit = hits[index]
        if hit:
            found.update(hit)
        else:
            false += 1
        tps[rank] = len(found)
        fps[rank] = false
    sensitivity = tps / n_truth if n_truth else np.zeros_like(tps)
    return sensitivity, fps / n_images


def sensitivity_at_fps(
    sensitivity: np.ndarray, fps_per_image: np.ndarray, rates: Sequence[float] = FROC_RATES
) -> list[float]:
    """Sensitivity at each rate: at the last operating point with fewer false positives per image."""
    sensitivity = np.asarray(sensitivity, dtype=np.float64)
    fps_per_image = np.asarray(fps_per_image, dtype=np.float64)
    if sensitivity.shape != fps_per_image.shape:
        raise ValueError(f"fps_per_image: expected shape {sensitivity.shape}, got {fps_per_image.shape}")
    out = []
    for rate in rates:
        below = np.flatnonzero(fps_per_image < rate)
        out.append(float(sensitivity[below[-1]]) if below.size else 0.0)
    return out


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of one shape (1.0 when both are empty)."""
    a = np.asarray(predicted, dtype=bool)
    b = np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"predicted: shape {a.shape} differs from truth's {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = 0.5 * (s + e - 1) + 1.0
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two equally long series.

    A constant series has no monotonic relation with anything: the result is then 0.0.
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"y: expected {a.size} values, got {b.size}")
    if a.size < 2:
        raise ValueError(f"x: need at least 2 values, got {a.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("x: every value must be finite")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _neighbours(embeddings: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Indices (n, k) of each row's k nearest rows of other groups (-1 where fewer exist)."""
    diff = embeddings[:, None, :] - embeddings[None, :, :]
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    dist[groups[:, None] == groups[None, :]] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    valid = np.take_along_axis(dist, order, axis=1) < np.inf
    return np.where(valid, order, -1)


def _check_rows(embeddings: np.ndarray, **columns: np.ndarray) -> np.ndarray:
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings: expected shape (n, d), got {emb.shape}")
    for name, column in columns.items():
        if len(column) != emb.shape[0]:
            raise ValueError(f"{name}: expected {emb.shape[0]} rows, got {len(column)}")
    return emb


def retrieval_at_k(
    embeddings: np.ndarray,
    *,
    patients: Sequence[Hashable],
    types: Sequence[Hashable],
    locations_mm: np.ndarray,
    sizes_mm: Sequence[float],
    k: int = 5,
) -> dict[str, float | int]:
    """Leave-one-out retrieval among other patients' lesions (Deep Lesion Graphs' protocol).

    For each query lesion the ``k`` nearest embeddings of other patients are retrieved. Reported:
    the fraction of retrieved lesions of the query's type (precision@k), the mean distance in mm
    between the query's and the retrieved lesions' locations, and the mean absolute difference
    of their sizes in mm. Queries with fewer than ``k`` candidates use those there are.

    Returns
    -------
    dict
        ``precision``, ``location_error_mm``, ``size_error_mm`` (NaN without queries) and
        ``queries`` (how many lesions had at least one candidate).
    """
    emb = _check_rows(embeddings, patients=patients, types=types, locations_mm=locations_mm, sizes_mm=sizes_mm)
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    if emb.shape[0] == 0:
        return {"precision": float("nan"), "location_error_mm": float("nan"), "size_error_mm": float("nan"), "queries": 0}
    _, group = np.unique(np.asarray(patients, dtype=object).astype(str), return_inverse=True)
    _, type_code = np.unique(np.asarray(types, dtype=object).astype(str), return_inverse=True)
    loc = np.asarray(locations_mm, dtype=np.float64).reshape(emb.shape[0], -1)
    size = np.asarray(sizes_mm, dtype=np.float64)
    nn = _neighbours(emb, group.ravel(), k)
    precision, location, size_err = [], [], []
    for q in range(emb.shape[0]):
        found = nn[q][nn[q] >= 0]
        if found.size == 0:
            continue
        precision.append(float(np.mean(type_code[found] == type_code[q])))
        location.append(float(np.mean(np.linalg.norm(loc[found] - loc[q], axis=1))))
        size_err.append(float(np.mean(np.abs(size[found] - size[q]))))
    if not precision:
        return {"precision": float("nan"), "location_error_mm": float("nan"), "size_error_mm": float("nan"), "queries": 0}
    return {
        "precision": float(np.mean(precision)),
        "location_error_mm": float(np.mean(location)),
        "size_error_mm": float(np.mean(size_err)),
        "queries": len(precision),
    }


def knn_type_accuracy(
    embeddings: np.ndarray,
    *,
    patients: Sequence[Hashable],
    types: Sequence[Hashable],
    k: int = 5,
) -> float:
    """Accuracy of a k-nearest-neighbour type vote, leaving each query's patient out.

    A tie between types goes to the type whose nearest member is nearest. NaN without queries.
    """
    emb = _check_rows(embeddings, patients=patients, types=types)
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    if emb.shape[0] == 0:
        return float("nan")
    _, group = np.unique(np.asarray(patients, dtype=object).astype(str), return_inverse=True)
    _, type_code = np.unique(np.asarray(types, dtype=object).astype(str), return_inverse=True)
    nn = _neighbours(emb, group.ravel(), k)
    correct, queries = 0, 0
    for q in range(emb.shape[0]):
        found = nn[q][nn[q] >= 0]
        if found.size == 0:
            continue
        votes = type_code[found]
        counts = np.bincount(votes)
        best = np.flatnonzero(counts == counts.max())
        # Neighbours are nearest first: the first vote for a tied type decides.
        winner = next(v for v in votes if v in best)
        correct += int(winner == type_code[q])
        queries += 1
    return correct / queries if queries else float("nan")
