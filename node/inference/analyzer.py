"""From a CT volume to measured lesions: body-part scores, detection, segmentation, embedding.

``Analyzer(backend).analyze(volume)`` runs the four models through any ``InferenceBackend``
and returns an ``Analysis``. A volume the models were not trained for gets
``not_analysed = "reason"`` and no lesions, rather than guesses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from node.imaging.volume import Volume
from node.inference import preprocess as pp
from node.inference.backend import DEFAULT_MASK_THRESHOLD, InferenceBackend, InferenceError
from node.inference.dedup import suppress_duplicates
from node.inference.recist import measure_recist
from node.lesions.records import Lesion, LesionType

logger = logging.getLogger(__name__)

LESION_TYPES: tuple[LesionType, ...] = tuple(LesionType)  # model class order
# The body-part score rises about 0.01 per mm of body (-5 to +4 from pelvis to neck); divided by
# this, the embedder's z cue moves one unit per 250 mm, as x and y move one per body width.
SSBR_SCORE_SCALE = 2.5

MIN_ROWS = 64
MIN_FOV_MM = 120.0
MIN_EXTENT_MM = 16.0
MAX_SLICE_MM = 5.0
FIT_ROUNDS = 3  # key-slice re-segmentations on a larger crop when the mask fills the crop
FIT_FILL = 0.7  # ... that is, when the mask's larger side exceeds this share of the crop's side
# The detector boxes a large lesion short (a 50 mm lesion at 30 mm), and the segmenter, trained on
# lesions filling 40-60 % of its crop, then outlines the part of it that fills a crop twice that
# box: a plausible mask, half a lesion wide, that FIT_FILL cannot tell from a whole one. So the key
# slice is segmented again on a crop sized for a lesion FIT_GROW times the mask, centred on it,
# keeping what overlaps it; the larger mask is taken while it grows by more than FIT_GAIN (one the
# crop already held whole keeps its size), at most FIT_GROW_ROUNDS times. Chosen on unseen
# synthetic patients; the figures are in triton_models/cards/lesion_detector.md.
FIT_GROW = 1.5
FIT_GAIN = 1.25
FIT_GROW_ROUNDS = 3
PIXEL_MM_RANGE = (0.4, 5.0)  # the small synthetic preset reaches 4.8 mm
MAX_FOV_MM = 600.0


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """What the models found in one volume."""

    lesions: list[Lesion]
    body_part_scores: np.ndarray
    not_analysed: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Detection:
    """One detector peak on one canvas slice (canvas pixel coordinates, sizes in mm)."""

    k: int
    row: float
    col: float
    height_mm: float
    width_mm: float
    score: float
    type_index: int


def check_volume(volume: Volume) -> str | None:
    """Why ``volume`` cannot be analysed by these models, or None when it can."""
    if volume.pixels.ndim != 3:
        return f"not a 3D stack (shape {volume.pixels.shape})"
    n, rows, cols = volume.pixels.shape
    ss, rs, cs = volume.spacing
    if rows < MIN_ROWS or cols < MIN_ROWS:
        return f"volume too small: {rows}x{cols} pixels (need at least {MIN_ROWS}x{MIN_ROWS})"
    if min(rows * rs, cols * cs) < MIN_FOV_MM:
        return f"volume too small: field of view {rows * rs:.0f}x{cols * cs:.0f} mm (need {MIN_FOV_MM:.0f} mm)"
    if max(rows * rs, cols * cs) > MAX_FOV_MM:
        return f"outside the trained range: field of view {max(rows * rs, cols * cs):.0f} mm (at most {MAX_FOV_MM:.0f} mm)"
    if n < 3 or (n - 1) * ss < MIN_EXTENT_MM:
        return f"volume too thin: {n} slices covering {(n - 1) * ss:.1f} mm (need {MIN_EXTENT_MM:.0f} mm)"
    if ss <= 0 or ss > MAX_SLICE_MM:
        return f"outside the trained range: slice spacing {ss:.2f} mm (need 0-{MAX_SLICE_MM:.0f} mm)"
    if not (PIXEL_MM_RANGE[0] <= rs <= PIXEL_MM_RANGE[1] and PIXEL_MM_RANGE[0] <= cs <= PIXEL_MM_RANGE[1]):
        return f"outside the trained range: pixel spacing {rs:.2f}x{cs:.2f} mm (need {PIXEL_MM_RANGE[0]}-{PIXEL_MM_RANGE[1]} mm)"
    normal = volume.affine[:3, 2] / max(np.linalg.norm(volume.affine[:3, 2]), 1e-9)
    if abs(normal[2]) < 0.9:
        return "outside the trained range: not an axial stack"
    sample = volume.pixels[:: max(1, n // 8), ::4, ::4]
    lo, hi = np.percentile(sample, [1, 99])
    if hi < -200 or hi - lo < 200 or lo < -3000 or hi > 10000:
        return f"outside the trained range: pixel values {lo:.0f}..{hi:.0f} do not look like CT in HU"
    return None


def decode_detections(
    k0: int,
    heatmap: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    threshold: float,
    *,
    per_slice: int = 10,
) -> list[Detection]:
    """Peaks of a detector output batch (B, 8, H, W) starting at canvas slice ``k0``.

    The detector's centre (cell + offset) is in pixel-edge coordinates (canvas pixel r spans
    r .. r + 1, see ``node.training.train.detector_targets``); detections are in the canvas's
    pixel-centre coordinates, those of ``Canvas.to_volume``.
    """
    peak = heatmap.max(axis=1)
    local_max = ndimage.maximum_filter(peak, size=(1, 3, 3), mode="constant") == peak
    b_idx, i_idx, j_idx = np.nonzero(local_max & (peak >= threshold))
    out = []
    # At most ``per_slice`` peaks per slice, best first.
    order = np.lexsort((-peak[b_idx, i_idx, j_idx], b_idx))
    b_idx, i_idx, j_idx = b_idx[order], i_idx[order], j_idx[order]
    rank = np.arange(len(b_idx)) - np.searchsorted(b_idx, b_idx)
    keep = rank < per_slice
    for b, i, j in zip(b_idx[keep], i_idx[keep], j_idx[keep], strict=True):
        h_mm = float(np.clip(size[b, 0, i, j], pp.MIN_LESION_MM, pp.MAX_LESION_MM))
        w_mm = float(np.clip(size[b, 1, i, j], pp.MIN_LESION_MM, pp.MAX_LESION_MM))
        out.append(
            Detection(
                k=k0 + int(b),
                row=(i + float(offset[b, 0, i, j])) * pp.HEATMAP_STRIDE - 0.5,
                col=(j + float(offset[b, 1, i, j])) * pp.HEATMAP_STRIDE - 0.5,
                height_mm=h_mm,
                width_mm=w_mm,
                score=float(peak[b, i, j]),
                type_index=int(np.argmax(heatmap[b, :, i, j])),
            )
        )
    return out


# The detector's zoomed pass. The seed detects on 1 mm pixels; the canvas has 2 mm, where a 5 mm
# lesion is two or three pixels and the detector finds too few of them (key-slice misses were
# mostly under 10 mm). The body is run again at CANVAS_MM / DETECTOR_ZOOM pixels, in tiles; the
# peaks it finds under ZOOM_MAX_MM that the canvas pass has not (box IoU over ZOOM_OVERLAP on the
# same slice) join the canvas pass's, their scores weighed by ZOOM_SCORE: a lesion seen larger
# than it is scores less surely, and the many small peaks of the zoomed pass then rank after the
# canvas pass's own. A zoomed peak overlapping a canvas peak by less than ZOOM_OVERLAP, the usual
# non-maximum suppression overlap, is another box for what may be the same lesion: it is kept, as
# its box may be the one that fits. Chosen on unseen synthetic patients
# (triton_models/cards/lesion_detector.md).
DETECTOR_ZOOM = 1.5
ZOOM_MAX_MM = 10.0
ZOOM_SCORE = 0.5
ZOOM_OVERLAP = 0.5

# The segmenter as the detector's second opinion: a detection in whose crop the segmenter finds
# no lesion scores NO_MASK_SCORE times its detector score. On the key images of unseen synthetic
# patients, 985 of 2,247 candidates were such detections, and 2 of those hit a lesion: ranked
# down, the lesions the detector finds come at fewer false positives
# (triton_models/cards/lesion_detector.md). Under the analyzer's default 0.5 threshold no such
# detection can be a lesion: the node reports the lesions it could segment and measure.
NO_MASK_SCORE = 0.3


def detect_on(
    backend: InferenceBackend,
    canvas: pp.Canvas,
    keys: np.ndarray,
    *,
    threshold: float,
    per_slice: int = 20,
    batch: int = 8,
    zoomed: pp.Canvas | None = None,
) -> list[Detection]:
    """Every detector peak above ``threshold`` on the canvas slices ``keys`` (any order, gaps
    allowed), at most ``per_slice`` per slice and pass: the detector sees each slice with its
    neighbours, so a slice's peaks do not depend on which others are run.

    With ``zoomed`` (``pp.zoomed_canvas``), the zoomed pass's small lesions join them
    (``DETECTOR_ZOOM``), in canvas coordinates, scores at most ``ZOOM_SCORE``.
    """
    detections: list[Detection] = []
    for start in range(0, len(keys), batch):
        chunk = np.asarray(keys[start : start + batch], dtype=int)
        out = backend.infer("lesion_detector", {"image": pp.detector_inputs(canvas, chunk)})
        decoded = decode_detections(0, out["heatmap"], out["size"], out["offset"], threshold, per_slice=per_slice)
        detections += [replace(d, k=int(chunk[d.k])) for d in decoded]  # batch index -> canvas slice
    if zoomed is None or threshold >= ZOOM_SCORE:
        return detections
    extra: list[Detection] = []
    for start in range(0, len(keys), batch):
        chunk = np.asarray(keys[start : start + batch], dtype=int)
        extra += _detect_zoomed(backend, canvas, zoomed, chunk, threshold=threshold / ZOOM_SCORE, per_slice=per_slice)
    return merge_zoomed(detections, extra)


def _detect_zoomed(
    backend: InferenceBackend, canvas: pp.Canvas, zoomed: pp.Canvas, keys: np.ndarray, *, threshold: float, per_slice: int
) -> list[Detection]:
    """The zoomed pass on slices ``keys``: the detector on each tile of ``zoomed``, every heatmap
    cell taken from the tile it is most central in, peaks mapped to canvas coordinates."""
    image = pp.detector_inputs(zoomed, keys)
    rows, cols = image.shape[2:]
    side, cell = pp.CANVAS_SIZE, pp.HEATMAP_STRIDE
    n, h = len(keys), pp.CANVAS_SIZE // cell
    heat = np.zeros((n, len(LESION_TYPES), rows // cell, cols // cell), np.float32)
    size = np.zeros((n, 2, rows // cell, cols // cell), np.float32)
    offset = np.zeros_like(size)
    nearest = np.full((rows // cell, cols // cell), np.inf)
    ii, jj = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    from_centre = np.maximum(abs(ii - (h - 1) / 2.0), abs(jj - (h - 1) / 2.0))
    for r0 in pp.tile_starts(rows):
        for c0 in pp.tile_starts(cols):
            out = backend.infer("lesion_detector", {"image": np.ascontiguousarray(image[:, :, r0 : r0 + side, c0 : c0 + side])})
            cells = (slice(r0 // cell, r0 // cell + h), slice(c0 // cell, c0 // cell + h))
            take = from_centre < nearest[cells]
            nearest[cells][take] = from_centre[take]
            for whole, name in ((heat, "heatmap"), (size, "size"), (offset, "offset")):
                whole[:, :, cells[0], cells[1]][:, :, take] = out[name][:, :, take]
    zoom = canvas.row_step / zoomed.row_step
    found = []
    for d in decode_detections(0, heat, size, offset, threshold, per_slice=per_slice):
        k = int(keys[d.k])
        _, row, col = canvas.from_volume(*zoomed.to_volume(k, d.row, d.col))
        height, width = d.height_mm / zoom, d.width_mm / zoom
        if max(height, width) < ZOOM_MAX_MM:
            found.append(replace(d, k=k, row=row, col=col, height_mm=height, width_mm=width, score=d.score * ZOOM_SCORE))
    return found


def merge_zoomed(plain: list[Detection], zoomed: list[Detection]) -> list[Detection]:
    """``plain`` and the ``zoomed`` detections that no plain one on the same slice overlaps by
    more than ``ZOOM_OVERLAP`` (box IoU on the canvas)."""
    by_slice: dict[int, list[np.ndarray]] = {}
    for d in plain:
        by_slice.setdefault(d.k, []).append(_canvas_box(d))
    kept = [d for d in zoomed if d.k not in by_slice or _iou(_canvas_box(d), np.array(by_slice[d.k])).max() <= ZOOM_OVERLAP]
    return plain + kept


def _canvas_box(d: Detection) -> np.ndarray:
    """(col0, row0, col1, row1) of a detection on the canvas, in canvas pixels."""
    hh, hw = d.height_mm / 2.0 / pp.CANVAS_MM, d.width_mm / 2.0 / pp.CANVAS_MM
    return np.array([d.col - hw, d.row - hh, d.col + hw, d.row + hh])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area - inter, 1e-9)


def group_detections(detections: list[Detection], *, slice_gap: int = 2) -> list[list[Detection]]:
    """Greedy 3D grouping: the same lesion seen on neighbouring canvas slices becomes one group.

    Groups are returned best first; each group's first detection is its key.
    """
    groups: list[list[Detection]] = []
    for d in sorted(detections, key=lambda d: -d.score):
        for g in groups:
            key = g[0]
            ks = [x.k for x in g]
            if min(ks) - slice_gap <= d.k <= max(ks) + slice_gap:
                radius = max(key.height_mm, key.width_mm, 6.0) / 2.0 / pp.CANVAS_MM
                if np.hypot(d.row - key.row, d.col - key.col) <= radius:
                    g.append(d)
                    break
        else:
            groups.append([d])
    return groups


class Analyzer:
    """Runs the four lesion models on a volume through ``backend``.

    Parameters
    ----------
    backend:
        Any ``InferenceBackend`` (Triton or in-process ONNX Runtime).
    detection_threshold:
        Minimum score of a lesion: its key peak's detector score, times ``NO_MASK_SCORE`` where
        the segmenter finds nothing (``verified_score``).
    max_lesions:
        At most this many lesions per volume, best first.
    detector_zoom:
        The detector's zoomed pass (``detect_on``) at this zoom, when ``detection_threshold`` is
        under ``ZOOM_SCORE``; 1: none.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        *,
        detection_threshold: float = 0.5,
        max_lesions: int = 30,
        detector_batch: int = 8,
        detector_zoom: float = DETECTOR_ZOOM,
    ) -> None:
        if not 0.0 < detection_threshold < 1.0:
            raise ValueError(f"detection_threshold: must be in (0, 1), got {detection_threshold}")
        if not 1.0 <= detector_zoom <= 4.0:
            raise ValueError(f"detector_zoom: must be 1-4 (1: no zoomed pass), got {detector_zoom}")
        if max_lesions < 1:
            raise ValueError(f"max_lesions: must be at least 1, got {max_lesions}")
        self.backend = backend
        self.detection_threshold = detection_threshold
        self.max_lesions = max_lesions
        self.detector_batch = detector_batch
        self.detector_zoom = detector_zoom

    def analyze(self, volume: Volume) -> Analysis:
        """Find, segment, measure and embed the lesions of ``volume``."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        versions = self.backend.model_versions()
        reason = check_volume(volume)
        if reason is not None:
            logger.info("series %s not analysed: %s", volume.series_instance_uid, reason)
            return Analysis(
                lesions=[],
                body_part_scores=np.zeros(volume.pixels.shape[0] if volume.pixels.ndim == 3 else 0, np.float32),
                not_analysed=reason,
                timings=timings,
                model_versions=versions,
            )

        t = time.perf_counter()
        canvas = pp.make_canvas(volume.pixels, volume.spacing)
        timings["preprocess"] = time.perf_counter() - t

        t = time.perf_counter()
        canvas_scores = self.backend.infer("body_part_regressor", {"image": pp.ssbr_inputs(canvas)})["score"][:, 0]
        body_part_scores = canvas.per_slice(canvas_scores, volume.pixels.shape[0]).astype(np.float32)
        timings["body_part"] = time.perf_counter() - t

        t = time.perf_counter()
        # The zoomed pass's scores stay under ZOOM_SCORE: at a threshold above it, it cannot
        # give a lesion, and is not run.
        zoomed = None
        if self.detector_zoom > 1.0 and self.detection_threshold < ZOOM_SCORE:
            zoomed = pp.zoomed_canvas(volume.pixels, volume.spacing, canvas, self.detector_zoom)
        detections = detect_on(
            self.backend, canvas, np.arange(canvas.pixels.shape[0]), threshold=self.detection_threshold * 0.6,
            per_slice=10, batch=self.detector_batch, zoomed=zoomed,
        )
        groups = [
            g
            for g in group_detections(detections)
            if g[0].score >= self.detection_threshold and _inside(volume, canvas, g[0])
        ]
        groups = groups[: self.max_lesions]
        timings["detect"] = time.perf_counter() - t

        t = time.perf_counter()
        places = [_detection_place(volume, canvas, g[0]) for g in groups]
        segmented = [
            {"group": g, "score": verified_score(g[0].score, walked["key_box"]), **walked}
            for g, walked in zip(groups, walk_masks(self.backend, volume, places), strict=True)
        ]
        segmented = [item for item in segmented if item["score"] >= self.detection_threshold]
        timings["segment"] = time.perf_counter() - t

        t = time.perf_counter()
        lesions = suppress_duplicates(self._embed(volume, canvas, segmented, body_part_scores), volume)
        timings["embed"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        logger.info(
            "series %s: %d lesions in %.1f s", volume.series_instance_uid, len(lesions), timings["total"]
        )
        return Analysis(
            lesions=lesions,
            body_part_scores=body_part_scores,
            not_analysed=None,
            timings=timings,
            model_versions=versions,
        )

    def _embed(
        self, volume: Volume, canvas: pp.Canvas, segmented: list[dict], body_part_scores: np.ndarray
    ) -> list[Lesion]:
        if not segmented:
            return []
        ss, rs, cs = volume.spacing
        images, cues = [], []
        body = body_mask(canvas)
        for item in segmented:
            # Embed a lesion from its measured key-slice box, as training and the evaluation embed
            # annotated lesions (box_crop); from the size it was fitted at when there is no mask.
            if item["key_box"] is not None:
                center_rc, side = box_crop(item["key_box"], volume.spacing)
            else:
                center_rc, side = item["center_rc"], pp.embed_crop_side(item["size_mm"])
            image, cue = embedder_input(
                volume.pixels, volume.spacing, canvas, body, key_slice=item["key_slice"], center_rc=center_rc,
                side_mm=side, body_part_score=float(body_part_scores[item["key_slice"]]),
            )
            images.append(image)
            cues.append(cue)
        out = self.backend.infer(
            "lesion_embedder", {"image": np.stack(images), "cues": np.asarray(cues, dtype=np.float32)}
        )
        lesions = []
        for index, item in enumerate(segmented):
            key = item["group"][0]
            mask = item["mask"]
            off = item["offset"]
            key_mask = mask[item["key_m"]]
            recist = None
            volume_mm3 = None
            notes: tuple[str, ...] = ()
            rv, cv = item["center_rc"]
            lesion_mask = None
            mask_offset = (0, 0, 0)
            if key_mask.any():
                axes = measure_recist(key_mask, (rs, cs))
                recist = _shift_axes(axes, off[2], off[1])
                volume_mm3 = float(mask.sum() * ss * rs * cs)
                rr, cc = np.nonzero(key_mask)
                rv, cv = float(rr.mean() + off[1]), float(cc.mean() + off[2])
                box = item["key_box"]
                zs, ys, xs = np.nonzero(mask)
                lo = (zs.min(), ys.min(), xs.min())
                hi = (zs.max() + 1, ys.max() + 1, xs.max() + 1)
                lesion_mask = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].copy()
                mask_offset = (int(off[0] + lo[0]), int(off[1] + lo[1]), int(off[2] + lo[2]))
            else:
                notes = ("segmenter gave no mask on the key slice",)
            if lesion_mask is None:
                half_w = key.width_mm / 2.0 / cs
                half_h = key.height_mm / 2.0 / rs
                box = (float(cv - half_w), float(rv - half_h), float(cv + half_w), float(rv + half_h))
            lesion_type = LESION_TYPES[key.type_index]
            lesions.append(
                Lesion(
                    index=index,
                    key_slice=item["key_slice"],
                    box=box,
                    score=item["score"],
                    lesion_type=lesion_type,
                    recist=recist,
                    volume_mm3=volume_mm3,
                    mask=lesion_mask,
                    mask_offset=mask_offset,
                    center_patient=tuple(float(x) for x in volume.voxel_to_patient(cv, rv, item["key_slice"])),
                    body_part_score=float(body_part_scores[item["key_slice"]]),
                    embedding=out["embedding"][index].astype(np.float32),
                    site=lesion_type.value,
                    notes=notes,
                )
            )
        return lesions


@dataclass(frozen=True, kw_only=True)
class Fit:
    """Where to crop a lesion (``fit_lesions``) and its key-slice box from the segmenter's mask."""

    key_slice: int
    center_rc: tuple[float, float]
    size_mm: float
    box: tuple[float, float, float, float] | None  # (col0, row0, col1, row1); None: no mask


def fit_lesions(backend: InferenceBackend, volume: Volume, places: list[Fit]) -> list[Fit]:
    """Key-slice box of each lesion from the segmenter (``box`` None where it finds nothing).

    ``places`` hold the detector's slice, centre and size. The crop is twice the detector's box;
    a lesion the detector under-sizes would be cut at the crop's edge, so the slice is segmented
    again on a larger crop, centred on the mask, while the mask fills it (``_segment_slices``), and
    while a crop for a lesion ``FIT_GROW`` times the mask gives a larger mask (``_fit_masks``).
    """
    return [replace(p, box=None if m is None else m.box) for p, m in zip(places, _fit_masks(backend, volume, places), strict=True)]


def _fit_masks(backend: InferenceBackend, volume: Volume, places: list[Fit]) -> list[SliceMask | None]:
    """The mask of each place's slice: the component nearest its centre, the crop grown to fit,
    then grown while a larger crop gives a larger mask (``FIT_GROW``)."""
    masks = _segment_slices(backend, volume, [(p.key_slice, p.center_rc, p.size_mm) for p in places], [None] * len(places))
    growing = [i for i, m in enumerate(masks) if m is not None]
    for _ in range(FIT_GROW_ROUNDS):
        if not growing:
            break
        extents = {i: masks[i].extent_mm(volume.spacing) for i in growing}
        larger = _segment_slices(
            backend, volume,
            [(places[i].key_slice, masks[i].centre, FIT_GROW * extents[i]) for i in growing],
            [masks[i] for i in growing],
        )
        still = []
        for i, mask in zip(growing, larger, strict=True):
            if mask is not None and mask.extent_mm(volume.spacing) > FIT_GAIN * extents[i]:
                masks[i] = mask
                still.append(i)
        growing = still
    return masks


@dataclass(frozen=True)
class SliceMask:
    """A lesion's mask on one slice, kept as its bounding box's pixels (never empty).

    Masks are stored per slice for every lesion of a study: a whole 512x512 slice each would
    cost memory in proportion to the slice rather than to the lesion.
    """

    row0: int
    col0: int
    pixels: np.ndarray  # bool (rows, cols) of the bounding box

    @classmethod
    def of(cls, mask: np.ndarray, row0: int = 0, col0: int = 0) -> SliceMask | None:
        """The nonzero part of ``mask`` (placed at ``row0``, ``col0``); None when it is empty."""
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return None
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(int(row0 + r0), int(col0 + c0), mask[r0:r1, c0:c1].copy())

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(col0, row0, col1, row1) in ``Lesion.box``'s convention."""
        h, w = self.pixels.shape
        return _pixel_box(np.array([self.row0, self.row0 + h - 1]), np.array([self.col0, self.col0 + w - 1]))

    @property
    def centre(self) -> tuple[float, float]:
        """Centre (row, col) of the bounding box."""
        h, w = self.pixels.shape
        return (self.row0 + (h - 1) / 2.0, self.col0 + (w - 1) / 2.0)

    def extent_mm(self, spacing: tuple[float, float, float]) -> float:
        """Larger side (mm) of the bounding box, edge to edge."""
        h, w = self.pixels.shape
        return max(h * spacing[1], w * spacing[2])

    def within(self, row0: int, col0: int, shape: tuple[int, int]) -> np.ndarray:
        """This mask on the window of ``shape`` at (``row0``, ``col0``)."""
        out = np.zeros(shape, dtype=bool)
        h, w = self.pixels.shape
        r_lo, r_hi = max(row0, self.row0), min(row0 + shape[0], self.row0 + h)
        c_lo, c_hi = max(col0, self.col0), min(col0 + shape[1], self.col0 + w)
        if r_lo < r_hi and c_lo < c_hi:
            out[r_lo - row0 : r_hi - row0, c_lo - col0 : c_hi - col0] = self.pixels[
                r_lo - self.row0 : r_hi - self.row0, c_lo - self.col0 : c_hi - self.col0
            ]
        return out


# A walk stops this far (in z) from its start, in units of the largest in-plane extent seen:
# generous, the overlap rule is what ends a walk (synthetic lesions are at most as deep as wide).
WALK_REACH = 1.0
# The next slice's crop is sized for a lesion this much larger than the last slice's mask: the
# segmenter was trained on lesions filling 40-60% of the crop's side and finds nothing in a crop
# the lesion overfills, so a lesion that widens from one slice to the next must still fit.
WALK_MARGIN = 1.4
# A lesion's sections swell to its widest slice and shrink past it. Once a walk has passed its
# widest slice, a mask more than WALK_REGROW times the smallest since then has run into a
# neighbouring structure (a vessel or bowel loop beside a lymph node): the walk stops before it.
# (Growth alone cannot be judged: the detector's slice is often near a lesion's end, and the walk
# must then follow the lesion as it widens.)
WALK_REGROW = 1.3


@dataclass(frozen=True, kw_only=True)
class _Frontier:
    """One lesion's walk in one direction: the last slice segmented and its mask, the largest
    mask area (pixels) of the walk so far and the smallest since then."""

    lesion: int
    slice_: int
    mask: SliceMask
    step: int
    peak: int
    low: int

    def follow(self, mask: SliceMask) -> _Frontier | None:
        """The walk one slice on with ``mask``, or None where the mask no longer follows this
        lesion (see WALK_REGROW)."""
        area = int(mask.pixels.sum())
        if self.low < self.peak and area > WALK_REGROW * self.low:
            return None
        return _Frontier(
            lesion=self.lesion, slice_=self.slice_ + self.step, mask=mask, step=self.step,
            peak=max(self.peak, area), low=area if area >= self.peak else min(self.low, area),
        )


def walk_masks(backend: InferenceBackend, volume: Volume, fits: list[Fit]) -> list[dict]:
    """3D mask of each lesion, segmented slice by slice outwards from its key slice.

    ``fits`` hold the detector's slice, centre and size; that slice is segmented as
    ``fit_lesions`` does. Each next slice is cropped around the previous slice's mask and sized
    to it (with ``WALK_MARGIN``, grown while the mask fills the crop), and keeps the mask
    components that overlap the previous slice's mask. A lesion the detector found near one of
    its ends is followed through its widest slices rather than cut off by a crop sized for that
    end. One segmenter call per step for all lesions. Returns, per fit, the mask (bounding-box
    array), its offset, the key slice (where the mask is largest: RECIST is measured there) and
    its box.
    """
    n = volume.pixels.shape[0]
    ss = volume.spacing[0]
    slices: list[dict[int, SliceMask]] = [{} for _ in fits]
    reach_mm = [0.0] * len(fits)
    frontier: list[_Frontier] = []
    for i, (fit, mask) in enumerate(zip(fits, _fit_masks(backend, volume, fits), strict=True)):
        if mask is not None:
            slices[i][fit.key_slice] = mask
            reach_mm[i] = mask.extent_mm(volume.spacing)
            area = int(mask.pixels.sum())
            frontier += [
                _Frontier(lesion=i, slice_=fit.key_slice, mask=mask, step=d, peak=area, low=area) for d in (1, -1)
            ]
    while frontier:
        frontier = [
            f for f in frontier
            if 0 <= f.slice_ + f.step < n and abs(f.slice_ + f.step - fits[f.lesion].key_slice) * ss <= WALK_REACH * reach_mm[f.lesion] + ss
        ]
        if not frontier:
            break
        requests = [(f.slice_ + f.step, f.mask.centre, WALK_MARGIN * f.mask.extent_mm(volume.spacing)) for f in frontier]
        still = []
        for f, mask in zip(frontier, _segment_slices(backend, volume, requests, [f.mask for f in frontier]), strict=True):
            step = None if mask is None else f.follow(mask)
            if step is None:
                continue
            slices[f.lesion][step.slice_] = mask
            reach_mm[f.lesion] = max(reach_mm[f.lesion], mask.extent_mm(volume.spacing))
            still.append(step)
        frontier = still
    # The widest slice, where RECIST is measured, once more with a crop sized to its own mask
    # (the geometry the segmenter was trained on) rather than to its neighbour's.
    widest = [(i, max(found, key=lambda z: found[z].pixels.sum())) for i, found in enumerate(slices) if found]
    refined = _segment_slices(
        backend, volume,
        [(z, slices[i][z].centre, slices[i][z].extent_mm(volume.spacing)) for i, z in widest],
        [slices[i][z] for i, z in widest],
    )
    for (i, z), mask in zip(widest, refined, strict=True):
        if mask is not None:
            slices[i][z] = mask
    return [_assemble(fit, found) for fit, found in zip(fits, slices, strict=True)]


def mask_threshold(backend: InferenceBackend) -> float:
    """Where the segmenter's probability is cut: the ``mask_threshold`` its files carry (chosen for
    those weights and written at export: ``ainode train segmenter --segmenter-mask-cut``), else
    ``DEFAULT_MASK_THRESHOLD`` for a segmenter exported before the cut travelled with it."""
    text = backend.model_parameters("lesion_segmenter").get("mask_threshold")
    if text is None:
        return DEFAULT_MASK_THRESHOLD
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise InferenceError(
            f"lesion_segmenter: mask_threshold {text!r} in its metadata is not a probability between 0 and 1 "
            "(re-export it with `ainode train segmenter`, or fix the ONNX metadata and the config's ainode_mask_threshold)"
        )
    return value


def _segment_slices(
    backend: InferenceBackend,
    volume: Volume,
    requests: list[tuple[int, tuple[float, float], float]],
    anchors: list[SliceMask | None],
) -> list[SliceMask | None]:
    """The mask of each (slice, centre (row, col), size mm) request; None where there is none.

    With an anchor (the neighbouring slice's mask) the components overlapping it are kept;
    without, the component nearest the centre. The crop grows while the mask fills it, and when
    nothing overlaps the anchor it is tried once 1.5x wider (the lesion may overfill it).
    """
    if not requests:
        return []
    out: list[SliceMask | None] = [None] * len(requests)
    pending = list(range(len(requests)))
    places = [(float(c[0]), float(c[1]), float(size)) for _, c, size in requests]
    cut = mask_threshold(backend)
    for round_ in range(FIT_ROUNDS + 1):
        if not pending:
            break
        sides = [pp.crop_geometry(places[i][2]) for i in pending]
        crops = np.stack(
            [
                pp.lesion_crop(volume.pixels, volume.spacing, slice_=float(requests[i][0]), center_rc=places[i][:2], side_mm=side)
                for i, side in zip(pending, sides, strict=True)
            ]
        )
        probs = backend.infer("lesion_segmenter", {"image": crops})["mask"][:, 0]
        again = []
        for i, side, prob in zip(pending, sides, probs, strict=True):
            local, (r0, c0) = _masks_in_volume(prob[None], volume, places[i][:2], side, cut)
            mask = SliceMask.of(_keep(local[0], (r0, c0), places[i][:2], anchors[i]), r0, c0)
            out[i] = mask
            if round_ == FIT_ROUNDS or side >= 2 * pp.MAX_LESION_MM:
                continue
            if mask is None and anchors[i] is not None and round_ == 0:
                places[i] = (*places[i][:2], places[i][2] * 1.5)
                again.append(i)
            elif mask is not None and mask.extent_mm(volume.spacing) > FIT_FILL * side:
                places[i] = (*mask.centre, mask.extent_mm(volume.spacing) * 1.25)
                again.append(i)
        pending = again
    return out


def _keep(local: np.ndarray, origin: tuple[int, int], centre: tuple[float, float], anchor: SliceMask | None) -> np.ndarray:
    """The components of a window's mask (at volume ``origin``) that belong to the lesion: those
    overlapping ``anchor``, or without one the component nearest ``centre``."""
    if not local.any():
        return local
    if anchor is None:
        near = tuple(int(np.clip(round(c) - o, 0, n - 1)) for c, o, n in zip(centre, origin, local.shape, strict=True))
        return _component_near(local, near)
    labels, _ = ndimage.label(local)
    return np.isin(labels, np.unique(labels[anchor.within(*origin, local.shape) & (labels > 0)]))


def _assemble(fit: Fit, found: dict[int, SliceMask]) -> dict:
    """A walk's slices as one bounding-box mask, with its key slice where the mask is largest."""
    if not found:
        return {
            "key_slice": fit.key_slice, "center_rc": fit.center_rc, "size_mm": fit.size_mm,
            "mask": np.zeros((1, 1, 1), dtype=bool), "offset": (fit.key_slice, 0, 0), "key_m": 0, "key_box": None,
        }
    zs = sorted(found)
    r0 = min(m.row0 for m in found.values())
    c0 = min(m.col0 for m in found.values())
    r1 = max(m.row0 + m.pixels.shape[0] for m in found.values())
    c1 = max(m.col0 + m.pixels.shape[1] for m in found.values())
    mask = np.stack([found[z].within(r0, c0, (r1 - r0, c1 - c0)) for z in zs])  # a walk's slices are contiguous
    key_m = int(np.argmax(mask.sum(axis=(1, 2))))
    return {
        "key_slice": zs[0] + key_m,
        "center_rc": fit.center_rc,
        "size_mm": fit.size_mm,
        "mask": mask,
        "offset": (zs[0], r0, c0),
        "key_m": key_m,
        "key_box": found[zs[0] + key_m].box,
    }


def _detection_place(volume: Volume, canvas: pp.Canvas, d: Detection) -> Fit:
    kv, rv, cv = canvas.to_volume(d.k, d.row, d.col)
    key_slice = int(np.clip(round(kv), 0, volume.pixels.shape[0] - 1))
    return Fit(key_slice=key_slice, center_rc=(rv, cv), size_mm=max(d.height_mm, d.width_mm), box=None)


def verified_score(score: float, mask_box: tuple[float, float, float, float] | None) -> float:
    """A detection's score once segmented: its detector score, times ``NO_MASK_SCORE`` where the
    segmenter found nothing (``mask_box`` None)."""
    return float(score) if mask_box is not None else float(score) * NO_MASK_SCORE


def refine_boxes(
    backend: InferenceBackend, volume: Volume, canvas: pp.Canvas, detections: list[Detection]
) -> list[tuple[float, float, float, float] | None]:
    """Key-slice box (col0, row0, col1, row1) of each detection, from the segmenter's mask.

    The crop and mask the analyzer measures a lesion on (``fit_lesions``), on the detection's own
    slice; ``None`` where the segmenter finds nothing there. The evaluation scores these boxes.
    """
    return [fit.box for fit in fit_lesions(backend, volume, [_detection_place(volume, canvas, d) for d in detections])]


def _pixel_box(rows: np.ndarray, cols: np.ndarray) -> tuple[float, float, float, float]:
    """Box (col0, row0, col1, row1) around pixels, edges half a pixel beyond the outer centres
    (``Lesion.box``'s convention, also the synthetic truth's)."""
    return (float(cols.min()) - 0.5, float(rows.min()) - 0.5, float(cols.max()) + 0.5, float(rows.max()) + 0.5)


def _masks_in_volume(
    probs: np.ndarray, volume: Volume, center_rc: tuple[float, float], side: float, cut: float
) -> tuple[np.ndarray, tuple[int, int]]:
    """Segmenter probabilities of crops around ``center_rc`` mapped back onto the volume's pixels.

    Returns the (crops, rows, cols) boolean masks (probability >= ``cut``) of the
    volume window the crop covers, and that window's first (row, col).
    """
    _, rs, cs = volume.spacing
    rows, cols = volume.pixels.shape[1:]
    rv, cv = center_rc
    px = side / pp.CROP_SIZE
    r0, r1 = max(0, int(np.floor(rv - side / 2.0 / rs))), min(rows, int(np.ceil(rv + side / 2.0 / rs)) + 1)
    c0, c1 = max(0, int(np.floor(cv - side / 2.0 / cs))), min(cols, int(np.ceil(cv + side / 2.0 / cs)) + 1)
    r1, c1 = max(r0, r1), max(c0, c1)  # a crop wholly outside the volume covers nothing
    ii = (np.arange(r0, r1) - rv) * rs / px + (pp.CROP_SIZE - 1) / 2.0
    jj = (np.arange(c0, c1) - cv) * cs / px + (pp.CROP_SIZE - 1) / 2.0
    grid = np.stack(np.meshgrid(ii, jj, indexing="ij"))
    local = np.zeros((len(probs), r1 - r0, c1 - c0), dtype=bool)
    for m, prob in enumerate(probs):
        local[m] = ndimage.map_coordinates(prob, grid, order=1, mode="constant", cval=0.0) >= cut
    return local, (r0, c0)


def body_mask(canvas: pp.Canvas) -> np.ndarray:
    """Where the canvas is denser than -500 HU: the body, for the embedder's location cues."""
    return canvas.pixels > pp.window(np.array(-500.0))


def box_crop(
    box: tuple[float, float, float, float], spacing: tuple[float, float, float], *, scale: float = 1.0
) -> tuple[tuple[float, float], float]:
    """Centre (row, col) and embedder crop side (mm) of a lesion box (col0, row0, col1, row1),
    its larger side scaled by ``scale`` before it is padded."""
    c0, r0, c1, r1 = box
    return ((r0 + r1) / 2.0, (c0 + c1) / 2.0), pp.embed_crop_side(scale * box_side_mm(box, spacing))


def box_side_mm(box: tuple[float, float, float, float], spacing: tuple[float, float, float]) -> float:
    """The larger side in mm of a lesion box (col0, row0, col1, row1) on a slice of ``spacing``."""
    c0, r0, c1, r1 = box
    return max((r1 - r0) * spacing[1], (c1 - c0) * spacing[2])


def embedder_input(
    pixels: np.ndarray,
    spacing: tuple[float, float, float],
    canvas: pp.Canvas,
    body: np.ndarray,
    *,
    key_slice: int,
    center_rc: tuple[float, float],
    side_mm: float,
    body_part_score: float,
) -> tuple[np.ndarray, list[float]]:
    """One lesion's embedder input: the 3-slice crop (3, 64, 64) and its four cues.

    The same for the analyzer's lesions, the training annotations and the evaluation's truth
    lesions, so the embedder sees one distribution. ``body`` is ``body_mask(canvas)``.
    """
    image = pp.lesion_crop(pixels, spacing, slice_=float(key_slice), center_rc=center_rc, side_mm=side_mm)
    k, r_c, c_c = canvas.from_volume(key_slice, *center_rc)
    k = int(np.clip(round(k), 0, canvas.pixels.shape[0] - 1))
    return image, body_relative_cues(body[k], r_c, c_c, body_part_score, side_mm)


def body_relative_cues(body: np.ndarray, row: float, col: float, body_part_score: float, side_mm: float) -> list[float]:
    """Embedder cues: x, y relative to the body's extent on the slice, z score, crop size."""
    rr, cc = np.nonzero(body)
    if rr.size:
        r_lo, r_hi, c_lo, c_hi = rr.min(), rr.max() + 1, cc.min(), cc.max() + 1
    else:
        r_lo, r_hi, c_lo, c_hi = 0, body.shape[0], 0, body.shape[1]
    x = (col - c_lo) / max(c_hi - c_lo, 1)
    y = (row - r_lo) / max(r_hi - r_lo, 1)
    return [float(np.clip(x, -0.5, 1.5)), float(np.clip(y, -0.5, 1.5)), body_part_score / SSBR_SCORE_SCALE, side_mm / 256.0]


def _inside(volume: Volume, canvas: pp.Canvas, d: Detection) -> bool:
    _, r, c = canvas.to_volume(d.k, d.row, d.col)
    return 0 <= r <= volume.pixels.shape[1] - 1 and 0 <= c <= volume.pixels.shape[2] - 1


def _component_near(mask: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    if labels[centre] > 0:
        return labels == labels[centre]
    dist = ndimage.distance_transform_edt(labels == 0, return_indices=True)[1]
    nearest = labels[dist[0][centre], dist[1][centre]]
    return labels == nearest


def _shift_axes(axes, dcol: float, drow: float):
    from dataclasses import replace

    def shift(p):
        return (p[0] + dcol, p[1] + drow)

    return replace(
        axes,
        long_axis_endpoints=(shift(axes.long_axis_endpoints[0]), shift(axes.long_axis_endpoints[1])),
        short_axis_endpoints=(shift(axes.short_axis_endpoints[0]), shift(axes.short_axis_endpoints[1])),
    )
