"""The DeepLesion loader reads the published layout: DL_info.csv + 16-bit PNGs of HU + 32768."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.lesions.records import LesionType
from node.training.datasets import deeplesion_studies, lesion_mask_2d, read_deeplesion_png

HEADER = [
    "File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index", "Measurement_coordinates",
    "Bounding_boxes", "Lesion_diameters_Pixel_", "Normalized_lesion_location", "Coarse_lesion_type",
    "Possibly_noisy", "Slice_range", "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender",
    "Patient_age", "Train_Val_Test",
]


def _write_series(root: Path, folder: str, lo: int, hi: int, value) -> None:
    d = root / "Images_png" / folder
    d.mkdir(parents=True)
    for i in range(lo, hi + 1):
        hu = np.full((32, 32), value(i), np.int32)
        Image.fromarray((hu + 32768).astype(np.uint16)).save(d / f"{i:03d}.png")


def _row(name, patient, key, coords, box, diam, code, rng, spacing):
    return [name, patient, "1", "1", str(key), coords, box, diam, "0.5, 0.5, 0.5", str(code), "0", rng, spacing,
            "32, 32", "-175, 275", "F", "50", "1"]


def test_reads_series_lesions_and_hu(tmp_path: Path) -> None:
    _write_series(tmp_path, "000001_01_01", 100, 104, lambda i: i - 150)
    _write_series(tmp_path, "000002_01_01", 1, 3, lambda i: -1000)
    rows = [
        _row("000001_01_01_102.png", "1", 102, "10, 16, 22, 16, 16, 12, 16, 20", "9, 11, 23, 21", "12, 8", 4, "100, 104", "0.7, 0.7, 2.5"),
        _row("000001_01_01_103.png", "1", 103, "3, 3, 7, 3, 5, 2, 5, 4", "2, 1, 8, 5", "4, 2", 5, "100, 104", "0.7, 0.7, 2.5"),
        _row("000002_01_01_002.png", "2", 2, "1, 1, 5, 5, 1, 5, 5, 1", "0, 0, 6, 6", "5.6, 5.6", -1, "1, 3", "0.8, 0.8, 5"),
    ]
    with (tmp_path / "DL_info.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(rows)
    studies = list(deeplesion_studies(tmp_path))
    assert [s.key for s in studies] == ["000001_01_01", "000002_01_01"]
    first = studies[0]
    assert first.pixels.shape == (5, 32, 32)
    np.testing.assert_array_equal(first.pixels[:, 0, 0], [-50, -49, -48, -47, -46])
    assert first.spacing == (2.5, 0.7, 0.7)
    liver, lung = first.lesions
    assert liver.key_slice == 2 and liver.lesion_type is LesionType.LIVER
    assert lung.lesion_type is LesionType.LUNG
    assert liver.long_axis_mm == pytest.approx(12 * 0.7)
    assert studies[1].lesions[0].lesion_type is None  # -1: unlabelled (DeepLesion's test split)
    mask = lesion_mask_2d(first, liver, liver.key_slice)
    assert mask[16, 16] and not mask[0, 0]
    assert mask[16, 11] and mask[16, 21] and not mask[16, 24]
    assert not lesion_mask_2d(first, liver, 0).any()  # weak labels: key slice only


def test_png_offset(tmp_path: Path) -> None:
    Image.fromarray(np.array([[32768 - 1024, 32768 + 40]], np.uint16)).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_deeplesion_png(tmp_path / "a.png"), [[-1024, 40]])


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root"):
        list(deeplesion_studies(tmp_path))
