"""Training loops of the four models, reproducible from one seed, with progress bars.

Samples are built with the same preprocessing the node runs (node.inference.preprocess), so a
model trained here sees at inference exactly what it saw in training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F
from tqdm import tqdm

from node.inference import preprocess as pp
from node.inference.analyzer import SliceMask, body_mask, box_crop, box_side_mm, embedder_input
from node.inference.backend import DEFAULT_MASK_THRESHOLD
from node.training.datasets import (
    SEGMENTER_LARGE_LESIONS,
    TYPE_ORDER,
    TrainStudy,
    lesion_mask_2d,
    windows_per_lesion,
)
from node.training.models import NUM_TYPES, build

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """A trained model and the figures for its model card."""

    name: str
    model: torch.nn.Module
    figures: dict[str, float]
    seconds: float
    samples: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _progress(iterable, total: int, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# Body-part regressor (SSBR)


def ssbr_loss(scores: torch.Tensor) -> torch.Tensor:
    """The seed's order + distance loss on (volumes, m) scores of equidistant ordered slices."""
    delta = scores[:, 1:] - scores[:, :-1]
    order = -F.logsigmoid(delta).sum(dim=1)
    dist = F.smooth_l1_loss(delta[:, 1:], delta[:, :-1], reduction="none").sum(dim=1)
    return (order + dist).mean()


def ssbr_consistency_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two views' scores of the same slices, (volumes, m) each."""
    return F.mse_loss(first, second)


#: Weight of :func:`ssbr_consistency_loss` (``ainode train --ssbr-consistency``).
SSBR_CONSISTENCY = 1.0


def _ssbr_stack(study: TrainStudy) -> np.ndarray:
    return pp.ssbr_inputs(pp.make_canvas(study.pixels, study.spacing), view=1.0)[:, 0]  # cropped in training


def _random_crop(stacks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same random crop of every slice of a sequence, resized back (zoomed-in volumes)."""
    size = stacks.shape[-1]
    frac = rng.uniform(0.6, 1.0)
    side = max(8, int(size * frac))
    r0 = int(rng.integers(0, size - side + 1))
    c0 = int(rng.integers(0, size - side + 1))
    crop = torch.from_numpy(np.ascontiguousarray(stacks[:, None, r0 : r0 + side, c0 : c0 + side]))
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def train_body_part_regressor(
    studies: Iterable[TrainStudy],
    *,
    rng: np.random.Generator,
    steps: int = 400,
    volumes_per_batch: int = 8,
    m: int = 8,
    consistency_weight: float = SSBR_CONSISTENCY,
    progress: bool = True,
) -> TrainResult:
    """SSBR: self-supervised from slice order; a second phase oversamples hard volumes.

    The order and distance losses see only differences between one sequence's scores, so they
    leave each volume free to take its own offset: a score can be ordered in every patient and
    still not one body position across patients. With ``consistency_weight`` > 0 every sequence
    is drawn twice, each time with its own random crop (zoom and position), and the mean squared
    difference of the two views' scores (:func:`ssbr_consistency_loss`) is added with that
    weight: a slice's score may then not depend on how the slice is cropped, which is how it
    drifted from patient to patient (triton_models/cards/body_part_regressor.md).
    """
    if consistency_weight < 0:
        raise ValueError(f"consistency_weight: must be 0 or more, got {consistency_weight}")
    t0 = time.perf_counter()
    stacks = [_ssbr_stack(s) for s in studies]
    stacks = [s for s in stacks if len(s) >= m + 1]
    if not stacks:
        raise ValueError("studies: no volume has enough slices for the body-part regressor")
    model = build("body_part_regressor")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    weights = np.ones(len(stacks))

    def batch() -> torch.Tensor:
        picks = rng.choice(len(stacks), size=volumes_per_batch, p=weights / weights.sum())
        seqs = []
        for i in picks:
            n = len(stacks[i])
            k = int(rng.integers(1, max(2, (n - 1) // (m - 1)) + 1))
            j = int(rng.integers(0, n - k * (m - 1)))
            seq = stacks[i][j : j + k * (m - 1) + 1 : k]
            seqs.append(_random_crop(seq, rng))
            if consistency_weight > 0:  # the same slices again, cropped afresh (rows 2i and 2i + 1)
                seqs.append(_random_crop(seq, rng))
        return torch.from_numpy(np.stack(seqs)[:, :, None].astype(np.float32))

    def run(n_steps: int, desc: str) -> float:
        model.train()
        loss_value = 0.0
        for _ in _progress(range(n_steps), n_steps, desc, progress):
            x = batch()
            scores = model(x.reshape(-1, 1, pp.SSBR_SIZE, pp.SSBR_SIZE)).reshape(x.shape[0], x.shape[1])
            loss = ssbr_loss(scores)
            if consistency_weight > 0:
                loss = loss + consistency_weight * ssbr_consistency_loss(scores[0::2], scores[1::2])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_value = 0.9 * loss_value + 0.1 * loss.item() if loss_value else loss.item()
        return loss_value

    run(steps // 2, "ssbr phase 1")
    r = _ssbr_correlations(model, stacks)
    hard = r < np.quantile(r, 0.25)
    weights = np.where(hard, 3.0, 1.0)
    for group in opt.param_groups:
        group["lr"] = 1e-3
    loss = run(steps - steps // 2, "ssbr phase 2 (hard volumes x3)")
    r2 = _ssbr_correlations(model, stacks)
    return TrainResult(
        name="body_part_regressor",
        model=model.eval(),
        figures={
            "final_loss": loss,
            "median_r_slice_index_phase1": float(np.median(r)),
            "median_r_slice_index": float(np.median(r2)),
            "min_r_slice_index": float(np.min(r2)),
            "hard_volumes_oversampled": int(hard.sum()),
            "consistency_weight": consistency_weight,
        },
        seconds=time.perf_counter() - t0,
        samples=len(stacks),
    )


def _ssbr_correlations(model: torch.nn.Module, stacks: list[np.ndarray]) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for s in stacks:
            scores = model(torch.from_numpy(s[:, None])).numpy()[:, 0]
            idx = np.arange(len(s))
            out.append(np.corrcoef(scores, idx)[0, 1] if scores.std() > 0 else 0.0)
    model.train()
    return np.nan_to_num(np.asarray(out))


def ssbr_scores(model: torch.nn.Module, study: TrainStudy) -> np.ndarray:
    """Body-part score per slice of ``study`` (as the analyzer computes it)."""
    canvas = pp.make_canvas(study.pixels, study.spacing)
    with torch.no_grad():
        scores = model(torch.from_numpy(pp.ssbr_inputs(canvas))).numpy()[:, 0]
    return canvas.per_slice(scores, study.pixels.shape[0])


# --------------------------------------------------------------------------------------------
# Lesion detector (3DCE-style CenterNet)

DETECTOR_CROP = 128


def _canvas_labels(study: TrainStudy, canvas: pp.Canvas, k: int) -> list[tuple[int, np.ndarray]]:
    """(type index, canvas-slice mask) of each lesion present on canvas slice ``k``."""
    s = k * canvas.slice_step
    src = int(round(s))
    out = []
    for lesion in study.lesions:
        if lesion.lesion_type is None:
            continue
        if study.labels is None and abs(src - lesion.key_slice) > 0:
            continue
        mask = lesion_mask_2d(study, lesion, min(src, study.pixels.shape[0] - 1))
        if not mask.any():
            continue
        warped = ndimage.affine_transform(
            mask.astype(np.float32),
            matrix=np.array([canvas.row_step, canvas.col_step]),
            offset=(canvas.row0, canvas.col0),
            output_shape=(pp.CANVAS_SIZE, pp.CANVAS_SIZE),
            order=1,
        ) >= 0.5
        if warped.sum() >= 1:
            out.append((TYPE_ORDER.index(lesion.lesion_type), warped))
    return out


def detector_targets(objects: list[tuple[int, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    """CenterNet targets on a (size x size) canvas crop: heatmap, size (mm), offset, and where they apply."""
    h = size // pp.HEATMAP_STRIDE
    heat = np.zeros((NUM_TYPES, h, h), np.float32)
    wh = np.zeros((2, h, h), np.float32)
    off = np.zeros((2, h, h), np.float32)
    reg = np.zeros((h, h), np.float32)
    wh_mask = np.zeros((h, h), np.float32)
    owner = np.full((h, h), np.inf, np.float32)  # size of the lesion whose size a cell regresses
    yy, xx = np.mgrid[:h, :h]
    for t, mask in objects:
        rr, cc = np.nonzero(mask)
        if rr.size == 0:
            continue
        height_mm = (rr.max() - rr.min() + 1) * pp.CANVAS_MM
        width_mm = (cc.max() - cc.min() + 1) * pp.CANVAS_MM
        if max(height_mm, width_mm) < pp.MIN_LESION_MM:
            continue
        # Box centre in pixel-edge coordinates (pixel r spans r .. r + 1), which a left-right
        # flip maps onto itself cell for cell; decode_detections subtracts the half pixel.
        cr = (rr.min() + rr.max() + 1) / 2.0 / pp.HEATMAP_STRIDE
        ccol = (cc.min() + cc.max() + 1) / 2.0 / pp.HEATMAP_STRIDE
        i, j = int(np.clip(np.floor(cr), 0, h - 1)), int(np.clip(np.floor(ccol), 0, h - 1))
        sigma = max(0.6, max(height_mm, width_mm) / pp.CANVAS_MM / pp.HEATMAP_STRIDE / 6.0)
        g = np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * sigma**2))
        heat[t] = np.maximum(heat[t], g)
        # Size is learnt on the 3x3 cells around the centre too: a peak one cell off still
        # decodes the lesion's size. Where lesions meet, the smaller one keeps the cell.
        extent = max(height_mm, width_mm)
        near = (np.abs(yy - i) <= 1) & (np.abs(xx - j) <= 1) & (owner > extent)
        wh[:, near] = np.array([[height_mm], [width_mm]], np.float32)
        wh_mask[near] = np.where((yy[near] == i) & (xx[near] == j), 1.0, 0.5)
        owner[near] = extent
        off[:, i, j] = (cr - i, ccol - j)
        reg[i, j] = 1.0
    return {"heat": heat, "wh": wh, "off": off, "reg": reg, "wh_mask": wh_mask}


def detector_samples(
    studies: Sequence[TrainStudy],
    *,
    rng: np.random.Generator,
    per_lesion: int = 3,
    negatives: int = 2,
    small_lesions: int = 1,
    large_lesions: int = 1,
) -> list[dict[str, np.ndarray]]:
    """Training windows: 9 canvas slices cropped to 128x128 with their targets (float16 images);
    ``per_lesion`` per lesion, ``small_lesions`` times as many for a lesion under SMALL_LESION_MM
    and ``large_lesions`` times as many for one of LARGE_LESION_MM or more."""
    samples = []
    half = DETECTOR_CROP // 2
    for study in studies:
        canvas = pp.make_canvas(study.pixels, study.spacing)
        n = canvas.pixels.shape[0]
        keys: list[tuple[int, tuple[float, float] | None]] = []
        for lesion in study.lesions:
            kc, rc, cc = canvas.from_volume(lesion.key_slice, (lesion.box[1] + lesion.box[3]) / 2, (lesion.box[0] + lesion.box[2]) / 2)
            reach = 1 if study.labels is None else max(1, int(lesion.long_axis_mm / 2 / pp.SLICE_MM * 0.6))
            for _ in range(windows_per_lesion(per_lesion, lesion.long_axis_mm, small=small_lesions, large=large_lesions)):
                dk = 0 if study.labels is None else int(rng.integers(-reach, reach + 1))
                keys.append((int(np.clip(round(kc) + dk, 0, n - 1)), (rc, cc)))
        for _ in range(negatives):
            keys.append((int(rng.integers(0, n)), None))
        for k, centre in keys:
            if centre is None:
                r0, c0 = (int(rng.integers(32, pp.CANVAS_SIZE - DETECTOR_CROP - 32)) for _ in range(2))
            else:
                r0 = int(np.clip(centre[0] - half + rng.integers(-40, 41), 0, pp.CANVAS_SIZE - DETECTOR_CROP))
                c0 = int(np.clip(centre[1] - half + rng.integers(-40, 41), 0, pp.CANVAS_SIZE - DETECTOR_CROP))
            r0 -= r0 % pp.HEATMAP_STRIDE
            c0 -= c0 % pp.HEATMAP_STRIDE
            image = pp.detector_inputs(canvas, np.array([k]))[0, :, r0 : r0 + DETECTOR_CROP, c0 : c0 + DETECTOR_CROP]
            objects = [(t, m[r0 : r0 + DETECTOR_CROP, c0 : c0 + DETECTOR_CROP]) for t, m in _canvas_labels(study, canvas, k)]
            sample = detector_targets(objects, DETECTOR_CROP)
            sample["image"] = image.astype(np.float16)
            samples.append(sample)
    return samples


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on heatmap logits."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0).float()
    neg = 1.0 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    num_pos = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def train_lesion_detector(
    studies: Iterable[TrainStudy],
    *,
    rng: np.random.Generator,
    epochs: int = 6,
    batch_size: int = 16,
    progress: bool = True,
    validation: Sequence[TrainStudy] = (),
    per_lesion: int = 3,
    negatives: int = 2,
    small_lesions: int = 1,
    head: str = "typed",
    fine_stem: bool = False,
    large_lesions: int = 1,
) -> TrainResult:
    """CenterNet training of the detector (``head``: ``LesionDetector``'s). The objectness head
    learns the type-blind heatmap (the largest of the typed targets) with the same focal loss, and
    the type by cross-entropy on the cells that hold a lesion's centre."""
    t0 = time.perf_counter()
    samples = detector_samples(
        studies, rng=rng, per_lesion=per_lesion, negatives=negatives, small_lesions=small_lesions, large_lesions=large_lesions
    )
    model = build("lesion_detector", head=head, fine_stem=fine_stem)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    total = epochs * ((len(samples) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total, pct_start=0.15)
    bar = _progress(range(total), total, "detector", progress)
    it = iter(bar)
    last = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(samples))
        model.train()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = torch.from_numpy(np.stack([samples[i]["image"] for i in idx]).astype(np.float32))
            if rng.random() < 0.5:  # left-right flip
                flip = True
                x = x.flip(-1)
            else:
                flip = False
            heat = torch.from_numpy(np.stack([samples[i]["heat"] for i in idx]))
            wh = torch.from_numpy(np.stack([samples[i]["wh"] for i in idx]))
            off = torch.from_numpy(np.stack([samples[i]["off"] for i in idx]))
            reg = torch.from_numpy(np.stack([samples[i]["reg"] for i in idx]))
            wh_mask = torch.from_numpy(np.stack([samples[i]["wh_mask"] for i in idx]))
            if flip:
                heat, wh, reg, wh_mask = heat.flip(-1), wh.flip(-1), reg.flip(-1), wh_mask.flip(-1)
                off = off.flip(-1)
                off = torch.stack([off[:, 0], torch.where(reg > 0, 1.0 - off[:, 1], off[:, 1])], dim=1)
            hl, tl, sl, ol = model.forward_logits(x)
            mask = reg[:, None]
            n_reg = mask.sum().clamp(min=1.0)
            size_w = wh_mask[:, None]
            size_loss = (F.l1_loss(sl, torch.log(wh.clamp(min=1.0) / 16.0), reduction="none") * size_w).sum() / size_w.sum().clamp(min=1.0)
            off_loss = (F.l1_loss(torch.sigmoid(ol), off, reduction="none") * mask).sum() / n_reg
            if tl is None:
                loss = focal_loss(hl, heat) + size_loss + off_loss
            else:
                type_loss = (F.cross_entropy(tl, heat.argmax(dim=1), reduction="none") * reg).sum() / n_reg
                loss = focal_loss(hl, heat.max(dim=1, keepdim=True).values) + type_loss + size_loss + off_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            next(it, None)
            last = 0.9 * last + 0.1 * loss.item() if last else loss.item()
            bar.set_postfix(loss=f"{last:.3f}")
    bar.close()
    model.eval()
    figures = {"final_loss": last}
    if validation:
        for threshold in (0.3, 0.5):
            figures.update(evaluate_detector(model, validation, threshold=threshold))
    return TrainResult(
        name="lesion_detector", model=model, figures=figures, seconds=time.perf_counter() - t0, samples=len(samples)
    )


def evaluate_detector(model: torch.nn.Module, studies: Sequence[TrainStudy], threshold: float = 0.5) -> dict[str, float]:
    """Key-slice sensitivity (peak within the lesion's box half-size) and false positives per slice."""
    from node.inference.analyzer import decode_detections

    hits = total = fps = slices = 0
    with torch.no_grad():
        for study in studies:
            canvas = pp.make_canvas(study.pixels, study.spacing)
            for lesion in study.lesions:
                kc, rc, cc = canvas.from_volume(lesion.key_slice, (lesion.box[1] + lesion.box[3]) / 2, (lesion.box[0] + lesion.box[2]) / 2)
                k = int(np.clip(round(kc), 0, canvas.pixels.shape[0] - 1))
                heat, size, off = (t.numpy() for t in model(torch.from_numpy(pp.detector_inputs(canvas, np.array([k])))))
                dets = decode_detections(k, heat, size, off, threshold)
                radius = max(lesion.long_axis_mm / 2, 4.0) / pp.CANVAS_MM
                total += 1
                found = [d for d in dets if np.hypot(d.row - rc, d.col - cc) <= radius]
                hits += bool(found)
                others = [d for d in dets if d not in found]
                # peaks that are on another annotated lesion of the slice are not false
                fps += sum(
                    1
                    for d in others
                    if not any(
                        np.hypot(d.row - canvas.from_volume(0, (o.box[1] + o.box[3]) / 2, 0)[1], d.col - canvas.from_volume(0, 0, (o.box[0] + o.box[2]) / 2)[2])
                        <= max(o.long_axis_mm / 2, 4.0) / pp.CANVAS_MM
                        for o in study.lesions
                    )
                )
                slices += 1
    return {
        f"val_key_slice_sensitivity_at_{threshold}": hits / max(total, 1),
        f"val_false_positives_per_key_slice_at_{threshold}": fps / max(slices, 1),
        "val_lesions": float(total),
    }


# --------------------------------------------------------------------------------------------
# Lesion segmenter


def _crop_mask(mask: np.ndarray, spacing: tuple[float, float, float], centre: tuple[float, float], side: float) -> np.ndarray:
    size = pp.CROP_SIZE
    px = side / size
    offsets = (np.arange(size) - (size - 1) / 2.0) * px
    rr = centre[0] + offsets / spacing[1]
    cc = centre[1] + offsets / spacing[2]
    grid = np.stack(np.meshgrid(rr, cc, indexing="ij"))
    return ndimage.map_coordinates(mask.astype(np.float32), grid, order=1, mode="constant") >= 0.5


@dataclass(frozen=True, kw_only=True)
class CropJitter:
    """How far a segmenter training crop strays from the lesion, as the detector's box does at
    inference: the box side is the lesion's times a factor drawn uniformly from ``size``, the
    centre moved by a normal offset of ``centre`` times the lesion's size (each axis)."""

    size: tuple[float, float] = (0.8, 1.25)
    centre: float = 0.08


def segmenter_samples(
    studies: Sequence[TrainStudy],
    *,
    rng: np.random.Generator,
    per_lesion: int = 6,
    large_lesions: int = 1,
    jitter: CropJitter = CropJitter(),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Lesion-centred 3-slice crops (key slice and neighbours, some beyond the lesion) with masks;
    ``large_lesions`` times as many for a lesion of LARGE_LESION_MM or more (few in the cohort)."""
    out = []
    for study in studies:
        for lesion in study.lesions:
            key_mask = lesion_mask_2d(study, lesion, lesion.key_slice)
            if not key_mask.any():
                continue
            rr, cc = np.nonzero(key_mask)
            size_mm = SliceMask.of(key_mask).extent_mm(study.spacing)
            reach = 0 if study.labels is None else int(np.ceil(0.75 * size_mm / study.spacing[0])) + 1
            for i in range(windows_per_lesion(per_lesion, size_mm, large=large_lesions)):
                s = lesion.key_slice if i == 0 or reach == 0 else int(np.clip(lesion.key_slice + rng.integers(-reach, reach + 1), 0, study.pixels.shape[0] - 1))
                mask = lesion_mask_2d(study, lesion, s)
                if mask.any():
                    mr, mc = np.nonzero(mask)
                    centre = (mr.mean(), mc.mean())
                else:
                    centre = (rr.mean(), cc.mean())
                shift = rng.normal(0, jitter.centre * size_mm, 2) / np.array(study.spacing[1:])
                centre = (centre[0] + shift[0], centre[1] + shift[1])
                side = pp.crop_geometry(size_mm * rng.uniform(*jitter.size))
                image = pp.lesion_crop(study.pixels, study.spacing, slice_=float(s), center_rc=centre, side_mm=side)
                out.append((image.astype(np.float16), _crop_mask(mask, study.spacing, centre, side)))
    return out


def train_lesion_segmenter(
    studies: Iterable[TrainStudy],
    *,
    rng: np.random.Generator,
    epochs: int = 8,
    batch_size: int = 32,
    progress: bool = True,
    validation: Sequence[TrainStudy] = (),
    large_lesions: int = SEGMENTER_LARGE_LESIONS,
    jitter: CropJitter = CropJitter(),
    mask_cut: float = DEFAULT_MASK_THRESHOLD,
) -> TrainResult:
    """The lesion segmenter; ``mask_cut`` is the analyzer's cut for these weights (exported with
    them as ``mask_threshold``), at which the validation figures are measured."""
    t0 = time.perf_counter()
    samples = segmenter_samples(studies, rng=rng, large_lesions=large_lesions, jitter=jitter)
    model = build("lesion_segmenter")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    total = epochs * ((len(samples) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total, pct_start=0.15)
    bar = _progress(range(total), total, "segmenter", progress)
    last = 0.0
    for _ in range(epochs):
        order = rng.permutation(len(samples))
        model.train()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = torch.from_numpy(np.stack([samples[i][0] for i in idx]).astype(np.float32))
            y = torch.from_numpy(np.stack([samples[i][1] for i in idx]).astype(np.float32))[:, None]
            k = int(rng.integers(0, 4))
            x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (2, 3))
            logits = model.logits(x)
            p = torch.sigmoid(logits)
            dice = 1 - (2 * (p * y).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            last = 0.9 * last + 0.1 * loss.item() if last else loss.item()
            bar.set_postfix(loss=f"{last:.3f}")
    bar.close()
    model.eval()
    figures = {"final_loss": last}
    if validation:
        figures.update(evaluate_segmenter(model, validation, cut=mask_cut))
    return TrainResult(
        name="lesion_segmenter", model=model, figures=figures, seconds=time.perf_counter() - t0, samples=len(samples)
    )


def evaluate_segmenter(
    model: torch.nn.Module, studies: Sequence[TrainStudy], *, cut: float = DEFAULT_MASK_THRESHOLD
) -> dict[str, float]:
    """Key-slice Dice and RECIST long/short-axis errors (mm) from the mask cut at ``cut``, crops centred on truth."""
    from node.inference.recist import measure_recist

    dices, long_err, short_err = [], [], []
    with torch.no_grad():
        for study in studies:
            for lesion in study.lesions:
                mask = lesion_mask_2d(study, lesion, lesion.key_slice)
                if not mask.any():
                    continue
                rr, cc = np.nonzero(mask)
                size_mm = SliceMask.of(mask).extent_mm(study.spacing)
                centre = (rr.mean(), cc.mean())
                side = pp.crop_geometry(size_mm)
                image = pp.lesion_crop(study.pixels, study.spacing, slice_=float(lesion.key_slice), center_rc=centre, side_mm=side)
                pred = model(torch.from_numpy(image[None]))[0, 0].numpy() >= cut
                truth = _crop_mask(mask, study.spacing, centre, side)
                dices.append(2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1))
                axes = measure_recist(pred, (side / pp.CROP_SIZE,) * 2)
                if axes is not None:
                    long_err.append(abs(axes.long_axis_mm - lesion.long_axis_mm))
                    short_err.append(abs(axes.short_axis_mm - lesion.short_axis_mm))
    return {
        "val_key_slice_dice_mean": float(np.mean(dices)) if dices else 0.0,
        "val_long_axis_abs_err_mm_median": float(np.median(long_err)) if long_err else float("nan"),
        "val_short_axis_abs_err_mm_median": float(np.median(short_err)) if short_err else float("nan"),
        "val_lesions": float(len(dices)),
    }


# --------------------------------------------------------------------------------------------
# Lesion embedder (triplet network, sequential sampling, pseudo-labels, iterative refinement)

MARGINS = (0.1, 0.2, 0.4)


@dataclass(frozen=True, kw_only=True)
class EmbedderData:
    images: np.ndarray  # (N, 3, 64, 64) float16
    cues: np.ndarray  # (N, 4) float32
    types: np.ndarray  # (N,) true type index (-1 unknown)
    location: np.ndarray  # (N, 3) normalised x, y, z
    size: np.ndarray  # (N, 2) normalised long, short axis
    patients: np.ndarray
    studies: np.ndarray  # (N,) the study key of each lesion
    tracks: np.ndarray  # (N,) "patient/track" of each lesion, "" where no track is known


CROP_JITTER = (0.85, 1.2)  # embedder training: box side factor range (the analyzer's box is not the truth's)


def embedder_data(
    studies: Iterable[TrainStudy], ssbr: Callable[[TrainStudy], np.ndarray], *, rng: np.random.Generator | None = None
) -> EmbedderData:
    """One embedder input per annotated lesion; with ``rng``, each box's side is scaled by a factor
    in ``CROP_JITTER`` before the crop is padded around it, and the centre moved by about 10% of
    the box side, as a found lesion's box differs from its annotation."""
    images, cues, types, sizes, patients, keys, tracks = [], [], [], [], [], [], []
    for study in studies:
        if not study.lesions:
            continue
        scores = ssbr(study)
        canvas = pp.make_canvas(study.pixels, study.spacing)
        body = body_mask(canvas)
        for lesion in study.lesions:
            scale = float(rng.uniform(*CROP_JITTER)) if rng is not None else 1.0
            centre, side = box_crop(lesion.box, study.spacing, scale=scale)
            if rng is not None:  # the centre moves by about 10% of the (scaled) box side
                shift = rng.normal(0.0, 0.1 * (scale * box_side_mm(lesion.box, study.spacing)), 2) / np.asarray(study.spacing[1:])
                centre = (centre[0] + float(shift[0]), centre[1] + float(shift[1]))
            image, cue = embedder_input(
                study.pixels, study.spacing, canvas, body, key_slice=lesion.key_slice, center_rc=centre, side_mm=side,
                body_part_score=float(scores[lesion.key_slice]),
            )
            images.append(image.astype(np.float16))
            cues.append(cue)
            types.append(TYPE_ORDER.index(lesion.lesion_type) if lesion.lesion_type is not None else -1)
            sizes.append((lesion.long_axis_mm, lesion.short_axis_mm))
            patients.append(study.patient)
            keys.append(study.key)
            tracks.append(f"{study.patient}/{lesion.track_id}" if lesion.track_id else "")
    cues_a = np.asarray(cues, np.float32)
    loc = cues_a[:, :3].copy()
    loc = (loc - loc.min(0)) / np.maximum(loc.max(0) - loc.min(0), 1e-6)  # each dimension's max -> 1
    size = np.asarray(sizes, np.float32)
    size = size / max(size.max(), 1e-6)
    return EmbedderData(
        images=np.stack(images), cues=cues_a, types=np.asarray(types), location=loc, size=size, patients=np.asarray(patients),
        studies=np.asarray(keys), tracks=np.asarray(tracks),
    )


def sequential_sample(
    anchor: int, labels: np.ndarray, location: np.ndarray, size: np.ndarray, rng: np.random.Generator
) -> list[int] | None:
    """Five instances A..E: similarity to A decreasing in type, then location, then size.

    B: same type, near location, similar size; C: same type, near location, other size;
    D: same type, far location; E: another type.
    """
    same = np.flatnonzero((labels == labels[anchor]) & (np.arange(len(labels)) != anchor))
    other = np.flatnonzero(labels != labels[anchor])
    if len(same) < 3 or len(other) == 0:
        return None
    d_loc = np.linalg.norm(location[same] - location[anchor], axis=1)
    d_size = np.linalg.norm(size[same] - size[anchor], axis=1)
    near = same[np.argsort(d_loc)[: max(3, len(same) // 2)]]
    far = same[np.argsort(d_loc)[max(3, len(same) // 2) :]]
    near_size = np.linalg.norm(size[near] - size[anchor], axis=1)
    order = near[np.argsort(near_size)]
    b = int(order[0]) if rng.random() < 0.5 else int(order[min(1, len(order) - 1)])
    c = int(rng.choice(order[1:])) if len(order) > 1 else int(order[-1])
    if c == b:
        c = int(order[-1])
    d = int(rng.choice(far)) if len(far) else int(same[np.argmax(d_loc + d_size)])
    e = int(rng.choice(other))
    return [anchor, b, c, d, e]


def sequence_loss(emb: torch.Tensor) -> torch.Tensor:
    """The seed's joint loss over triplets ABC, ACD, ADE of (S, 5, D) embeddings, margins 0.1/0.2/0.4."""
    a = emb[:, 0:1]
    d2 = ((emb[:, 1:] - a) ** 2).sum(-1)  # AB, AC, AD, AE
    m1, m2, m3 = MARGINS
    loss = F.relu(d2[:, 0] - d2[:, 1] + m1) + F.relu(d2[:, 1] - d2[:, 2] + m2) + F.relu(d2[:, 2] - d2[:, 3] + m3)
    return loss.sum() / (2 * emb.shape[0])


TRACK_MARGIN = 0.2


@dataclass(frozen=True, kw_only=True)
class TrackTriplets:
    """Same-lesion pairs across a patient's studies, each with the other lesions of the second study.

    ``anchor[i]`` and ``positive[i]`` are one lesion in two studies; ``negatives[i]`` are the
    other lesions of ``positive[i]``'s study. Algorithm 1 joins two studies' lesions when each is
    the other's nearest in that study (the exclusion step): these triplets train exactly that.
    """

    anchor: np.ndarray
    positive: np.ndarray
    negatives: tuple[np.ndarray, ...]


def track_triplets(data: EmbedderData) -> TrackTriplets:
    """Every ordered same-track pair from two studies whose second study holds other lesions too."""
    anchors, positives, negatives = [], [], []
    by_study: dict[str, np.ndarray] = {}
    for key in np.unique(data.studies):
        by_study[str(key)] = np.flatnonzero(data.studies == key)
    known = np.flatnonzero(data.tracks != "")
    for a in known:
        same = known[(data.tracks[known] == data.tracks[a]) & (data.studies[known] != data.studies[a])]
        for p in same:
            others = by_study[str(data.studies[p])]
            others = others[others != p]
            if others.size:
                anchors.append(int(a))
                positives.append(int(p))
                negatives.append(others)
    return TrackTriplets(anchor=np.asarray(anchors, np.int64), positive=np.asarray(positives, np.int64), negatives=tuple(negatives))


def track_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: list[torch.Tensor]) -> torch.Tensor:
    """Hinge on squared distances: each anchor nearer its own lesion than the nearest other lesion
    of that study, by ``TRACK_MARGIN``."""
    d_ap = ((anchor - positive) ** 2).sum(-1)
    d_an = torch.stack([((n - a) ** 2).sum(-1).min() for a, n in zip(anchor, negatives, strict=True)])
    return F.relu(d_ap - d_an + TRACK_MARGIN).mean()


def _embed_all(model: torch.nn.Module, data: EmbedderData) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        e, logits = model(torch.from_numpy(data.images.astype(np.float32)), torch.from_numpy(data.cues))
    return e.numpy(), logits.numpy()


def _knn_labels(features: np.ndarray, seed_idx: np.ndarray, seed_labels: np.ndarray, k: int = 5) -> np.ndarray:
    d = ((features[:, None] - features[seed_idx][None]) ** 2).sum(-1)
    nn_idx = np.argsort(d, axis=1)[:, :k]
    votes = seed_labels[nn_idx]
    return np.array([np.bincount(v, minlength=NUM_TYPES).argmax() for v in votes])


def train_lesion_embedder(
    studies: Iterable[TrainStudy],
    *,
    ssbr: Callable[[TrainStudy], np.ndarray],
    rng: np.random.Generator,
    steps: int = 300,
    refine_steps: int = 150,
    refine_rounds: int = 1,
    sequences_per_batch: int = 24,
    classifier_weight: float = 1.0,
    track_weight: float = 1.0,
    tracks_per_batch: int = 16,
    crop_jitter: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Triplet network with sequential sampling on pseudo-labels from a 25% labelled seed set.

    ``classifier_weight`` weighs the type head's cross-entropy on the (pseudo-)labels against
    the sequence loss: the stronger, the tighter each type's cluster in the embedding.
    ``track_weight`` weighs :func:`track_loss` on ``tracks_per_batch`` same-lesion pairs per step,
    where the studies give lesion tracks (the synthetic cohort does; DeepLesion does not, and
    the term is then left out): the sequence loss pulls lesions of one type together, this
    term keeps one patient's different lesions of that type apart over time. ``crop_jitter``
    builds each crop from a jittered box (``embedder_data``). ``refine_rounds`` times the
    (pseudo-)labels are re-derived by kNN on the current embedding and the model fine-tuned on
    them for ``refine_steps`` (the seed's iterative refinement).
    """
    if refine_rounds < 1:
        raise ValueError(f"refine_rounds: must be 1 or more, got {refine_rounds}")
    if classifier_weight < 0:
        raise ValueError(f"classifier_weight: must be 0 or more, got {classifier_weight}")
    if track_weight < 0:
        raise ValueError(f"track_weight: must be 0 or more, got {track_weight}")
    t0 = time.perf_counter()
    data = embedder_data(studies, ssbr, rng=rng if crop_jitter else None)
    triplets = track_triplets(data)
    use_tracks = track_weight > 0 and triplets.anchor.size > 0
    n = len(data.types)
    labelled = np.flatnonzero(data.types >= 0)
    perm = rng.permutation(labelled)
    seed_idx = perm[: len(perm) // 4]
    val_idx = perm[len(perm) // 4 : len(perm) // 2]
    test_idx = perm[len(perm) // 2 :]
    # Pseudo-labels from the seed set: nearest neighbours on hand-made features (cues + intensity).
    raw = np.concatenate([data.cues, data.images[:, 1, 24:40, 24:40].astype(np.float32).reshape(n, -1).mean(1, keepdims=True) / 64.0], axis=1)
    raw = (raw - raw.mean(0)) / np.maximum(raw.std(0), 1e-6)
    pseudo = _knn_labels(raw, seed_idx, data.types[seed_idx])
    pseudo[seed_idx] = data.types[seed_idx]
    acc0 = float((pseudo[test_idx] == data.types[test_idx]).mean())

    model = build("lesion_embedder")

    def run(n_steps: int, lr: float, labels: np.ndarray, desc: str) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        last = 0.0
        model.train()
        for _ in _progress(range(n_steps), n_steps, desc, progress):
            seqs = []
            while len(seqs) < sequences_per_batch:
                s = sequential_sample(int(rng.integers(0, n)), labels, data.location, data.size, rng)
                if s is not None:
                    seqs.append(s)
            idx = np.asarray(seqs).reshape(-1)
            x = torch.from_numpy(data.images[idx].astype(np.float32))
            c = torch.from_numpy(data.cues[idx])
            if use_tracks:  # the same-lesion triplets ride in the same forward pass, after the sequences
                picks = rng.choice(triplets.anchor.size, size=min(tracks_per_batch, triplets.anchor.size), replace=False)
                negs = [triplets.negatives[i] for i in picks]
                extra = np.concatenate([triplets.anchor[picks], triplets.positive[picks], *negs])
                x = torch.cat([x, torch.from_numpy(data.images[extra].astype(np.float32))])
                c = torch.cat([c, torch.from_numpy(data.cues[extra])])
            emb, logits = model(x, c)
            loss = sequence_loss(emb[: idx.size].reshape(len(seqs), 5, -1))
            loss = loss + classifier_weight * F.cross_entropy(logits[: idx.size], torch.from_numpy(labels[idx]))
            if use_tracks:
                anchor, positive, *negatives = torch.split(emb[idx.size :], [picks.size, picks.size, *(len(g) for g in negs)])
                loss = loss + track_weight * track_loss(anchor, positive, negatives)
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = 0.9 * last + 0.1 * loss.item() if last else loss.item()
        return last

    run(steps, 0.02, pseudo, "embedder")
    refined_acc = []
    for round_ in range(refine_rounds):
        # Iterative refinement: relabel with the embedding, fine-tune with a lower learning rate.
        emb, _ = _embed_all(model, data)
        refined = _knn_labels(emb, seed_idx, data.types[seed_idx])
        refined[seed_idx] = data.types[seed_idx]
        refined_acc.append(float((refined[test_idx] == data.types[test_idx]).mean()))
        loss = run(refine_steps, 0.002, refined, f"embedder refine {round_ + 1}/{refine_rounds}")
    emb, logits = _embed_all(model, data)
    acc2 = float((_knn_labels(emb, seed_idx, data.types[seed_idx])[test_idx] == data.types[test_idx]).mean())
    head_acc = float((logits[test_idx].argmax(1) == data.types[test_idx]).mean())
    return TrainResult(
        name="lesion_embedder",
        model=model.eval(),
        figures={
            "final_loss": loss,
            "lesions": float(n),
            "seed_set": float(len(seed_idx)),
            "validation_set": float(len(val_idx)),
            "test_set": float(len(test_idx)),
            "test_type_acc_pseudo_labels_initial": acc0,
            "test_type_acc_pseudo_labels_refined": refined_acc[0],
            **{f"test_type_acc_pseudo_labels_round_{r}": a for r, a in enumerate(refined_acc[1:], start=2)},
            "test_type_acc_knn_on_embedding": acc2,
            "test_type_acc_classifier_head": head_acc,
            "classifier_weight": classifier_weight,
            "track_weight": track_weight,
            "crop_jitter": float(crop_jitter),
            "same_lesion_pairs": float(triplets.anchor.size if use_tracks else 0),
            "steps": float(steps),
            "refine_steps": float(refine_steps),
            "refine_rounds": float(refine_rounds),
        },
        seconds=time.perf_counter() - t0,
        samples=n,
    )
