"""A CT volume in Hounsfield units with its geometry in patient coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Volume:
    """One CT stack, assembled and sorted along the slice normal.

    Parameters
    ----------
    pixels:
        float32 array of shape (slices, rows, columns) in HU (rescale already applied).
    affine:
        4x4 float64 matrix mapping voxel indices (column, row, slice, 1) to patient
        coordinates (x, y, z, 1) in mm (DICOM LPS). Slice 0 is the first slice along the normal.
    spacing:
        (slice, row, column) spacing in mm: slice spacing from positions, pixel spacing as
        (row spacing, column spacing) from PixelSpacing.
    study_instance_uid, series_instance_uid, frame_of_reference_uid:
        identify where the volume came from.
    sop_instance_uids:
        SOP Instance UID of the source image of each slice (same order as ``pixels``); for an
        Enhanced (multi-frame) CT all entries are the same UID and ``frame_numbers`` says which frame.
    sop_class_uid:
        SOP Class UID of the source images.
    frame_numbers:
        1-based frame number per slice for multi-frame sources, else empty.
    """

    pixels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    sop_class_uid: str
    frame_numbers: tuple[int, ...] = ()
    series_description: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    def slice_position(self, index: int) -> np.ndarray:
        """Patient coordinates (x, y, z) of the first pixel of slice ``index``."""
        return (self.affine @ np.array([0.0, 0.0, float(index), 1.0]))[:3]

    def voxel_to_patient(self, column: float, row: float, slice_: float) -> np.ndarray:
        return (self.affine @ np.array([column, row, slice_, 1.0]))[:3]

    def patient_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Voxel (column, row, slice) of a patient-coordinate point."""
        point = np.append(np.asarray(xyz, dtype=np.float64), 1.0)
        return (np.linalg.inv(self.affine) @ point)[:3]
