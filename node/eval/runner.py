"""Run the node's models on an evaluation cohort and score them against the truth.

Per study, :func:`score_study` turns the detector's candidates and the analyzer's lesions into
plain records (FROC candidates, matched lesions); :func:`summarize` turns the records of the
whole cohort into the figures. Both work on hand-made inputs too, which is how they are tested.

Detection candidates come from a second decode of the detector's output at a low threshold
(the analyzer keeps only lesions above its own threshold). The detector runs once per study:
:class:`DetectorCache` hands the analyzer the outputs already computed for the FROC.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from node.config import Settings
from node.eval import metrics, retrieval
from node.eval.cohort import EvalStudy
from node.inference import preprocess as pp
from node.inference.analyzer import (
    DETECTOR_ZOOM,
    Analysis,
    Analyzer,
    Detection,
    check_volume,
    detect_on,
    group_detections,
    refine_boxes,
    verified_score,
)
from node.inference.backend import InferenceBackend
from node.lesions.matching import (
    SyntheticCohort,
    groups_from_labels,
    match_lesions,
    pairwise_accuracy,
    tune_thresholds,
)

logger = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5
KEY_SLICE_CRITERION = (
    "2D box IoU >= 0.5 with the truth box, on the canvas slice nearest the lesion's key slice; "
    "a detection's box is the segmenter's mask around it, as the node reports it (where the mask is empty, the detector's box "
    "at the node's score for it, x0.3: NO_MASK_SCORE)"
)
VOLUME_CRITERION = (
    "centre of the detection's key box (nearest voxel) inside the lesion's 3D truth mask; the detector's 3D groups at its own scores"
)
LESION_MATCH_CRITERION = "analyzer lesion's key-box centre inside the truth mask; one-to-one, best score first"


class DetectorCache:
    """An ``InferenceBackend`` that remembers detector outputs by input, so the analyzer reuses
    the ones computed for the FROC instead of running the detector a second time."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend
        self._cache: dict[bytes, dict[str, np.ndarray]] = {}
        self.hits = 0

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model != "lesion_detector":
            return self.backend.infer(model, inputs)
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(inputs):
            array = np.ascontiguousarray(inputs[name], dtype=np.float32)
            digest.update(name.encode())
            digest.update(str(array.shape).encode())
            digest.update(array.data)
        key = digest.digest()
        if key in self._cache:
            self.hits += 1
            return self._cache[key]
        out = self.backend.infer(model, inputs)
        self._cache[key] = out
        return out

    def clear(self) -> None:
        self._cache.clear()

    def model_versions(self) -> dict[str, str]:
        return self.backend.model_versions()

    def model_parameters(self, model: str) -> dict[str, str]:
        return self.backend.model_parameters(model)

    def close(self) -> None:
        self.clear()
        self.backend.close()


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One detector candidate: score and the truth lesion ids it hits (empty: false positive).

    ``overlaps`` holds, for a key-slice candidate, its box IoU with each truth lesion of that key
    image (hit or not): the per-lesion report tells a box just short of 0.5 from no candidate.
    """

    score: float
    hits: frozenset[str]
    overlaps: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, kw_only=True)
class MatchedLesion:
    """A found lesion paired with its truth lesion, with what is needed for the cohort figures."""

    lesion_id: str
    track_id: str
    patient: str
    timepoint: int
    truth_type: str
    predicted_type: str
    dice: float
    truth_long_axis_mm: float
    location_mm: tuple[float, float, float]
    embedding: np.ndarray | None
    score: float | None = None
    long_axis_bias_mm: float | None = None  # found minus truth: negative is measured short
    short_axis_bias_mm: float | None = None

    @property
    def long_axis_error_mm(self) -> float | None:
        return None if self.long_axis_bias_mm is None else abs(self.long_axis_bias_mm)

    @property
    def short_axis_error_mm(self) -> float | None:
        return None if self.short_axis_bias_mm is None else abs(self.short_axis_bias_mm)


@dataclass(frozen=True, kw_only=True)
class StudyScore:
    """Everything one study contributes to the cohort figures."""

    patient: str
    timepoint: int
    analysed: bool
    reason: str | None = None
    truth_lesions: int = 0
    key_images: int = 0
    key_candidates: list[Candidate] = field(default_factory=list)
    volume_candidates: list[Candidate] = field(default_factory=list)
    matched: list[MatchedLesion] = field(default_factory=list)
    truth_embedded: list[retrieval.TruthEmbedding] = field(default_factory=list)
    found_lesions: int = 0
    spearman: float | None = None
    body_part: tuple[np.ndarray, np.ndarray] | None = None  # (score, body-frame z mm) of every slice
    seconds: float = 0.0
    lesions: list[dict[str, object]] = field(default_factory=list)  # one row per truth lesion (``lesion_rows``)


def detect_candidates(
    backend: InferenceBackend, volume, *, threshold: float, per_slice: int = 20, batch: int = 8, zoom: float = DETECTOR_ZOOM
) -> tuple[pp.Canvas, list[Detection]]:
    """Every detector peak above ``threshold`` on every canvas slice of ``volume``, with the
    zoomed pass's (``zoom``; 1: none)."""
    canvas = pp.make_canvas(volume.pixels, volume.spacing)
    keys = np.arange(canvas.pixels.shape[0])
    return canvas, detect_on(backend, canvas, keys, threshold=threshold, per_slice=per_slice, batch=batch, zoomed=_zoomed(volume, canvas, zoom))


def _zoomed(volume, canvas: pp.Canvas, zoom: float) -> pp.Canvas | None:
    return pp.zoomed_canvas(volume.pixels, volume.spacing, canvas, zoom) if zoom > 1.0 else None


def detection_box(volume, canvas: pp.Canvas, d: Detection) -> tuple[float, tuple[float, float, float, float]]:
    """Volume slice (fractional) and box (col0, row0, col1, row1) of a canvas detection."""
    kv, rv, cv = canvas.to_volume(d.k, d.row, d.col)
    _, rs, cs = volume.spacing
    hw, hh = d.width_mm / 2.0 / cs, d.height_mm / 2.0 / rs
    return kv, (cv - hw, rv - hh, cv + hw, rv + hh)


def _label_at(labels: np.ndarray, slice_: float, row: float, col: float) -> int:
    n, rows, cols = labels.shape
    k, r, c = int(round(slice_)), int(round(row)), int(round(col))
    if not (0 <= k < n and 0 <= r < rows and 0 <= c < cols):
        return 0
    return int(labels[k, r, c])


def lesions_by_key_image(study: EvalStudy, canvas: pp.Canvas) -> dict[int, list]:
    """The study's truth lesions by key image: the canvas slice nearest each lesion's key slice."""
    n_canvas = canvas.pixels.shape[0]
    by_image: dict[int, list] = {}
    for lesion in study.lesions:
        k = int(np.clip(round(lesion.key_slice / canvas.slice_step), 0, n_canvas - 1))
        by_image.setdefault(k, []).append(lesion)
    return by_image


def key_image_detections(study: EvalStudy, canvas: pp.Canvas, detections: list[Detection]) -> list[int]:
    """Indices of the detections on a canvas slice that is some lesion's key image."""
    keys = lesions_by_key_image(study, canvas)
    return [i for i, d in enumerate(detections) if d.k in keys]


def score_detections(
    study: EvalStudy,
    canvas: pp.Canvas,
    detections: list[Detection],
    *,
    key_boxes: dict[int, tuple[float, float, float, float] | None] | None = None,
) -> tuple[int, list[Candidate], list[Candidate]]:
    """Key-slice and per-volume FROC candidates of one study.

    ``key_boxes`` gives, by index into ``detections``, the box the node reports for a detection
    (``refine_boxes``); where it gives none, the segmenter found nothing: the detector's own box
    is scored, at the node's ``verified_score``. Without ``key_boxes``, the detector's boxes and
    scores alone.

    Returns
    -------
    tuple
        (number of key images, key-slice candidates, per-volume candidates).
    """
    volume = study.volume
    by_image = lesions_by_key_image(study, canvas)
    key_candidates = []
    for index, d in enumerate(detections):
        truths = by_image.get(d.k)
        if not truths:
            continue
        refined = key_boxes.get(index) if key_boxes is not None else None
        score = d.score if key_boxes is None else verified_score(d.score, refined)
        box = refined or detection_box(volume, canvas, d)[1]
        overlaps = metrics.iou(box, np.array([t.box for t in truths]))
        hits = frozenset(t.lesion_id for t, o in zip(truths, overlaps, strict=True) if o >= IOU_THRESHOLD)
        key_candidates.append(
            Candidate(score=score, hits=hits, overlaps=tuple((t.lesion_id, float(o)) for t, o in zip(truths, overlaps, strict=True)))
        )

    by_label = {lesion.label: lesion.lesion_id for lesion in study.lesions}
    rows, cols = volume.pixels.shape[1:]
    volume_candidates = []
    for group in group_detections(detections):
        kv, box = detection_box(volume, canvas, group[0])
        rv, cv = 0.5 * (box[1] + box[3]), 0.5 * (box[0] + box[2])
        if not (0 <= rv <= rows - 1 and 0 <= cv <= cols - 1):
            continue  # the analyzer drops these too
        label = _label_at(study.lesion_labels, kv, rv, cv)
        hit = frozenset({by_label[label]}) if label in by_label else frozenset()
        volume_candidates.append(Candidate(score=group[0].score, hits=hit))
    return len(by_image), key_candidates, volume_candidates


def score_analysis(study: EvalStudy, analysis: Analysis) -> list[MatchedLesion]:
    """Pair the analyzer's lesions with truth lesions and measure each pair."""
    volume = study.volume
    by_label = {lesion.label: lesion for lesion in study.lesions}
    taken: set[int] = set()
    matched = []
    for found in sorted(analysis.lesions, key=lambda x: -x.score):
        c0, r0, c1, r1 = found.box
        label = _label_at(study.lesion_labels, found.key_slice, 0.5 * (r0 + r1), 0.5 * (c0 + c1))
        if label not in by_label or label in taken:
            continue
        taken.add(label)
        truth = by_label[label]
        truth_mask = study.lesion_labels == label
        predicted = np.zeros(volume.pixels.shape, dtype=bool)
        if found.mask is not None:
            s, r, c = found.mask_offset
            ds, dr, dc = found.mask.shape
            predicted[s : s + ds, r : r + dr, c : c + dc] = found.mask[
                : max(0, predicted.shape[0] - s), : max(0, predicted.shape[1] - r), : max(0, predicted.shape[2] - c)
            ]
        long_bias = short_bias = None
        if found.recist is not None:
            long_bias = found.recist.long_axis_mm - truth.long_axis_mm
            short_bias = found.recist.short_axis_mm - truth.short_axis_mm
        matched.append(
            MatchedLesion(
                lesion_id=truth.lesion_id,
                track_id=f"{study.patient}/{truth.track_id}",
                patient=study.patient,
                timepoint=study.timepoint,
                truth_type=str(truth.lesion_type),
                predicted_type=str(found.lesion_type),
                dice=metrics.dice(predicted, truth_mask),
                long_axis_bias_mm=long_bias,
                short_axis_bias_mm=short_bias,
                score=float(found.score),
                truth_long_axis_mm=truth.long_axis_mm,
                location_mm=tuple(float(v) for v in study.body_frame(truth.center_patient)),  # type: ignore[arg-type]
                embedding=None if found.embedding is None else np.asarray(found.embedding, dtype=np.float32),
            )
        )
    return matched


# Columns of the per-lesion report (``ainode eval --lesions FILE``), in order.
LESION_COLUMNS = (
    "study", "lesion_id", "track_id", "type", "site", "appearance", "long_axis_mm", "short_axis_mm",
    "key_slice", "slice_mm", "pixel_mm", "key_slice_result", "key_slice_best_iou", "key_slice_hit_score",
    "volume_hit_score", "found", "found_score", "found_type", "dice", "long_axis_error_mm", "short_axis_error_mm",
)  # fmt: skip


def lesion_rows(
    study: EvalStudy,
    *,
    key_candidates: Sequence[Candidate] = (),
    volume_candidates: Sequence[Candidate] = (),
    matched: Sequence[MatchedLesion] = (),
    reason: str | None = None,
) -> list[dict[str, object]]:
    """One row per truth lesion of ``study``: what the detector and the analyzer made of it.

    ``key_slice_result`` is ``hit`` (a key-slice candidate at IoU >= 0.5, at any score kept for
    the FROC), ``box IoU < 0.5`` (candidates overlap it, none enough), ``missed`` (no candidate
    overlaps it) or ``not analysed: <reason>``. Errors are signed, found minus truth (negative:
    measured short); ``found`` says whether an analyzer lesion was matched to it.
    """
    best_iou: dict[str, float] = {}
    hit_score: dict[str, float] = {}
    for c in key_candidates:
        for lesion_id, o in c.overlaps:
            best_iou[lesion_id] = max(best_iou.get(lesion_id, 0.0), o)
        for lesion_id in c.hits:
            hit_score[lesion_id] = max(hit_score.get(lesion_id, 0.0), c.score)
    volume_score: dict[str, float] = {}
    for c in volume_candidates:
        for lesion_id in c.hits:
            volume_score[lesion_id] = max(volume_score.get(lesion_id, 0.0), c.score)
    by_id = {m.lesion_id: m for m in matched}
    spacing = study.volume.spacing
    rows = []
    for t in study.lesions:
        m = by_id.get(t.lesion_id)
        if reason is not None:
            result = f"not analysed: {reason}"
        elif t.lesion_id in hit_score:
            result = "hit"
        elif best_iou.get(t.lesion_id, 0.0) > 0.0:
            result = f"box IoU < {IOU_THRESHOLD:g}"
        else:
            result = "missed"
        rows.append({
            "study": f"{study.patient}/T{study.timepoint}",
            "lesion_id": t.lesion_id,
            "track_id": t.track_id,
            "type": str(t.lesion_type),
            "site": t.site,
            "appearance": t.appearance,
            "long_axis_mm": round(t.long_axis_mm, 2),
            "short_axis_mm": round(t.short_axis_mm, 2),
            "key_slice": t.key_slice,
            "slice_mm": round(float(spacing[0]), 2),
            "pixel_mm": round(float(spacing[1]), 3),
            "key_slice_result": result,
            "key_slice_best_iou": round(best_iou.get(t.lesion_id, 0.0), 3),
            "key_slice_hit_score": _rounded(hit_score.get(t.lesion_id)),
            "volume_hit_score": _rounded(volume_score.get(t.lesion_id)),
            "found": m is not None,
            "found_score": None if m is None else _rounded(m.score),
            "found_type": None if m is None else m.predicted_type,
            "dice": None if m is None else round(m.dice, 3),
            "long_axis_error_mm": None if m is None else _rounded(m.long_axis_bias_mm, 2),
            "short_axis_error_mm": None if m is None else _rounded(m.short_axis_bias_mm, 2),
        })  # fmt: skip
    return rows


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def by_type(rows: Sequence[dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per truth lesion type, from analysed studies' ``lesion_rows``: lesions, key-slice hits at any
    score, matched lesions, their Dice and long-axis error (mean absolute and mean signed)."""
    out: dict[str, dict[str, object]] = {}
    for kind in sorted({str(r["type"]) for r in rows}):
        group = [r for r in rows if r["type"] == kind and not str(r["key_slice_result"]).startswith("not analysed")]
        errors = [float(r["long_axis_error_mm"]) for r in group if r["long_axis_error_mm"] is not None]  # type: ignore[arg-type]
        out[kind] = {
            "lesions": len(group),
            "key_slice_hits_any_score": sum(r["key_slice_result"] == "hit" for r in group),
            "found": sum(bool(r["found"]) for r in group),
            "dice": _mean(float(r["dice"]) for r in group if r["dice"] is not None),  # type: ignore[arg-type]
            "long_axis_mae_mm": _mean(abs(e) for e in errors),
            "long_axis_bias_mm": _mean(errors),
        }
    return out


def evaluate_study(
    study: EvalStudy,
    backend: DetectorCache,
    *,
    froc_threshold: float = 0.05,
    detection_threshold: float = 0.5,
    detector_zoom: float = DETECTOR_ZOOM,
) -> StudyScore:
    """Run the models on one study and score them."""
    t0 = time.perf_counter()
    reason = check_volume(study.volume)
    if reason is not None:
        logger.warning("study %s/T%d not analysed: %s", study.patient, study.timepoint, reason)
        return StudyScore(
            patient=study.patient, timepoint=study.timepoint, analysed=False, reason=reason, truth_lesions=len(study.lesions),
            lesions=lesion_rows(study, reason=reason),
        )
    backend.clear()
    canvas, detections = detect_candidates(backend, study.volume, threshold=froc_threshold, zoom=detector_zoom)
    on_key = key_image_detections(study, canvas, detections)
    refined = refine_boxes(backend, study.volume, canvas, [detections[i] for i in on_key])
    key_images, key_candidates, volume_candidates = score_detections(
        study, canvas, detections, key_boxes=dict(zip(on_key, refined, strict=True))
    )
    analysis = Analyzer(backend, detection_threshold=detection_threshold, detector_zoom=detector_zoom).analyze(study.volume)
    backend.clear()
    spearman = metrics.spearman(analysis.body_part_scores, study.slice_z())
    truth_embedded = (
        retrieval.embed_truth_lesions(study, backend, analysis.body_part_scores) if analysis.not_analysed is None else []
    )
    matched = score_analysis(study, analysis)
    return StudyScore(
        patient=study.patient,
        timepoint=study.timepoint,
        analysed=analysis.not_analysed is None,
        reason=analysis.not_analysed,
        truth_lesions=len(study.lesions),
        key_images=key_images,
        key_candidates=key_candidates,
        volume_candidates=volume_candidates,
        matched=matched,
        truth_embedded=truth_embedded,
        found_lesions=len(analysis.lesions),
        spearman=spearman,
        body_part=(np.asarray(analysis.body_part_scores, dtype=np.float64), study.body_z()),
        seconds=time.perf_counter() - t0,
        lesions=lesion_rows(
            study, key_candidates=key_candidates, volume_candidates=volume_candidates, matched=matched, reason=analysis.not_analysed
        ),
    )


def key_image_candidates(
    study: EvalStudy, backend: InferenceBackend, *, threshold: float, zoom: float = DETECTOR_ZOOM
) -> tuple[int, list[Candidate]]:
    """The key-slice FROC's candidates of one study, with the detector run on its key images only.

    The same candidates as ``evaluate_study``'s (``detect_on``) at a few percent of its cost.
    Returns the number of key images and the candidates.
    """
    canvas = pp.make_canvas(study.volume.pixels, study.volume.spacing)
    keys = np.array(sorted(lesions_by_key_image(study, canvas)))
    detections = detect_on(backend, canvas, keys, threshold=threshold, zoomed=_zoomed(study.volume, canvas, zoom))
    refined = refine_boxes(backend, study.volume, canvas, detections)
    n_images, candidates, _ = score_detections(study, canvas, detections, key_boxes=dict(enumerate(refined)))
    return n_images, candidates


#: Lesion size classes of the key-slice check's table (long axis, mm).
KEY_CHECK_SIZES = ((0.0, 10.0), (10.0, 30.0), (30.0, float("inf")))


def _size_class(long_axis_mm: float) -> str:
    low, high = next(r for r in KEY_CHECK_SIZES if r[0] <= long_axis_mm < r[1])
    return f"{low:g}-{high:g} mm" if np.isfinite(high) else f">= {low:g} mm"


def key_slice_check(
    studies: Iterable[EvalStudy],
    backend: InferenceBackend,
    *,
    froc_threshold: float = 0.05,
    total: int | None = None,
    progress: bool = True,
    zoom: float = DETECTOR_ZOOM,
) -> dict[str, object]:
    """``ainode eval --key-check``: the key-slice FROC alone (detector on key images, boxes from the
    segmenter, as the full evaluation scores them), with hits, boxes off and misses per lesion
    type and size class."""
    from tqdm import tqdm

    candidates: list[Candidate] = []
    n_images = n_truth = 0
    by_type: dict[str, dict[str, int]] = {}
    by_size: dict[str, dict[str, int]] = {}
    not_analysed = 0
    for study in tqdm(studies, total=total, desc="key-check", unit="study", disable=not progress):
        if check_volume(study.volume) is not None:
            not_analysed += 1
            continue
        images, found = key_image_candidates(study, backend, threshold=froc_threshold, zoom=zoom)
        candidates += found
        n_images += images
        n_truth += len(study.lesions)
        for lesion, row in zip(study.lesions, lesion_rows(study, key_candidates=found), strict=True):
            result = str(row["key_slice_result"])
            for table, key in ((by_type, str(lesion.lesion_type)), (by_size, _size_class(lesion.long_axis_mm))):
                counts = table.setdefault(key, {"lesions": 0, "hit": 0, "box IoU < 0.5": 0, "missed": 0})
                counts["lesions"] += 1
                counts[result] += 1
    froc = _froc(candidates, n_truth=n_truth, n_images=n_images)
    order = [_size_class(low) for low, _ in KEY_CHECK_SIZES]
    by_size = {k: by_size[k] for k in order if k in by_size}
    return {
        "criterion": KEY_SLICE_CRITERION,
        "detector_zoom": zoom,
        "froc": froc,
        "candidates_per_image": len(candidates) / n_images if n_images else None,
        "by_type": dict(sorted(by_type.items())),
        "by_size": by_size,
        "not_analysed": not_analysed,
    }


def _froc(candidates: list[Candidate], *, n_truth: int, n_images: int) -> dict[str, object]:
    if n_images < 1 or n_truth < 1:
        return {"sensitivity": {str(r): None for r in metrics.FROC_RATES}, "images": n_images, "lesions": n_truth, "candidates": len(candidates)}
    sens, fps = metrics.froc_curve([c.score for c in candidates], [c.hits for c in candidates], n_truth=n_truth, n_images=n_images)
    at = metrics.sensitivity_at_fps(sens, fps)
    return {
        "sensitivity": {str(r): v for r, v in zip(metrics.FROC_RATES, at, strict=True)},
        "images": n_images,
        "lesions": n_truth,
        "candidates": len(candidates),
        "max_sensitivity": float(sens[-1]) if sens.size else 0.0,
    }


def _across_patients(scores: Sequence[StudyScore]) -> dict[str, float | None]:
    """How far the body-part score is one body position in every patient (the embedder's z cue
    compares lesions of different patients by it): Spearman of every slice's score with its
    body-frame z, all studies pooled, and the spread (SD, mm) of z about a line fitted to the
    score. The per-volume Spearman (the target) cannot see a score that is ordered in each
    patient but offset or stretched from one patient to the next."""
    pairs = [s.body_part for s in scores if s.body_part is not None and len(s.body_part[0]) == len(s.body_part[1])]
    if len(pairs) < 2:
        return {"spearman_pooled": None, "z_spread_mm": None}
    score = np.concatenate([p[0] for p in pairs])
    z = np.concatenate([p[1] for p in pairs])
    if np.ptp(score) == 0:
        return {"spearman_pooled": None, "z_spread_mm": None}
    slope, intercept = np.polyfit(score, z, 1)
    return {"spearman_pooled": metrics.spearman(score, z), "z_spread_mm": float(np.std(z - (slope * score + intercept)))}


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def summarize(scores: list[StudyScore], settings: Settings) -> dict[str, object]:
    """Cohort figures from per-study scores (JSON-ready; None where a figure has no data)."""
    analysed = [s for s in scores if s.analysed]
    n_truth = sum(s.truth_lesions for s in analysed)
    key_images = sum(s.key_images for s in analysed)
    matched = [m for s in analysed for m in s.matched]
    with_embedding = [m for m in matched if m.embedding is not None]

    out: dict[str, object] = {
        "studies": len(scores),
        "studies_analysed": len(analysed),
        "not_analysed": {f"{s.patient}/T{s.timepoint}": s.reason for s in scores if not s.analysed},
        "truth_lesions": n_truth,
        "found_lesions": sum(s.found_lesions for s in analysed),
        "matched_lesions": len(matched),
        "lesion_match_criterion": LESION_MATCH_CRITERION,
        "detection": {
            "key_slice": {"criterion": KEY_SLICE_CRITERION, **_froc([c for s in analysed for c in s.key_candidates], n_truth=n_truth, n_images=key_images)},
            "per_volume": {"criterion": VOLUME_CRITERION, **_froc([c for s in analysed for c in s.volume_candidates], n_truth=n_truth, n_images=len(analysed))},
            "detector_zoom": settings.detector_zoom,
        },
        "segmentation": {"dice": _mean(m.dice for m in matched), "lesions": len(matched)},
        "recist": {
            "long_axis_mae_mm": _mean(m.long_axis_error_mm for m in matched),
            "short_axis_mae_mm": _mean(m.short_axis_error_mm for m in matched),
            "lesions": sum(m.long_axis_error_mm is not None for m in matched),
            "without_measurement": sum(m.long_axis_error_mm is None for m in matched),
        },
        "body_part": {"spearman": _mean(s.spearman for s in analysed), "volumes": len(analysed), **_across_patients(analysed)},
        "type": {"detector_accuracy": _mean(float(m.truth_type == m.predicted_type) for m in matched)},
    }

    emb = np.stack([m.embedding for m in with_embedding]) if with_embedding else np.zeros((0, 1), np.float32)
    found = retrieval.retrieval_figures(
        emb,
        patients=[m.patient for m in with_embedding],
        types=[m.truth_type for m in with_embedding],
        locations_mm=np.array([m.location_mm for m in with_embedding]),
        sizes_mm=[m.truth_long_axis_mm for m in with_embedding],
        k=5,
    )
    truth = [t for s in analysed for t in s.truth_embedded]
    truth_emb = np.stack([t.embedding for t in truth]) if truth else np.zeros((0, 1), np.float32)
    annotated = retrieval.retrieval_figures(
        truth_emb,
        patients=[t.patient for t in truth],
        types=[t.lesion_type for t in truth],
        locations_mm=np.array([t.location_mm for t in truth]),
        sizes_mm=[t.long_axis_mm for t in truth],
        k=5,
    )
    out["retrieval"] = _retrieval_summary(annotated, retrieval.TRUTH_PROTOCOL, with_lesions=True)
    out["retrieval_found"] = _retrieval_summary(
        found,
        "leave-one-out over the analyzer's lesions matched to truth lesions, same-patient neighbours excluded; location in the phantom's body frame",
    )
    out["type"]["knn_accuracy"] = annotated["knn_accuracy"]  # type: ignore[index]
    out["type"]["knn_accuracy_found"] = found["knn_accuracy"]  # type: ignore[index]
    out["matching"] = _matching(with_embedding, emb, settings)
    out["matching_truth"] = _matching_truth(truth, truth_emb, settings)
    out["by_type"] = by_type([r for s in analysed for r in s.lesions])
    out["timing"] = {"seconds_per_study": _mean(s.seconds for s in analysed)}
    return out


def _retrieval_summary(figures: dict, protocol: str, *, with_lesions: bool = False) -> dict[str, object]:
    """The summary's entry for one set of ``retrieval.retrieval_figures``."""
    out: dict[str, object] = {
        "precision_at_5": figures["precision"],
        "ceiling": figures["ceiling"],
        "location_error_mm": figures["location_error_mm"],
        "size_error_mm": figures["size_error_mm"],
        "queries": figures["queries"],
    }
    if with_lesions:
        out["lesions"] = figures["lesions"]
    out["protocol"] = protocol
    return out


def graph_accuracy(
    lesions: Sequence[MatchedLesion | retrieval.TruthEmbedding], emb: np.ndarray, settings: Settings
) -> tuple[dict[str, object], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Algorithm 1 with the settings' thresholds on ``lesions`` (their embeddings ``emb``) against
    the true tracks: pairwise precision, recall and the number of true pairs.

    Also returns the (patient, study, track) indices the figures were computed on.
    """
    _, patient = np.unique([m.patient for m in lesions], return_inverse=True)
    _, study = np.unique([f"{m.patient}/{m.timepoint}" for m in lesions], return_inverse=True)
    _, truth = np.unique([m.track_id for m in lesions], return_inverse=True)
    patient, study, truth = patient.ravel(), study.ravel(), truth.ravel()
    ids = [m.lesion_id for m in lesions]
    labels = match_lesions(emb, study, t1=settings.match_t1, t2=settings.match_t2, patient=patient)
    precision, recall = pairwise_accuracy(groups_from_labels(labels, ids), groups_from_labels(truth, ids))
    figures: dict[str, object] = {
        "precision": precision,
        "recall": recall,
        "true_pairs": int(sum(c * (c - 1) // 2 for c in np.bincount(truth))),
    }
    return figures, (patient, study, truth)


def _matching(lesions: list[MatchedLesion], emb: np.ndarray, settings: Settings) -> dict[str, object]:
    result: dict[str, object] = {"t1": settings.match_t1, "t2": settings.match_t2, "lesions": len(lesions)}
    if not lesions:
        result.update(precision=None, recall=None, tuned=None)
        return result
    figures, (patient, study, truth) = graph_accuracy(lesions, emb, settings)
    cohort = SyntheticCohort(
        embeddings=emb.astype(np.float32),
        patient=patient.astype(np.int64),
        study=study.astype(np.int64),
        study_time=np.array([m.timepoint for m in lesions], dtype=np.int64),
        truth=truth.astype(np.int64),
    )
    tuned = tune_thresholds(cohort)
    result.update(
        figures,
        tuned={"t1": tuned.t1, "t2": tuned.t2, "precision": tuned.precision, "recall": tuned.recall, "applied": False},
    )
    return result


def _matching_truth(lesions: list[retrieval.TruthEmbedding], emb: np.ndarray, settings: Settings) -> dict[str, object]:
    """Algorithm 1 on every truth lesion's embedding: the embedder's share of the graph's accuracy."""
    result: dict[str, object] = {"t1": settings.match_t1, "t2": settings.match_t2, "lesions": len(lesions)}
    if not lesions:
        result.update(precision=None, recall=None)
        return result
    result.update(graph_accuracy(lesions, emb, settings)[0])
    return result


def evaluate_cohort(
    studies: Iterable[EvalStudy],
    backend: InferenceBackend,
    settings: Settings,
    *,
    total: int | None = None,
    froc_threshold: float = 0.05,
    progress: bool = True,
) -> tuple[dict[str, object], list[StudyScore]]:
    """Run and score every study (tqdm progress bar); return the cohort summary and the scores."""
    from tqdm import tqdm

    if not 0.0 < froc_threshold < 1.0:
        raise ValueError(f"froc_threshold: must be in (0, 1), got {froc_threshold}")
    cached = backend if isinstance(backend, DetectorCache) else DetectorCache(backend)
    scores = []
    for study in tqdm(studies, total=total, desc="eval", unit="study", disable=not progress):
        scores.append(evaluate_study(
            study, cached, froc_threshold=froc_threshold, detection_threshold=settings.detection_threshold,
            detector_zoom=settings.detector_zoom,
        ))
    return summarize(scores, settings), scores
