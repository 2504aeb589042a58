"""Embedding retrieval on the held-out cohort's annotated lesions (Deep Lesion Graphs' protocol).

"Deep Lesion Graphs in the Wild" scores its embedding on annotated lesions: every lesion is
embedded from its annotated key slice and box, and for each query the nearest lesions of other
patients are retrieved. :func:`embed_truth_lesions` does that here for every truth lesion of a
study, with the preprocessing the node itself uses (``node.inference.analyzer.box_crop`` and
``embedder_input``: the crop around the box centre, the larger box side padded by 50 mm each side
(``node.inference.preprocess.embed_crop_side``, the seed's), and the cues
from the body mask and the body-part regressor's score), the same functions
``node.training.train.embedder_data`` feeds the embedder with in training.

:func:`retrieval_figures` turns embeddings into the paper's figures: type precision@k over other
patients, mean location and size error of the top k, leave-one-patient-out kNN type accuracy,
and the ceiling, the precision@k a perfect embedding would reach given the gallery's make-up
(a query whose type has fewer than k lesions in other patients cannot reach 1).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from node.eval import metrics
from node.eval.cohort import EvalStudy
from node.inference import preprocess as pp
from node.inference.analyzer import body_mask, box_crop, embedder_input
from node.inference.backend import InferenceBackend

logger = logging.getLogger(__name__)

__all__ = [
    "TRUTH_PROTOCOL",
    "TruthEmbedding",
    "embed_truth_lesions",
    "precision_ceiling",
    "retrieval_figures",
    "truth_lesion_inputs",
]

TRUTH_PROTOCOL = (
    "every truth lesion embedded from its annotated key slice and box (the node's crop and cues; "
    "z cue from the body-part regressor's score); leave-one-out, same-patient neighbours excluded; "
    "location in the phantom's body frame"
)


@dataclass(frozen=True, kw_only=True)
class TruthEmbedding:
    """One truth lesion with its embedding and what its retrieval is scored on."""

    lesion_id: str
    track_id: str
    patient: str
    timepoint: int
    lesion_type: str
    location_mm: tuple[float, float, float]
    long_axis_mm: float
    embedding: np.ndarray


def truth_lesion_inputs(study: EvalStudy, body_part_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embedder inputs of every truth lesion of ``study``.

    Returns
    -------
    tuple of numpy.ndarray
        images (n, 3, 64, 64) float32 windowed to 0..255 and cues (n, 4) float32.
    """
    volume = study.volume
    n = volume.pixels.shape[0]
    scores = np.asarray(body_part_scores, dtype=np.float64).ravel()
    if scores.size != n:
        raise ValueError(f"body_part_scores: expected {n} values (one per slice), got {scores.size}")
    if not study.lesions:
        return np.zeros((0, 3, pp.CROP_SIZE, pp.CROP_SIZE), np.float32), np.zeros((0, 4), np.float32)
    canvas = pp.make_canvas(volume.pixels, volume.spacing)
    body = body_mask(canvas)
    images, cues = [], []
    for lesion in study.lesions:
        centre, side = box_crop(lesion.box, volume.spacing)
        key = int(np.clip(lesion.key_slice, 0, n - 1))
        image, cue = embedder_input(
            volume.pixels, volume.spacing, canvas, body, key_slice=key, center_rc=centre, side_mm=side, body_part_score=float(scores[key])
        )
        images.append(image)
        cues.append(cue)
    return np.stack(images).astype(np.float32), np.asarray(cues, dtype=np.float32)


def embed_truth_lesions(
    study: EvalStudy, backend: InferenceBackend, body_part_scores: np.ndarray, *, batch: int = 32
) -> list[TruthEmbedding]:
    """Embed every truth lesion of ``study`` with the node's embedder through ``backend``."""
    images, cues = truth_lesion_inputs(study, body_part_scores)
    embeddings = []
    for start in range(0, len(images), batch):
        out = backend.infer("lesion_embedder", {"image": images[start : start + batch], "cues": cues[start : start + batch]})
        embeddings.append(np.asarray(out["embedding"], dtype=np.float32))
    if not embeddings:
        return []
    emb = np.concatenate(embeddings)
    return [
        TruthEmbedding(
            lesion_id=lesion.lesion_id,
            track_id=f"{study.patient}/{lesion.track_id}",
            patient=study.patient,
            timepoint=study.timepoint,
            lesion_type=str(lesion.lesion_type),
            location_mm=tuple(float(v) for v in study.body_frame(lesion.center_patient)),  # type: ignore[arg-type]
            long_axis_mm=float(lesion.long_axis_mm),
            embedding=emb[i],
        )
        for i, lesion in enumerate(study.lesions)
    ]


def precision_ceiling(*, patients: Sequence[Hashable], types: Sequence[Hashable], k: int = 5) -> float:
    """Precision@k of a perfect embedding: per query, min(same-type others, k) / min(others, k).

    "Others" are the lesions of other patients; queries without any are left out. NaN without
    queries.
    """
    if len(patients) != len(types):
        raise ValueError(f"types: expected {len(patients)} values (one per patient entry), got {len(types)}")
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    p = np.asarray(patients, dtype=object).astype(str)
    t = np.asarray(types, dtype=object).astype(str)
    values = []
    for q in range(len(p)):
        other = p != p[q]
        n_other = int(other.sum())
        if n_other == 0:
            continue
        n_same = int((other & (t == t[q])).sum())
        values.append(min(n_same, k) / min(n_other, k))
    return float(np.mean(values)) if values else float("nan")


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def retrieval_figures(
    embeddings: np.ndarray,
    *,
    patients: Sequence[Hashable],
    types: Sequence[Hashable],
    locations_mm: np.ndarray,
    sizes_mm: Sequence[float],
    k: int = 5,
) -> dict[str, float | int | None]:
    """Retrieval figures of one set of lesion embeddings, JSON-ready (None where undefined).

    Returns
    -------
    dict
        ``precision`` (type precision@k), ``ceiling`` (a perfect embedding's precision@k),
        ``location_error_mm``, ``size_error_mm`` (mean over the top k), ``knn_accuracy``
        (k-nearest-neighbour type vote, query's patient left out), ``queries``, ``lesions``, ``k``.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    n = len(patients)
    if emb.shape[0] == 0 and n == 0:
        emb = emb.reshape(0, 1)
    locations = np.asarray(locations_mm, dtype=np.float64).reshape(n, -1) if n else np.zeros((0, 3))
    r = metrics.retrieval_at_k(emb, patients=patients, types=types, locations_mm=locations, sizes_mm=sizes_mm, k=k)
    knn = metrics.knn_type_accuracy(emb, patients=patients, types=types, k=k) if n else float("nan")
    ceiling = precision_ceiling(patients=patients, types=types, k=k) if n else float("nan")
    return {
        "k": int(k),
        "precision": _finite(r["precision"]),
        "ceiling": _finite(ceiling),
        "location_error_mm": _finite(r["location_error_mm"]),
        "size_error_mm": _finite(r["size_error_mm"]),
        "knn_accuracy": _finite(knn),
        "queries": int(r["queries"]),
        "lesions": int(n),
    }
