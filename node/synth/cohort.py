"""Write a synthetic longitudinal cohort: DIR/<patient>/<study>/ DICOM + truth.json + masks.npz."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from node.synth.phantom import ScanParams, synthesize_study
from node.synth.truth import SynthStudy
from node.synth.writer import write_ct_series

logger = logging.getLogger(__name__)


def write_truth(study: SynthStudy, study_dir: Path, *, masks: bool = True) -> Path:
    """Write ``truth.json`` (and ``masks.npz`` with organ and lesion labels) into ``study_dir``."""
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / "truth.json"
    path.write_text(json.dumps(study.truth_json(), indent=1))
    if masks:
        np.savez_compressed(
            study_dir / "masks.npz",
            organ_labels=study.organ_labels,
            lesion_labels=study.lesion_labels,
        )
    return path


def write_cohort(
    out_dir: Path,
    *,
    patients: int,
    timepoints: int,
    seed: int = 0,
    small: bool = False,
    scan: ScanParams | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    enhanced: bool = False,
    masks: bool = True,
    first_patient: int = 1,
) -> list[Path]:
    """Write ``patients`` x ``timepoints`` studies and return the study folders.

    Folders are ``out_dir/SYN0001/T0_<date>/`` holding the CT series in ``CT/``, ``truth.json``
    and ``masks.npz``.
    """
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    if not 1 <= timepoints <= 8:
        raise ValueError(f"timepoints must be 1-8, got {timepoints}")
    out_dir = Path(out_dir)
    folders = []
    for p in range(first_patient, first_patient + patients):
        for t in range(timepoints):
            study = synthesize_study(p, t, scan=scan, cohort_seed=seed, small=small)
            folder = out_dir / study.patient_id / f"T{t}_{study.study_date}"
            write_ct_series(
                study, folder / "CT", transfer_syntax=transfer_syntax, enhanced=enhanced
            )
            write_truth(study, folder, masks=masks)
            logger.info(
                "wrote %s timepoint %d: %d slices, %d lesions",
                study.patient_id,
                t,
                study.hu.shape[0],
                len(study.lesions),
            )
            folders.append(folder)
    return folders
