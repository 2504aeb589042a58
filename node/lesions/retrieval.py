"""Similar-lesion retrieval: the k nearest lesions of other patients by embedding.

The search itself runs in Postgres (pgvector HNSW, :meth:`node.store.lesions.LesionStore.similar`);
this module holds the exact reference search and the recall measure used to check it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from node.store.lesions import LesionStore

__all__ = ["exact_top_k", "recall_at_k", "similar_lesions"]


def similar_lesions(
    store: LesionStore,
    lesion_id: int,
    *,
    k: int = 10,
    lesion_type: str | None = None,
    site: str | None = None,
    min_mm: float | None = None,
    max_mm: float | None = None,
) -> list[dict[str, Any]]:
    """The k lesions of other patients most similar to a stored lesion, nearest first.

    Filters: lesion type, site, and long-axis size range in mm.
    """
    if min_mm is not None and max_mm is not None and min_mm > max_mm:
        raise ValueError(f"min_mm: {min_mm} is larger than max_mm {max_mm}")
    return store.similar(lesion_id=lesion_id, k=k, lesion_type=lesion_type, site=site, min_mm=min_mm, max_mm=max_mm)


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the k nearest embeddings (Euclidean) of each query, nearest first."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if k < 1 or k > embeddings.shape[0]:
        raise ValueError(f"k: must be between 1 and {embeddings.shape[0]}, got {k}")
    norms = np.einsum("ij,ij->i", embeddings, embeddings)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for row, q in enumerate(queries):
        d = norms - 2.0 * embeddings @ q
        part = np.argpartition(d, k - 1)[:k]
        out[row] = part[np.argsort(d[part], kind="stable")]
    return out


def recall_at_k(approximate: Sequence[Sequence[int]], exact: Sequence[Sequence[int]]) -> float:
    """Mean fraction of the exact top-k found by the approximate search."""
    if len(approximate) != len(exact):
        raise ValueError("approximate: need one result list per query, as many as exact")
    if not exact:
        return 1.0
    return float(np.mean([len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(approximate, exact, strict=True)]))
