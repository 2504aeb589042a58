"""SEG, TID 1500 SR and presentation state built from lesion records: dciodvfy-clean, read back equal."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node.bench.outputs import assemble_volume, synthetic_ct_series, synthetic_lesions
from node.dicom import codes
from node.dicom.provenance import Provenance
from node.dicom.results import ResultObjects, build_result_objects
from node.dicom.sr import (
    OHIF_RECIST_TAG,
    STUDY_GROUP_PREFIX,
    lesion_tracking_id,
    tracking_of_groups,
)
from node.lesions.records import Lesion, RecistAxes, ResponseAssessment, ResponseCategory

PROVENANCE = Provenance(model_versions={"detector": "1.2", "segmenter": "0.9"})


def dciodvfy_errors(ds: pydicom.Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def assert_valid(objects: ResultObjects, tmp_path: Path) -> dict[str, pydicom.Dataset]:
    """Every object passes dciodvfy with zero errors; returns them re-read from disk."""
    read: dict[str, pydicom.Dataset] = {}
    for name in ("seg", "sr", "pr"):
        ds = getattr(objects, name)
        if ds is None:
            continue
        path = tmp_path / f"{name}.dcm"
        assert dciodvfy_errors(ds, path) == [], name
        read[name] = pydicom.dcmread(path)
    return read


@pytest.fixture(scope="module")
def study():
    series = synthetic_ct_series(n_slices=20, rows=64, columns=64, seed=3)
    return series, assemble_volume(series)


def test_baseline_objects_valid_and_read_back(study, tmp_path):
    series, volume = study
    lesions = synthetic_lesions(volume, 3, seed=1)
    objects = build_result_objects(series, volume, lesions, provenance=PROVENANCE, time_point="baseline")
    read = assert_valid(objects, tmp_path)
    assert objects.excluded == []
    assert len(objects.summary_lines) == 4 and "3 lesion(s) reported, 0 left out" in objects.summary_lines[-1]

    source = series[0]
    for ds in read.values():
        assert ds.StudyInstanceUID == volume.study_instance_uid
        assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
        assert ds.SeriesInstanceUID != volume.series_instance_uid
    assert len({ds.SeriesInstanceUID for ds in read.values()}) == 3

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.number_of_segments == 3
    written = {lesion.index: lesion for lesion in objects.lesions}
    for number in seg.segment_numbers:
        desc = seg.get_segment_description(number)
        lesion = written[number - 1]
        assert desc.tracking_uid == lesion.tracking_uid
        assert desc.tracking_id == lesion.tracking_id == f"Lesion {lesion.index + 1}"
        assert desc.segmented_property_type == codes.LESION
        site = codes.LESION_TYPE_SITES[lesion.lesion_type]
        assert [hd.sr.CodedConcept.from_dataset(r) for r in desc.AnatomicRegionSequence] == [site]
        assert desc.SegmentAlgorithmName == PROVENANCE.algorithm_name
    # The mask round-trips: voxel count of each segment equals the lesion mask's.
    pixels = seg.get_volume(combine_segments=False).array
    for lesion in lesions:
        assert int(pixels[..., lesion.index].sum()) == int(lesion.mask.sum())

    report = hd.sr.srread(tmp_path / "sr.dcm")
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert hd.sr.CodedConcept.from_dataset(report.ConceptNameCodeSequence[0]) == codes.IMAGING_MEASUREMENT_REPORT
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == 3
    key_uid = dict(zip(range(20), volume.sop_instance_uids, strict=True))
    for group in groups:
        lesion = next(x for x in objects.lesions if x.tracking_uid == group.tracking_uid)
        # OHIF's tag first (so OHIF lists the measurement), the lesion ID after it and as the comment.
        assert group.tracking_identifier == f"{OHIF_RECIST_TAG}:{lesion.tracking_id}"
        assert lesion_tracking_id(group.tracking_identifier) == lesion.tracking_id
        comments = [item for item in group[0].ContentSequence if item.name == codes.COMMENT]
        assert [item.value for item in comments] == [lesion.tracking_id]
        assert group.method == codes.RECIST_1_1
        assert group.finding_type == codes.LESION
        assert [s.value for s in group.finding_sites] == [codes.LESION_TYPE_SITES[lesion.lesion_type]]
        long_axis = group.get_measurements(name=codes.LONG_AXIS)[0]
        short_axis = group.get_measurements(name=codes.SHORT_AXIS)[0]
        assert long_axis.value == pytest.approx(lesion.recist.long_axis_mm, abs=1e-3)
        assert short_axis.value == pytest.approx(lesion.recist.short_axis_mm, abs=1e-3)
        assert long_axis.unit == codes.MILLIMETER
        scoord = long_axis.referenced_coordinates[0]
        assert scoord.GraphicType == "POLYLINE"
        expected = np.array(lesion.recist.long_axis_endpoints) + 0.5
        np.testing.assert_allclose(np.asarray(scoord.GraphicData).reshape(2, 2), expected, atol=1e-3)
        image_ref = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        assert image_ref.ReferencedSOPInstanceUID == key_uid[lesion.key_slice]
    volumetric = report.content.get_volumetric_roi_measurement_groups()
    assert len(volumetric) == 3
    for group in volumetric:
        lesion = next(x for x in objects.lesions if x.tracking_uid == group.tracking_uid)
        assert group.tracking_identifier == lesion.tracking_id
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment.referenced_segment_numbers == [lesion.index + 1]
        volume_mm3 = group.get_measurements(name=codes.VOLUME)[0].value
        assert volume_mm3 == pytest.approx(lesion.mask.sum() * np.prod(volume.spacing), rel=1e-3)
        assert group.get_measurements(name=codes.DETECTOR_SCORE)[0].value == pytest.approx(lesion.score, abs=1e-6)
    device = report.content.get_observer_contexts(observer_type=codes.DEVICE_OBSERVER)
    assert device and device[0].observer_identifying_attributes.uid == PROVENANCE.device_uid
    evidence = {
        item.ReferencedSOPInstanceUID
        for study_item in report.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence and set(volume.sop_instance_uids) <= evidence

    pr = read["pr"]
    objects_drawn = [g for a in pr.GraphicAnnotationSequence for g in a.GraphicObjectSequence]
    assert len(objects_drawn) == 6 and {g.GraphicType for g in objects_drawn} == {"POLYLINE"}
    assert {g.TrackingUID for g in objects_drawn} == {x.tracking_uid for x in objects.lesions}


def test_follow_up_keeps_tracking_and_writes_response(study, tmp_path):
    series, volume = study
    base = synthetic_lesions(volume, 2, seed=2)
    uids = [str(hd.UID()) for _ in base]
    lesions = [
        dataclasses.replace(lesion, tracking_id=f"T{i + 1}", tracking_uid=uid, site="liver")
        for i, (lesion, uid) in enumerate(zip(base, uids, strict=True))
    ]
    response = ResponseAssessment(
        category=ResponseCategory.PR, sum_of_diameters_mm=20.0, baseline_sum_mm=40.0, nadir_sum_mm=40.0,
        change_from_baseline_pct=-50.0, change_from_nadir_pct=-50.0, new_lesions=False,
        target_tracking_uids=(uids[0],),
    )
    objects = build_result_objects(
        series, volume, lesions, provenance=PROVENANCE, response=response, time_point="follow-up 1"
    )
    assert_valid(objects, tmp_path)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert {seg.get_segment_description(n).tracking_uid for n in seg.segment_numbers} == set(uids)
    assert {seg.get_segment_description(n).tracking_id for n in seg.segment_numbers} == {"T1", "T2"}
    report = hd.sr.srread(tmp_path / "sr.dcm")
    groups = report.content.get_image_measurement_groups()
    tracked = [g for g in groups if not g.tracking_identifier.startswith(STUDY_GROUP_PREFIX)]
    assert {g.tracking_uid: lesion_tracking_id(g.tracking_identifier) for g in tracked} == {uids[0]: "T1", uids[1]: "T2"}
    assert tracking_of_groups(report) == {uids[0]: "T1", uids[1]: "T2"}
    for group in tracked:
        assert [s.value for s in group.finding_sites] == [codes.SITES["liver"]]
    summary = [g for g in groups if g.tracking_identifier.startswith(STUDY_GROUP_PREFIX)]
    assert len(summary) == 1
    evaluations = summary[0].get_qualitative_evaluations(name=codes.RESPONSE_EVALUATION)
    assert evaluations[0].value == codes.RESPONSE_CATEGORIES[ResponseCategory.PR]
    target = next(g for g in tracked if g.tracking_uid == uids[0])
    flag = target.get_qualitative_evaluations(name=codes.RESPONSE_EVALUATION_METHOD)[0]
    assert flag.value == codes.TARGET_LESION_AT_BASELINE
    time_point = hd.sr.utils.find_content_items(target[0], name=hd.sr.CodedConcept("C2348792", "UMLS", "Time Point"), recursive=True)
    assert [item.value for item in time_point] == ["follow-up 1"]


def test_no_findings_report(study, tmp_path):
    series, volume = study
    objects = build_result_objects(series, volume, [], provenance=PROVENANCE)
    assert objects.seg is None and objects.pr is None and objects.excluded == []
    assert_valid(objects, tmp_path)
    report = hd.sr.srread(tmp_path / "sr.dcm")
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == 1 and groups[0].tracking_identifier.startswith(STUDY_GROUP_PREFIX)
    assert tracking_of_groups(report) == {}
    finding = groups[0].get_qualitative_evaluations(name=codes.LESION)[0]
    assert finding.value == codes.ABSENT
    assert report.content.get_observer_contexts(observer_type=codes.DEVICE_OBSERVER)
    assert objects.summary_lines == ["0 lesion(s) reported, 0 left out"]


def _bad(lesion: Lesion, **changes) -> Lesion:
    return dataclasses.replace(lesion, **changes)


def test_unencodable_lesions_are_left_out_and_counted(study, tmp_path, caplog):
    series, volume = study
    good = synthetic_lesions(volume, 8, seed=4)
    r = good[0].recist
    duplicate_uid = str(hd.UID())
    lesions = [
        _bad(good[0], key_slice=99),
        _bad(good[1], recist=None),
        _bad(good[2], recist=dataclasses.replace(r, long_axis_mm=0.0)),
        _bad(good[3], recist=dataclasses.replace(r, long_axis_endpoints=((10.0, 10.0), (10.0, 10.0)))),
        _bad(good[4], recist=dataclasses.replace(r, short_axis_mm=float("nan"))),
        _bad(good[5], tracking_uid=duplicate_uid),
        _bad(good[6], tracking_uid=duplicate_uid),
        _bad(good[7], recist=dataclasses.replace(r, short_axis_endpoints=((10.0, 10.0), (80.0, 10.0)))),
    ]
    objects = build_result_objects(series, volume, lesions, provenance=PROVENANCE)
    assert [index for index, _ in objects.excluded] == [0, 1, 2, 3, 4, 6, 7]
    reasons = dict(objects.excluded)
    assert "key slice" in reasons[0] and "no RECIST" in reasons[1] and "coincide" in reasons[3]
    assert "outside" in reasons[7]
    assert objects.summary_lines[-1] == "1 lesion(s) reported, 7 left out"
    assert sum("left out" in record.getMessage() for record in caplog.records) == 7
    assert_valid(objects, tmp_path)
    assert [x.index for x in objects.lesions] == [5]


def test_all_unencodable_still_gives_a_valid_report(study, tmp_path):
    series, volume = study
    lesion = _bad(synthetic_lesions(volume, 1)[0], key_slice=-1)
    objects = build_result_objects(series, volume, [lesion], provenance=PROVENANCE)
    assert objects.seg is None and objects.pr is None and len(objects.excluded) == 1
    assert_valid(objects, tmp_path)
    group = hd.sr.srread(tmp_path / "sr.dcm").content.get_image_measurement_groups()[0]
    assert group.get_qualitative_evaluations(name=codes.LESION)[0].value == codes.PRESENCE_UNDETERMINED


def test_lesion_without_mask_gets_only_recist_group(study, tmp_path):
    series, volume = study
    first, second = synthetic_lesions(volume, 2, seed=5)
    lesions = [first, _bad(second, mask=None, volume_mm3=None)]
    objects = build_result_objects(series, volume, lesions, provenance=PROVENANCE)
    assert_valid(objects, tmp_path)
    report = hd.sr.srread(tmp_path / "sr.dcm")
    assert len(report.content.get_image_measurement_groups()) == 2
    assert len(report.content.get_volumetric_roi_measurement_groups()) == 1
    assert hd.seg.segread(tmp_path / "seg.dcm").number_of_segments == 1
    assert objects.summary_lines[1].endswith("no mask")


def test_dense_seg_and_organ_segment(study, tmp_path):
    series, volume = study
    lesions = synthetic_lesions(volume, 2, seed=6)
    liver = np.zeros(volume.shape, dtype=bool)
    liver[5:15, 20:40, 20:40] = True
    objects = build_result_objects(
        series, volume, lesions, provenance=PROVENANCE, omit_empty_frames=False, organs={"liver": liver}
    )
    assert_valid(objects, tmp_path)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.number_of_segments == 3
    organ = seg.get_segment_description(3)
    assert organ.segmented_property_type == codes.SITES["liver"]
    assert organ.segmented_property_category == codes.ANATOMICAL_STRUCTURE
    assert int(seg.NumberOfFrames) == 20 * 3


def test_source_images_must_cover_volume(study):
    series, volume = study
    with pytest.raises(ValueError, match="source_images"):
        build_result_objects(series[:-1], volume, [], provenance=PROVENANCE)


def test_provenance_validates():
    with pytest.raises(ValueError, match="device_uid"):
        Provenance(device_uid="not a uid")
    with pytest.raises(ValueError, match="algorithm_name"):
        Provenance(algorithm_name=" ")
    with pytest.raises(ValueError, match="model_versions"):
        Provenance(model_versions={"a=b": "1"})


def test_degenerate_axes_lengths_checked_without_mask(study):
    series, volume = study
    lesion = Lesion(
        index=0, key_slice=3, box=(10, 10, 20, 20), score=0.9, lesion_type="liver",
        recist=RecistAxes(long_axis_mm=5.0, short_axis_mm=9.0,
                          long_axis_endpoints=((10, 10), (20, 10)), short_axis_endpoints=((15, 8), (15, 12))),
        volume_mm3=None,
    )
    objects = build_result_objects(series, volume, [lesion], provenance=PROVENANCE)
    assert objects.excluded and "exceeds long axis" in objects.excluded[0][1]


def test_series_without_body_part_still_valid(tmp_path):
    series = synthetic_ct_series(n_slices=8, rows=48, columns=48, seed=9, body_part=None)
    volume = assemble_volume(series)
    objects = build_result_objects(series, volume, synthetic_lesions(volume, 2, seed=9), provenance=PROVENANCE)
    assert objects.excluded == [] and objects.pr is not None
    assert_valid(objects, tmp_path)


def test_enhanced_ct_source(tmp_path):
    """A multi-frame Enhanced CT (node.synth writer, node.dicom.ingest volume) gives valid objects."""
    from node.dicom.ingest import assemble_volumes, read_datasets
    from node.synth.phantom import synthesize_study
    from node.synth.writer import write_ct_series

    study = synthesize_study(2, 0, small=True)
    paths = write_ct_series(study, tmp_path / "ct", enhanced=True)
    datasets, _ = read_datasets(paths)
    volume = assemble_volumes(datasets).volumes[0]
    assert volume.frame_numbers and len(datasets) == 1
    lesions = synthetic_lesions(volume, 2, seed=3, radius_px=6)
    objects = build_result_objects(datasets, volume, lesions, provenance=PROVENANCE, omit_empty_frames=False)
    assert objects.excluded == []
    assert_valid(objects, tmp_path)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert int(seg.NumberOfFrames) == 2 * volume.shape[0]
    report = hd.sr.srread(tmp_path / "sr.dcm")
    for group in report.content.get_image_measurement_groups():
        lesion = next(x for x in objects.lesions if x.tracking_uid == group.tracking_uid)
        scoord = group.get_measurements(name=codes.LONG_AXIS)[0].referenced_coordinates[0]
        reference = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == datasets[0].SOPInstanceUID
        assert int(reference.ReferencedFrameNumber) == volume.frame_numbers[lesion.key_slice]
