"""Training studies from the synthetic cohort or from DeepLesion's published layout.

Both sources give ``TrainStudy`` records (HU stack, spacing, lesions); the model-specific sample
builders in ``node.training.train`` only see those. DeepLesion: ``DL_info.csv`` plus
``Images_png/<patient>_<study>_<series>/<slice>.png`` (16-bit PNG, value = HU + 32768).
DeepLesion has no masks: lesion masks are then the ellipse through the RECIST axes on the key
slice (the weak label of Cai et al. 2018).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from node.lesions.records import LesionType

if TYPE_CHECKING:
    from node.synth.truth import LesionTruth

logger = logging.getLogger(__name__)

TYPE_ORDER: tuple[LesionType, ...] = tuple(LesionType)  # the models' class order

# Size classes the sample builders can weigh (`ainode train --detector-small-lesions N`,
# `--segmenter-large-lesions N`: N times a lesion's windows or crops); kept here, without torch,
# so the CLI's defaults and help read the same numbers as training.
SMALL_LESION_MM = 12.0  # detector: long axis under this
LARGE_LESION_MM = 30.0  # segmenter: key-slice extent of this or more
# The committed segmenter's multiple for large lesions (the CLI's default and
# train_lesion_segmenter's): at 1 large kidney masses were cut down to their necrotic core; 5 kept
# part of it out, 8 less so (the segmenter's card).
SEGMENTER_LARGE_LESIONS = 8


def windows_per_lesion(per_lesion: int, size_mm: float, *, small: int = 1, large: int = 1) -> int:
    """``per_lesion`` samples, ``small`` times as many (at least once) for a lesion under
    SMALL_LESION_MM, ``large`` times as many for one of LARGE_LESION_MM or more."""
    multiple = small if size_mm < SMALL_LESION_MM else large if size_mm >= LARGE_LESION_MM else 1
    return per_lesion * max(1, multiple)

#: DeepLesion's Coarse_lesion_type codes 1..8.
DEEPLESION_TYPES: dict[int, LesionType] = {
    1: LesionType.BONE,
    2: LesionType.ABDOMEN,
    3: LesionType.MEDIASTINUM,
    4: LesionType.LIVER,
    5: LesionType.LUNG,
    6: LesionType.KIDNEY,
    7: LesionType.SOFT_TISSUE,
    8: LesionType.PELVIS,
}


@dataclass(frozen=True, kw_only=True)
class TrainLesion:
    """One annotated lesion; pixel coordinates (column, row) on ``key_slice`` of its study."""

    key_slice: int
    box: tuple[float, float, float, float]
    lesion_type: LesionType | None  # None: unlabelled
    long_axis_mm: float
    short_axis_mm: float
    long_axis_endpoints: tuple[tuple[float, float], tuple[float, float]]
    short_axis_endpoints: tuple[tuple[float, float], tuple[float, float]]
    label: int = 0  # value in TrainStudy.labels, 0 when there is no mask volume
    track_id: str = ""


@dataclass(frozen=True, kw_only=True)
class TrainStudy:
    """A CT stack in HU, slice 0 most inferior, with its lesions and (optionally) lesion labels."""

    key: str
    patient: str
    pixels: np.ndarray
    spacing: tuple[float, float, float]
    lesions: tuple[TrainLesion, ...]
    labels: np.ndarray | None = None


def train_lesion(truth: LesionTruth) -> TrainLesion:
    """A synthetic study's truth lesion as a training annotation (same pixel coordinates)."""
    return TrainLesion(
        key_slice=truth.key_slice,
        box=truth.box,
        lesion_type=truth.lesion_type,
        long_axis_mm=truth.long_axis_mm,
        short_axis_mm=truth.short_axis_mm,
        long_axis_endpoints=truth.long_axis_endpoints,
        short_axis_endpoints=truth.short_axis_endpoints,
        label=truth.label,
        track_id=truth.track_id,
    )


def synthetic_studies(
    patients: range,
    *,
    cohort_seed: int = 0,
    timepoints: int = 1,
    medium_every: int = 3,
    cohort_version: int | None = None,
) -> Iterator[TrainStudy]:
    """Studies of the synthetic cohort: the small preset, every ``medium_every``-th patient at 256x256."""
    from node.synth.phantom import ScanParams, synthesize_study

    for p in patients:
        for t in range(timepoints):
            scan = None
            if medium_every and p % medium_every == 0:
                rng = np.random.default_rng([cohort_seed, p, t, 7])
                scan = ScanParams(
                    rows=256,
                    columns=256,
                    pixel_spacing=float(rng.uniform(1.5, 1.8)),
                    slice_thickness=float(rng.choice([1.25, 2.0, 2.5, 3.0])),
                    coverage=str(rng.choice(["chest_abdomen_pelvis", "chest_abdomen", "abdomen_pelvis"])),
                )
            study = synthesize_study(p, t, scan=scan, small=True, cohort_seed=cohort_seed, cohort_version=cohort_version)
            yield TrainStudy(
                key=f"syn{cohort_seed}_{p}_{t}",
                patient=f"syn{cohort_seed}_{p}",
                pixels=study.hu.astype(np.float32),
                spacing=tuple(float(s) for s in study.spacing),
                lesions=tuple(train_lesion(les) for les in study.lesions),
                labels=study.lesion_labels,
            )


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace('"', "").split(",") if x.strip()]


def read_deeplesion_png(path: Path) -> np.ndarray:
    """One DeepLesion slice in HU (the PNG stores HU + 32768 as 16-bit)."""
    from PIL import Image

    with Image.open(path) as image:
        data = np.asarray(image, dtype=np.int32)
    return (data - 32768).astype(np.float32)


def _read_info(root: Path) -> dict[str, list[dict[str, str]]]:
    info = Path(root) / "DL_info.csv"
    if not info.is_file():
        raise ValueError(f"root: {info} not found (expected DeepLesion's DL_info.csv)")
    series: dict[str, list[dict[str, str]]] = {}
    with info.open(newline="") as fh:
        for row in csv.DictReader(fh):
            folder = row["File_name"].rsplit("_", 1)[0]
            series.setdefault(folder, []).append(row)
    return series


def deeplesion_series(root: Path) -> list[str]:
    """Series folders (``<patient>_<study>_<series>``) named in ``DL_info.csv``."""
    return sorted(_read_info(root))


def deeplesion_studies(
    root: Path, *, max_series: int | None = None, series: Sequence[str] | None = None
) -> Iterator[TrainStudy]:
    """Series of a DeepLesion download at ``root`` (``DL_info.csv`` and ``Images_png/``).

    Each series gives the slices of its ``Slice_range`` and every lesion annotated on it;
    ``series`` restricts the folders read (e.g. a train/validation split).
    """
    root = Path(root)
    table = _read_info(root)
    chosen = sorted(table) if series is None else list(series)
    for count, folder in enumerate(chosen):
        if max_series is not None and count >= max_series:
            break
        rows = table[folder]
        first = rows[0]
        lo, hi = (int(v) for v in _floats(first["Slice_range"]))
        sx, sy, sz = _floats(first["Spacing_mm_px_"])
        directory = root / "Images_png" / folder
        slices = [directory / f"{i:03d}.png" for i in range(lo, hi + 1)]
        missing = [p for p in slices if not p.is_file()]
        if missing:
            logger.warning("DeepLesion series %s: %d slice files missing, skipped", folder, len(missing))
            continue
        pixels = np.stack([read_deeplesion_png(p) for p in slices])
        lesions = []
        for row in rows:
            key = int(row["Key_slice_index"]) - lo
            m = _floats(row["Measurement_coordinates"])  # long axis x1,y1,x2,y2 then short axis
            box = tuple(_floats(row["Bounding_boxes"]))
            long_px, short_px = _floats(row["Lesion_diameters_Pixel_"])
            code = int(float(row["Coarse_lesion_type"]))
            lesions.append(
                TrainLesion(
                    key_slice=key,
                    box=box,  # type: ignore[arg-type]
                    lesion_type=DEEPLESION_TYPES.get(code),
                    long_axis_mm=long_px * sx,
                    short_axis_mm=short_px * sx,
                    long_axis_endpoints=((m[0], m[1]), (m[2], m[3])),
                    short_axis_endpoints=((m[4], m[5]), (m[6], m[7])),
                    track_id=f"{row['Patient_index']}",
                )
            )
        yield TrainStudy(
            key=folder,
            patient=first["Patient_index"],
            pixels=pixels,
            spacing=(sz, sy, sx),
            lesions=tuple(lesions),
            labels=None,
        )


def recist_ellipse(lesion: TrainLesion, shape: tuple[int, int]) -> np.ndarray:
    """Weak 2D mask: the ellipse whose axes are the lesion's RECIST long and short axes."""
    (x0, y0), (x1, y1) = lesion.long_axis_endpoints
    (u0, v0), (u1, v1) = lesion.short_axis_endpoints
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    a = max(np.hypot(x1 - x0, y1 - y0) / 2.0, 0.5)
    b = max(np.hypot(u1 - u0, v1 - v0) / 2.0, 0.5)
    theta = np.arctan2(y1 - y0, x1 - x0)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    dx, dy = cc - cx, rr - cy
    p = dx * np.cos(theta) + dy * np.sin(theta)
    q = -dx * np.sin(theta) + dy * np.cos(theta)
    return (p / a) ** 2 + (q / b) ** 2 <= 1.0


def lesion_mask_2d(study: TrainStudy, lesion: TrainLesion, slice_: int) -> np.ndarray:
    """The lesion's mask on ``slice_``: the label volume when there is one, else the RECIST ellipse on the key slice."""
    if study.labels is not None and lesion.label:
        return study.labels[slice_] == lesion.label
    if slice_ == lesion.key_slice:
        return recist_ellipse(lesion, study.pixels.shape[1:])
    return np.zeros(study.pixels.shape[1:], dtype=bool)
