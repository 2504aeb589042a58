"""The SR's OHIF-facing encoding (tracking identifier, comment, axis meanings) and its evidence check."""

from __future__ import annotations

import highdicom as hd
import pytest

from node.bench.outputs import assemble_volume, synthetic_ct_series, synthetic_lesions
from node.dicom import codes
from node.dicom.provenance import Provenance
from node.dicom.results import build_result_objects
from node.dicom.sr import (
    OHIF_RECIST_TAG,
    build_report,
    lesion_tracking_id,
    recist_group,
    recist_tracking_identifier,
    tracking_of_groups,
)

PROVENANCE = Provenance(model_versions={"detector": "1.0"})


@pytest.fixture(scope="module")
def study():
    series = synthetic_ct_series(n_slices=12, rows=48, columns=48, seed=5)
    volume = assemble_volume(series)
    lesions = synthetic_lesions(volume, 2, seed=2)
    return series, volume, lesions


def test_recist_tracking_identifier_round_trip():
    identifier = recist_tracking_identifier("L12")
    # What OHIF's cornerstone3D adapter tests: a ':' and the Bidirectional tool's tag as prefix.
    assert identifier.startswith("Cornerstone3DTools@^0.1.0:Bidirectional") and ":" in identifier
    assert identifier == f"{OHIF_RECIST_TAG}:L12"
    assert lesion_tracking_id(identifier) == "L12"
    assert lesion_tracking_id("L12") == "L12"
    # A lesion ID holding ':' survives: only the tag is taken off.
    assert lesion_tracking_id(recist_tracking_identifier("a:b")) == "a:b"
    with pytest.raises(ValueError, match="tracking_id"):
        recist_tracking_identifier(" ")


def test_recist_group_as_ohif_reads_it(study):
    series, volume, lesions = study
    objects = build_result_objects(series, volume, lesions, provenance=PROVENANCE)
    lesion = objects.lesions[0]
    key = next(ds for ds in series if ds.SOPInstanceUID == volume.sop_instance_uids[lesion.key_slice])
    group = recist_group(lesion, key, provenance=PROVENANCE)
    items = list(group[0].ContentSequence)
    by_meaning = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in items}
    # OHIF's Bidirectional reader looks the axes up by these exact meanings, each with its SCOORD.
    for meaning in ("Long Axis", "Short Axis"):
        assert by_meaning[meaning].ValueType == "NUM"
        assert by_meaning[meaning].ContentSequence[0].ValueType == "SCOORD"
    assert by_meaning["Tracking Identifier"].TextValue == recist_tracking_identifier(lesion.tracking_id)
    assert by_meaning["Tracking Unique Identifier"].UID == lesion.tracking_uid
    # The label OHIF shows is the Comment (121106, DCM): the lesion ID alone.
    comment = by_meaning["Comment"]
    assert comment.ValueType == "TEXT" and comment.TextValue == lesion.tracking_id
    assert hd.sr.CodedConcept.from_dataset(comment.ConceptNameCodeSequence[0]) == codes.COMMENT
    # The volumetric group and the SEG keep the plain lesion ID, with the same UID.
    assert tracking_of_groups(objects.sr) == {x.tracking_uid: x.tracking_id for x in objects.lesions}
    segments = [objects.seg.get_segment_description(n) for n in objects.seg.segment_numbers]
    assert {(s.tracking_uid, s.tracking_id) for s in segments} == {(x.tracking_uid, x.tracking_id) for x in objects.lesions}


def test_report_refuses_references_missing_from_evidence(study):
    series, volume, lesions = study
    objects = build_result_objects(series, volume, lesions, provenance=PROVENANCE)
    lesion = objects.lesions[0]
    key = next(ds for ds in series if ds.SOPInstanceUID == volume.sop_instance_uids[lesion.key_slice])
    group = recist_group(lesion, key, provenance=PROVENANCE)
    others = [ds for ds in series if ds.SOPInstanceUID != key.SOPInstanceUID]
    with pytest.raises(ValueError, match="evidence"):
        build_report(others, groups=[group], referenced_images=[], provenance=PROVENANCE)
    report = build_report(series, groups=[group], referenced_images=[key], provenance=PROVENANCE)
    # The content tree is parsed once and reads back through highdicom's API.
    groups = report.content.get_image_measurement_groups()
    assert [g.tracking_uid for g in groups] == [lesion.tracking_uid]
    assert isinstance(report, hd.sr.Comprehensive3DSR)
