"""The project's own lesion records: what the models find, before it becomes DICOM or rows."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class LesionType(enum.StrEnum):
    """The eight coarse lesion types of DeepLesion."""

    LUNG = "lung"
    ABDOMEN = "abdomen"
    MEDIASTINUM = "mediastinum"
    LIVER = "liver"
    PELVIS = "pelvis"
    SOFT_TISSUE = "soft_tissue"
    KIDNEY = "kidney"
    BONE = "bone"


Point2D = tuple[float, float]  # (column, row) in pixels of the key slice


@dataclass(frozen=True, kw_only=True)
class RecistAxes:
    """RECIST long and short axis on the key slice, lengths in mm, end points in pixels."""

    long_axis_mm: float
    short_axis_mm: float
    long_axis_endpoints: tuple[Point2D, Point2D]
    short_axis_endpoints: tuple[Point2D, Point2D]


@dataclass(frozen=True, kw_only=True)
class Lesion:
    """One lesion found in one volume.

    Indices refer to the ``Volume`` the lesion was found in (slice index along the sorted
    stack; columns and rows in pixels). ``mask`` is a boolean array of the volume's shape
    restricted to ``mask_offset`` (slice, row, column) so that large volumes are not copied
    per lesion; ``None`` when the segmenter gave no mask.
    """

    index: int
    key_slice: int
    # (col0, row0, col1, row1) on the key slice, in pixel-index coordinates (pixel centres at
    # integers): a mask covering columns 3..7 has col0 2.5 and col1 7.5, as the truth boxes do.
    box: tuple[float, float, float, float]
    score: float
    lesion_type: LesionType
    recist: RecistAxes | None
    volume_mm3: float | None
    mask: np.ndarray | None = None
    mask_offset: tuple[int, int, int] = (0, 0, 0)
    center_patient: tuple[float, float, float] | None = None
    body_part_score: float | None = None
    embedding: np.ndarray | None = None
    site: str | None = None  # a key of node.dicom.codes.SITES, e.g. "lung", "liver"
    tracking_id: str | None = None
    tracking_uid: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


class ResponseCategory(enum.StrEnum):
    """RECIST 1.1 overall response (target + new-lesion rule); BASELINE for the first study."""

    BASELINE = "baseline"
    CR = "CR"
    PR = "PR"
    SD = "SD"
    PD = "PD"
    NE = "NE"  # not evaluable


@dataclass(frozen=True, kw_only=True)
class ResponseAssessment:
    """RECIST 1.1 response of one follow-up study against the patient's baseline and nadir."""

    category: ResponseCategory
    sum_of_diameters_mm: float
    baseline_sum_mm: float
    nadir_sum_mm: float
    change_from_baseline_pct: float | None
    change_from_nadir_pct: float | None
    new_lesions: bool
    target_tracking_uids: tuple[str, ...] = ()
    baseline_study_uid: str | None = None
