"""Ground truth of a synthetic study: the phantom's voxels, its lesions, organs and regions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from node.lesions.records import LesionType, RecistAxes

Point2D = tuple[float, float]

#: Organ label values of ``SynthStudy.organ_labels``; index = label value.
ORGAN_NAMES: tuple[str, ...] = (
    "background",
    "subcutaneous_fat",
    "muscle",
    "visceral_fat",
    "lung",
    "airway",
    "heart",
    "aorta",
    "mediastinum",
    "liver",
    "spleen",
    "kidney",
    "pancreas",
    "stomach",
    "bowel",
    "bladder",
    "spine",
    "spinal_canal",
    "rib",
    "pelvis",
    "femur",
    "vessel",
    "table",
    "skin",
    "sternum",
)
ORGAN_LABELS: dict[str, int] = {name: i for i, name in enumerate(ORGAN_NAMES)}

#: Body regions reported in ``SynthStudy.regions``, inferior to superior.
REGIONS: tuple[str, ...] = ("pelvis", "abdomen", "chest")


@dataclass(frozen=True, kw_only=True)
class LesionTruth:
    """One lesion as drawn into one synthetic study.

    Pixel coordinates are (column, row) on ``key_slice``, an index into the sorted stack
    (slice 0 is the most inferior). The lesion's voxels are those of
    ``SynthStudy.lesion_labels == label``.
    """

    lesion_id: str
    track_id: str
    label: int
    lesion_type: LesionType
    site: str
    appearance: str
    center_patient: tuple[float, float, float]
    key_slice: int
    box: tuple[float, float, float, float]
    long_axis_mm: float
    short_axis_mm: float
    long_axis_endpoints: tuple[Point2D, Point2D]
    short_axis_endpoints: tuple[Point2D, Point2D]
    volume_mm3: float
    diameter_mm: float
    change: str = "baseline"

    @property
    def recist(self) -> RecistAxes:
        return RecistAxes(
            long_axis_mm=self.long_axis_mm,
            short_axis_mm=self.short_axis_mm,
            long_axis_endpoints=self.long_axis_endpoints,
            short_axis_endpoints=self.short_axis_endpoints,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "lesion_id": self.lesion_id,
            "track_id": self.track_id,
            "label": self.label,
            "lesion_type": str(self.lesion_type),
            "site": self.site,
            "appearance": self.appearance,
            "center_patient": [round(v, 3) for v in self.center_patient],
            "key_slice": self.key_slice,
            "box": [round(v, 2) for v in self.box],
            "long_axis_mm": round(self.long_axis_mm, 3),
            "short_axis_mm": round(self.short_axis_mm, 3),
            "long_axis_endpoints": [[round(c, 2) for c in p] for p in self.long_axis_endpoints],
            "short_axis_endpoints": [[round(c, 2) for c in p] for p in self.short_axis_endpoints],
            "volume_mm3": round(self.volume_mm3, 2),
            "diameter_mm": round(self.diameter_mm, 3),
            "change": self.change,
        }


@dataclass(frozen=True, kw_only=True)
class SynthStudy:
    """One synthetic CT study (one axial series) with everything that is true about it.

    Parameters
    ----------
    hu:
        int16 array (slices, rows, columns) in HU, slice 0 most inferior.
    affine:
        4x4 matrix mapping (column, row, slice, 1) to patient LPS mm, as ``node.imaging.volume.Volume``.
    spacing:
        (slice, row, column) spacing in mm.
    slice_thickness:
        reconstructed slice thickness in mm.
    lesions:
        lesions visible in this study (inside the scanned range and field of view).
    organ_labels:
        uint8 array like ``hu``; values index ``organ_names``.
    lesion_labels:
        uint16 array like ``hu``; value ``lesion.label`` marks that lesion's voxels, 0 elsewhere.
    regions:
        z-range (low, high) in patient mm of each body region inside the scanned range.
    """

    hu: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    slice_thickness: float
    lesions: list[LesionTruth]
    organ_labels: np.ndarray
    lesion_labels: np.ndarray
    regions: dict[str, tuple[float, float]]
    patient_id: str
    patient_name: str
    patient_sex: str
    patient_birth_date: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    accession_number: str
    timepoint: int
    coverage: str
    kvp: float = 120.0
    table_height_mm: float = 0.0
    organ_names: tuple[str, ...] = ORGAN_NAMES
    pose: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def slice_z(self) -> np.ndarray:
        """Patient z (mm) of every slice."""
        k = np.arange(self.hu.shape[0], dtype=np.float64)
        return self.affine[2, 2] * k + self.affine[2, 3]

    def lesion_mask(self, lesion: LesionTruth) -> np.ndarray:
        """Boolean mask of one lesion, shaped like ``hu``."""
        return self.lesion_labels == lesion.label

    def to_volume(self) -> Any:
        """The study as a ``node.imaging.volume.Volume`` (float32 HU), as ingest would give it."""
        from node.imaging.volume import Volume

        return Volume(
            pixels=self.hu.astype(np.float32),
            affine=self.affine.copy(),
            spacing=self.spacing,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
            sop_instance_uids=(),
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        )

    def truth_json(self) -> dict[str, Any]:
        """Everything true about the study except voxel arrays, ready for ``json.dump``."""
        return {
            "patient_id": self.patient_id,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "study_date": self.study_date,
            "timepoint": self.timepoint,
            "coverage": self.coverage,
            "shape": list(self.hu.shape),
            "spacing": [round(v, 4) for v in self.spacing],
            "slice_thickness": self.slice_thickness,
            "affine": np.round(self.affine, 4).tolist(),
            "table_height_mm": round(self.table_height_mm, 2),
            "pose": {k: round(v, 3) for k, v in self.pose.items()},
            "regions": {k: [round(lo, 2), round(hi, 2)] for k, (lo, hi) in self.regions.items()},
            "organ_names": list(self.organ_names),
            "lesions": [lesion.to_json() for lesion in self.lesions],
        }
