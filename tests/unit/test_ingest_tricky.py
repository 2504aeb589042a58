"""Ingest on tricky series made from the phantom: order, gaps, duplicates, mixes, codecs, geometry."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.dicom.ingest import assemble_volumes, read_datasets
from node.synth.phantom import ScanParams, synthesize_study
from node.synth.writer import write_ct_series

SCAN = ScanParams(rows=48, columns=48, pixel_spacing=8.0, slice_thickness=5.0, num_slices=12)


@pytest.fixture(scope="module")
def study():
    return synthesize_study(7, 0, scan=SCAN)


@pytest.fixture(scope="module")
def series_dir(study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("series")
    write_ct_series(study, out)
    return out


@pytest.fixture()
def datasets(series_dir) -> list[Dataset]:
    ds, problems = read_datasets([series_dir])
    assert problems == []
    return ds


def codes(result) -> list[str]:
    return [p.code for p in result.problems]


def test_shuffled_series_is_sorted_by_position_not_instance_number(study, datasets):
    random.Random(1).shuffle(datasets)
    result = assemble_volumes(datasets)
    assert result.problems == []
    (vol,) = result.volumes
    assert np.array_equal(vol.pixels, study.hu.astype(np.float32))
    assert np.allclose(vol.affine, study.affine, atol=1e-4)
    assert vol.spacing == pytest.approx(study.spacing)


def test_duplicated_slices_are_dropped_with_a_warning(study, datasets):
    result = assemble_volumes(datasets + [copy.deepcopy(datasets[3]), copy.deepcopy(datasets[5])])
    assert codes(result) == ["duplicate-slices"]
    assert result.volumes[0].shape == study.shape


def test_different_images_at_one_position_are_an_error(datasets):
    other = copy.deepcopy(datasets[4])
    other.SOPInstanceUID = generate_uid()
    arr = other.pixel_array.copy()
    arr[0, 0] += 7
    other.PixelData = arr.tobytes()
    result = assemble_volumes(datasets + [other])
    assert result.volumes == []
    assert "conflicting-slices" in codes(result)


def test_missing_slices_are_reported_with_their_z_range(study, datasets):
    z = study.slice_z()
    kept = [d for d in datasets if not any(abs(float(d.ImagePositionPatient[2]) - z[k]) < 0.01 for k in (4, 5, 6))]
    result = assemble_volumes(kept)
    assert result.volumes == []
    (problem,) = result.problems
    assert problem.code == "missing-slices" and problem.severity == "error"
    assert problem.message == f"series {study.series_instance_uid}: 3 slices missing between z={z[3]:.1f} and z={z[7]:.1f}"
    assert result.reason() == problem.message


def test_irregular_spacing_is_an_error(datasets):
    moved = copy.deepcopy(datasets)
    ds = next(d for d in moved if d.InstanceNumber == 6)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.5
    result = assemble_volumes(moved)
    assert result.volumes == [] and codes(result) == ["irregular-spacing"]


def test_mixed_series_give_one_volume_each(study, datasets, tmp_path):
    other = synthesize_study(8, 1, scan=SCAN)
    write_ct_series(other, tmp_path)
    more, _ = read_datasets([tmp_path])
    result = assemble_volumes(datasets + more)
    assert sorted(v.series_instance_uid for v in result.volumes) == sorted([study.series_instance_uid, other.series_instance_uid])


def test_localizer_is_dropped(datasets):
    scout = copy.deepcopy(datasets[0])
    scout.SOPInstanceUID = generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    result = assemble_volumes(datasets + [scout])
    assert codes(result) == ["localizer"] and len(result.volumes) == 1


def test_stray_image_in_other_orientation_is_dropped(datasets):
    stray = copy.deepcopy(datasets[0])
    stray.SOPInstanceUID = generate_uid()
    stray.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    result = assemble_volumes(datasets + [stray])
    assert codes(result) == ["stray-image"] and len(result.volumes) == 1


@pytest.mark.parametrize("syntax", ["rle", "jpeg-ls", "jpeg2000", "jpeg-lossless"])
def test_compressed_series_decode_to_the_same_hu(study, tmp_path, syntax):
    write_ct_series(study, tmp_path, transfer_syntax=syntax)
    ds, problems = read_datasets([tmp_path])
    assert problems == []
    assert ds[0].file_meta.TransferSyntaxUID.is_compressed
    result = assemble_volumes(ds)
    assert result.problems == []
    assert np.array_equal(result.volumes[0].pixels, study.hu.astype(np.float32))


@pytest.mark.parametrize("syntax", ["explicit", "jpeg2000"])
def test_enhanced_multiframe_ct(study, tmp_path, syntax):
    (path,) = write_ct_series(study, tmp_path, enhanced=True, transfer_syntax=syntax)
    ds, _ = read_datasets([path])
    result = assemble_volumes(ds)
    assert result.problems == []
    (vol,) = result.volumes
    assert np.array_equal(vol.pixels, study.hu.astype(np.float32))
    assert np.allclose(vol.affine, study.affine, atol=1e-4)
    assert vol.frame_numbers == tuple(range(1, study.shape[0] + 1))
    assert vol.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2.1"


def test_gantry_tilt_is_a_warning_and_kept_in_the_affine(study, datasets):
    tilted = copy.deepcopy(datasets)
    shear = np.tan(np.radians(15.0))
    z0 = study.slice_z()[0]
    for d in tilted:
        z = float(d.ImagePositionPatient[2])
        d.ImagePositionPatient[1] = float(d.ImagePositionPatient[1]) + (z - z0) * shear
        d.GantryDetectorTilt = 15
    result = assemble_volumes(tilted)
    assert codes(result) == ["gantry-tilt"]
    assert "15.0 degrees" in result.problems[0].message
    vol = result.volumes[0]
    assert vol.affine[1, 2] == pytest.approx(study.spacing[0] * shear, rel=1e-3)
    assert vol.warnings == (result.problems[0].message,)


def test_sagittal_stack_is_assembled_with_a_warning(datasets):
    sag = copy.deepcopy(datasets)
    for d in sag:
        k = int(d.InstanceNumber)
        d.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        d.ImagePositionPatient = [-100.0 + 2.0 * k, -150.0, 200.0]
    result = assemble_volumes(sag)
    assert codes(result) == ["non-axial"]
    vol = result.volumes[0]
    # the normal of rows +y and columns -z is -x: slices run from high x to low x
    assert np.allclose(vol.affine[:3, 2], [-2.0, 0, 0])
    assert vol.spacing[0] == pytest.approx(2.0)
    assert vol.sop_instance_uids[0] == max(sag, key=lambda d: int(d.InstanceNumber)).SOPInstanceUID


def test_rescale_slope_and_intercept_are_applied(study, datasets):
    scaled = copy.deepcopy(datasets)
    for d in scaled:
        hu = d.pixel_array.astype(np.int32) - 1024
        d.PixelRepresentation = 1
        d.PixelData = ((hu - 100) // 2).astype(np.int16).tobytes()
        d.RescaleSlope = 2
        d.RescaleIntercept = 100
    result = assemble_volumes(scaled)
    expected = ((study.hu.astype(np.int32) - 100) // 2) * 2 + 100
    assert np.array_equal(result.volumes[0].pixels, expected.astype(np.float32))


def test_missing_geometry_is_an_error(datasets):
    broken = copy.deepcopy(datasets)
    for d in broken:
        del d.ImagePositionPatient
    result = assemble_volumes(broken)
    assert result.volumes == [] and codes(result) == ["missing-geometry"]


def test_undecodable_pixels_are_an_error_not_a_crash(datasets):
    broken = copy.deepcopy(datasets)
    broken[2].PixelData = b"\x00" * 10
    result = assemble_volumes(broken)
    assert result.volumes == [] and codes(result) == ["decode-failed"]


def _other_object(modality: str, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    return ds


def test_study_without_ct_says_what_it_holds():
    sr = _other_object("SR", "1.2.840.10008.5.1.4.1.1.88.22")
    dx = _other_object("DX", "1.2.840.10008.5.1.4.1.1.1.1")
    result = assemble_volumes([sr, dx])
    assert result.volumes == []
    assert [p.message for p in result.problems] == ["no CT image series: found 1 DX, 1 SR"]
    assert assemble_volumes([]).reason().startswith("no CT image series")


def test_read_datasets_skips_non_dicom_and_truncated_files(series_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    good = next(series_dir.iterdir())
    data = good.read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[:400])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "good.dcm").write_bytes(data)
    datasets, problems = read_datasets([tmp_path])
    assert len(datasets) + len(problems) == 3
    assert any(p.code == "not-dicom" and "notes.txt" in p.message for p in problems)
    assert all(p.severity == "warning" for p in problems)
    assert any(isinstance(d, pydicom.Dataset) and "PixelData" in d for d in datasets)
