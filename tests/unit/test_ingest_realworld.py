"""Ingest on real-world files: pydicom's own test files and the pydicom-data package (local only)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.uid import generate_uid

from node.dicom.ingest import assemble_volumes, read_datasets
from node.dicom.problems import CODES


def local_file(name: str) -> Path:
    # download=False: pydicom-data is installed, nothing may come from the network
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"{name} is not installed locally (pydicom or pydicom-data)")
    return Path(path)


def test_every_local_test_file_is_read_and_assembled_without_raising():
    files = [Path(f) for f in get_testdata_files()]
    assert len(files) > 100
    for path in files:
        datasets, problems = read_datasets([path])
        result = assemble_volumes(datasets)
        for problem in problems + result.problems:
            assert problem.code in CODES and problem.message
        if not result.volumes:
            assert result.reason()


def test_real_ct_folder_assembles_sorted_by_position():
    folder = local_file("dicomdirtests/98892001/CT5N/2062").parent
    datasets, problems = read_datasets([folder])
    assert problems == []
    result = assemble_volumes(datasets)
    assert result.problems == []
    (vol,) = result.volumes
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ordered])
    assert np.array_equal(vol.pixels, expected.astype(np.float32))
    assert vol.sop_instance_uids == tuple(d.SOPInstanceUID for d in ordered)


def test_real_ct_folder_with_gaps_and_scouts_is_explained():
    result = assemble_volumes(read_datasets([local_file("dicomdirtests/77654033/CT2/17106").parent])[0])
    assert result.volumes == [] and [p.code for p in result.problems] == ["missing-slices"]
    result = assemble_volumes(read_datasets([local_file("dicomdirtests/98892001/CT2N/6293").parent])[0])
    assert [p.code for p in result.problems] == ["localizer", "no-ct-series"]
    result = assemble_volumes([pydicom.dcmread(local_file("CT_small.dcm"))])
    assert [p.code for p in result.problems] == ["single-slice"]


def test_enhanced_ct_from_pydicom_data():
    ds = pydicom.dcmread(local_file("eCT_Supplemental.dcm"))
    result = assemble_volumes([ds])
    assert result.problems == []
    (vol,) = result.volumes
    assert vol.shape == (2, 512, 512) and vol.frame_numbers in ((1, 2), (2, 1))
    trans = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    frames = ds.pixel_array * float(trans.RescaleSlope) + float(trans.RescaleIntercept)
    assert np.array_equal(vol.pixels, frames[[f - 1 for f in vol.frame_numbers]].astype(np.float32))


def stack_of(ds: pydicom.Dataset, n: int = 3, step: float = 2.5) -> list[pydicom.Dataset]:
    """``n`` copies of one real image at positions ``step`` mm apart along its normal."""
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ori = np.array([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(ori[:3], ori[3:])
    pos = np.array([float(v) for v in ds.ImagePositionPatient])
    out = []
    for k in range(n):
        copy_ = copy.deepcopy(ds)
        copy_.SOPInstanceUID = generate_uid()
        copy_.ImagePositionPatient = [f"{v:.4f}" for v in pos + k * step * normal]
        out.append(copy_)
    return out


@pytest.mark.parametrize(
    "name",
    ["693_UNCR.dcm", "693_J2KR.dcm", "bad_sequence.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"],
)
def test_real_codestreams_decode_with_rescale(name):
    ds = pydicom.dcmread(local_file(name))
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    result = assemble_volumes(stack_of(ds))
    assert [p.code for p in result.problems] == []
    (vol,) = result.volumes
    assert vol.shape == (3, ds.Rows, ds.Columns)
    assert vol.spacing[0] == pytest.approx(2.5, abs=1e-3)
    assert np.array_equal(vol.pixels[1], expected.astype(np.float32))


def test_reversible_j2k_equals_uncompressed():
    raw = assemble_volumes(stack_of(pydicom.dcmread(local_file("693_UNCR.dcm")))).volumes[0]
    j2k = assemble_volumes(stack_of(pydicom.dcmread(local_file("693_J2KR.dcm")))).volumes[0]
    assert np.array_equal(raw.pixels, j2k.pixels)
