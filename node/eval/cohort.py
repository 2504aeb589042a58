"""The held-out evaluation cohort: synthetic studies with their truth, made in memory or read
from a folder written by ``ainode synth``.

The default cohort uses ``HELD_OUT_COHORT_SEED``, a cohort seed that the training code does not
use (``ainode train`` defaults to cohort seed 0; the demo uses 2026, the ingest benchmark 99),
and scan parameters that the training cohort does not draw: 192 x 192 matrices at 1.9-2.3 mm
pixels (training: 96-160 pixels at 2.4-4.8 mm, or 256 pixels at 1.5-1.8 mm), all inside the
range the analyzer accepts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from node.imaging.volume import Volume
from node.lesions.records import LesionType
from node.synth.truth import LesionTruth

logger = logging.getLogger(__name__)

HELD_OUT_COHORT_SEED = 9001
HELD_OUT_COVERAGES = ("chest", "abdomen", "abdomen_pelvis", "chest_abdomen", "chest_abdomen_pelvis")


@dataclass(frozen=True, kw_only=True)
class EvalStudy:
    """One study of the evaluation cohort with everything true about it.

    ``lesion_labels`` has the volume's shape; value ``lesion.label`` marks a lesion's voxels.
    ``pose`` maps the phantom's body frame to patient coordinates (rotation_deg, shift_x_mm,
    shift_y_mm, shift_z_mm), so lesion locations can be compared across patients.
    """

    patient: str
    timepoint: int
    volume: Volume
    lesions: list[LesionTruth]
    lesion_labels: np.ndarray
    pose: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lesion_labels.shape != self.volume.pixels.shape:
            raise ValueError(
                f"lesion_labels: shape {self.lesion_labels.shape} differs from the volume's {self.volume.pixels.shape}"
            )

    def slice_z(self) -> np.ndarray:
        """Patient z (mm) of every slice."""
        k = np.arange(self.volume.pixels.shape[0], dtype=np.float64)
        return self.volume.affine[2, 2] * k + self.volume.affine[2, 3]

    def body_z(self) -> np.ndarray:
        """Body-frame z (mm) of every slice: where along the phantom's body it lies, whatever
        the table position (``body_frame``'s z)."""
        return self.slice_z() - self.pose.get("shift_z_mm", 0.0)

    def body_frame(self, point: tuple[float, float, float]) -> np.ndarray:
        """A patient-coordinate point in the phantom's body frame (mm), pose removed."""
        theta = np.deg2rad(self.pose.get("rotation_deg", 0.0))
        dx = point[0] - self.pose.get("shift_x_mm", 0.0)
        dy = point[1] - self.pose.get("shift_y_mm", 0.0)
        c, s = np.cos(theta), np.sin(theta)
        return np.array([c * dx + s * dy, -s * dx + c * dy, point[2] - self.pose.get("shift_z_mm", 0.0)])


def held_out_scan(rng: np.random.Generator, *, num_slices: int | None = None):  # -> ScanParams
    """Scan parameters of one held-out study (see the module docstring)."""
    from node.synth.phantom import ScanParams

    return ScanParams(
        num_slices=num_slices,
        rows=192,
        columns=192,
        pixel_spacing=float(rng.uniform(1.9, 2.3)),
        slice_thickness=float(rng.choice([2.0, 3.0, 4.0])),
        coverage=str(rng.choice(HELD_OUT_COVERAGES)),
        fov_center=(float(rng.uniform(-10, 10)), float(rng.uniform(-20, 20))),
        noise_hu=float(rng.uniform(8.0, 14.0)),
    )


def synthetic_cohort(
    *,
    patients: int,
    timepoints: int,
    seed: int = HELD_OUT_COHORT_SEED,
    first_patient: int = 1,
    num_slices: int | None = None,
    cohort_version: int | None = None,
) -> Iterator[EvalStudy]:
    """Synthesize ``patients`` x ``timepoints`` held-out studies, one at a time.

    ``num_slices`` fixes the number of slices (centred on each study's coverage) for a quick run;
    ``cohort_version`` the synthetic cohort's version (None: the newest).
    """
    from node.synth.phantom import synthesize_study

    if patients < 1:
        raise ValueError(f"patients: must be at least 1, got {patients}")
    if not 1 <= timepoints <= 8:
        raise ValueError(f"timepoints: must be 1-8, got {timepoints}")
    for p in range(first_patient, first_patient + patients):
        for t in range(timepoints):
            scan = held_out_scan(np.random.default_rng([seed, p, t, 4242]), num_slices=num_slices)
            study = synthesize_study(p, t, scan=scan, cohort_seed=seed, cohort_version=cohort_version)
            yield EvalStudy(
                patient=study.patient_id,
                timepoint=t,
                volume=study.to_volume(),
                lesions=list(study.lesions),
                lesion_labels=study.lesion_labels,
                pose=dict(study.pose),
            )


def _lesion_from_json(item: dict) -> LesionTruth:
    def points(value) -> tuple[tuple[float, float], tuple[float, float]]:
        return (tuple(float(c) for c in value[0]), tuple(float(c) for c in value[1]))  # type: ignore[return-value]

    return LesionTruth(
        lesion_id=str(item["lesion_id"]),
        track_id=str(item["track_id"]),
        label=int(item["label"]),
        lesion_type=LesionType(item["lesion_type"]),
        site=str(item["site"]),
        appearance=str(item.get("appearance", "")),
        center_patient=tuple(float(v) for v in item["center_patient"]),  # type: ignore[arg-type]
        key_slice=int(item["key_slice"]),
        box=tuple(float(v) for v in item["box"]),  # type: ignore[arg-type]
        long_axis_mm=float(item["long_axis_mm"]),
        short_axis_mm=float(item["short_axis_mm"]),
        long_axis_endpoints=points(item["long_axis_endpoints"]),
        short_axis_endpoints=points(item["short_axis_endpoints"]),
        volume_mm3=float(item["volume_mm3"]),
        diameter_mm=float(item.get("diameter_mm", item["long_axis_mm"])),
        change=str(item.get("change", "baseline")),
    )


def study_folders(root: Path) -> list[Path]:
    """Study folders under ``root`` (each holds ``truth.json``, ``masks.npz`` and the CT series)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root: {root} is not a folder")
    return sorted(p.parent for p in root.rglob("truth.json"))


def read_study(folder: Path) -> EvalStudy:
    """Read one study written by ``ainode synth``: the CT series, ``truth.json`` and ``masks.npz``."""
    from node.dicom.ingest import assemble_volumes, read_datasets

    folder = Path(folder)
    truth = json.loads((folder / "truth.json").read_text())
    masks = folder / "masks.npz"
    if not masks.is_file():
        raise ValueError(f"folder: {masks} missing (write the cohort without --no-masks)")
    with np.load(masks) as data:
        labels = data["lesion_labels"]
    series = folder / "CT" if (folder / "CT").is_dir() else folder
    datasets, _ = read_datasets([series])
    result = assemble_volumes(datasets)
    wanted = [v for v in result.volumes if v.series_instance_uid == truth["series_instance_uid"]]
    if not wanted:
        raise ValueError(f"folder: no usable CT volume in {series} ({result.reason() or 'series not found'})")
    volume = wanted[0]
    truth_affine = np.asarray(truth["affine"], dtype=np.float64)
    if volume.pixels.shape != labels.shape or not np.allclose(volume.affine, truth_affine, atol=0.05):
        raise ValueError(f"folder: the CT series in {folder} does not match its truth.json geometry")
    return EvalStudy(
        patient=str(truth["patient_id"]),
        timepoint=int(truth["timepoint"]),
        volume=volume,
        lesions=[_lesion_from_json(item) for item in truth["lesions"]],
        lesion_labels=labels,
        pose={k: float(v) for k, v in truth.get("pose", {}).items()},
    )


def folder_cohort(root: Path) -> Iterator[EvalStudy]:
    """The studies of a cohort folder written by ``ainode synth``, one at a time."""
    for folder in study_folders(root):
        yield read_study(folder)
