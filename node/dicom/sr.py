"""TID 1500 Imaging Measurement Report (Comprehensive 3D SR) for RECIST lesion measurements."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from node.dicom import codes
from node.dicom.provenance import Provenance
from node.lesions.records import Lesion, ResponseAssessment, ResponseCategory

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9702
SR_SERIES_DESCRIPTION = "ainode lesion measurements"
#: Tracking identifiers of study-level groups (response, no findings) start with this.
STUDY_GROUP_PREFIX = "ainode study: "
#: OHIF v3 loads a TID 1501 group into its measurement panel only when the group's Tracking
#: Identifier starts with its tool's tag (cornerstone3D adapters, ``startsWith``); RECIST long and
#: short axes are its Bidirectional tool. The lesion's own ID follows after a colon.
OHIF_RECIST_TAG = "Cornerstone3DTools@^0.1.0:Bidirectional"


def recist_tracking_identifier(tracking_id: str) -> str:
    """Tracking Identifier of a lesion's RECIST group: ``OHIF_RECIST_TAG:<lesion ID>``."""
    if not tracking_id or not tracking_id.strip():
        raise ValueError("tracking_id: must not be blank")
    return f"{OHIF_RECIST_TAG}:{tracking_id}"


def lesion_tracking_id(identifier: str) -> str:
    """The lesion ID in a Tracking Identifier the node wrote, with or without the OHIF tag."""
    prefix = f"{OHIF_RECIST_TAG}:"
    return identifier[len(prefix):] if identifier.startswith(prefix) else identifier


def image_coordinates(point: tuple[float, float]) -> tuple[float, float]:
    """DICOM image coordinates of a (column, row) pixel index: pixel centres sit at +0.5."""
    return float(point[0]) + 0.5, float(point[1]) + 0.5


def time_point_context(time_point: str | None) -> hd.sr.TimePointContext | None:
    """TID 1502 for ``"baseline"`` / ``"follow-up N"``; None when no time point is given."""
    if time_point is None:
        return None
    if not time_point.strip():
        raise ValueError("time_point: must not be blank")
    kind = codes.TIME_POINT_BASELINE if time_point.lower().startswith("baseline") else codes.TIME_POINT_POSTTREATMENT
    return hd.sr.TimePointContext(time_point=time_point[:64], time_point_type=kind)


def _axis(name: hd.sr.Code, length_mm: float, ends: Sequence[tuple[float, float]], image: Dataset, frame: int | None) -> hd.sr.Measurement:
    source = hd.sr.SourceImageForRegion.from_source_image(image, referenced_frame_numbers=[frame] if frame else None)
    coordinates = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([image_coordinates(p) for p in ends], dtype=np.float64),
        source_image=source,
    )
    return hd.sr.Measurement(
        name=name,
        value=round(float(length_mm), 3),
        unit=codes.MILLIMETER,
        referenced_coordinates=[coordinates],
    )


def recist_group(
    lesion: Lesion,
    image: Dataset,
    *,
    provenance: Provenance,
    frame_number: int | None = None,
    time_point: hd.sr.TimePointContext | None = None,
    target: bool | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group: tracking identifier, RECIST 1.1, finding type and site, long and short axis.

    ``image`` is the key slice's source instance; the axes are drawn on it as POLYLINEs. The
    Tracking Identifier is ``recist_tracking_identifier(lesion.tracking_id)`` and a Comment
    (121106, DCM) holds the lesion ID alone, which OHIF shows as the measurement's label; the
    Tracking UID is the lesion's.
    """
    if lesion.recist is None:
        raise ValueError(f"lesion: lesion {lesion.index} has no RECIST axes")
    if lesion.tracking_uid is None or lesion.tracking_id is None:
        raise ValueError(f"lesion: lesion {lesion.index} has no tracking identifier")
    recist = lesion.recist
    evaluations = None
    if target is not None:
        evaluations = [
            hd.sr.QualitativeEvaluation(
                name=codes.RESPONSE_EVALUATION_METHOD,
                value=codes.TARGET_LESION_AT_BASELINE if target else codes.NON_TARGET_LESION_AT_BASELINE,
            )
        ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=lesion.tracking_uid, identifier=recist_tracking_identifier(lesion.tracking_id)
        ),
        time_point_context=time_point,
        finding_type=codes.LESION,
        method=codes.RECIST_1_1,
        algorithm_id=provenance.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(codes.site_code(site=lesion.site, lesion_type=lesion.lesion_type))],
        measurements=[
            _axis(codes.LONG_AXIS, recist.long_axis_mm, recist.long_axis_endpoints, image, frame_number),
            _axis(codes.SHORT_AXIS, recist.short_axis_mm, recist.short_axis_endpoints, image, frame_number),
        ],
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(
                image, referenced_frame_numbers=[frame_number] if frame_number else None
            )
        ],
    )
    # TID 1501 is extensible; highdicom has no argument for a comment.
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.COMMENT,
            value=str(lesion.tracking_id)[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def referenced_segment(segmentation: Dataset, segment_number: int) -> hd.sr.ReferencedSegment:
    """Reference to one segment of a SEG, with the SEG's source series.

    The source series (not every source image of every frame) keeps the report small; the SEG
    itself lists the frames' source images.
    """
    numbers = [int(item.SegmentNumber) for item in segmentation.SegmentSequence]
    if segment_number not in numbers:
        raise ValueError(f"segment_number: the SEG has no segment {segment_number}")
    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(
            segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID
        ),
    )


def _tracking(identifier: str, uid: str | None) -> hd.sr.TrackingIdentifier:
    """TID 4108 tracking identifier; a study-level group gets a fresh UID (TID 1501 needs one)."""
    return hd.sr.TrackingIdentifier(uid=uid or hd.UID(), identifier=identifier)


def volumetric_group(
    lesion: Lesion,
    segmentation: Dataset,
    segment_number: int,
    *,
    provenance: Provenance,
    volume_mm3: float | None,
    time_point: hd.sr.TimePointContext | None = None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 group: the lesion's SEG segment, its volume and the detector's score."""
    if lesion.tracking_uid is None or lesion.tracking_id is None:
        raise ValueError(f"lesion: lesion {lesion.index} has no tracking identifier")
    measurements = []
    if volume_mm3 is not None:
        measurements.append(hd.sr.Measurement(name=codes.VOLUME, value=round(float(volume_mm3), 3), unit=codes.CUBIC_MILLIMETER,
                                             method=codes.VOLUME_FROM_VOXELS))
    measurements.append(hd.sr.Measurement(name=codes.DETECTOR_SCORE, value=round(float(lesion.score), 6), unit=codes.UNITLESS))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=lesion.tracking_uid, identifier=lesion.tracking_id),
        referenced_segment=referenced_segment(segmentation, segment_number),
        time_point_context=time_point,
        finding_type=codes.LESION,
        algorithm_id=provenance.sr_algorithm(),
        finding_sites=[hd.sr.FindingSite(codes.site_code(site=lesion.site, lesion_type=lesion.lesion_type))],
        measurements=measurements,
    )


def response_group(
    response: ResponseAssessment,
    *,
    provenance: Provenance,
    time_point: hd.sr.TimePointContext | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A study-level TID 1501 group with the RECIST 1.1 sum of diameters and response category.

    Its tracking identifier starts with ``STUDY_GROUP_PREFIX`` so readers can tell it from lesions.
    """
    evaluations = []
    category = codes.RESPONSE_CATEGORIES.get(ResponseCategory(response.category))
    if category is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.RESPONSE_EVALUATION, value=category))
    measurements = [
        hd.sr.Measurement(name=codes.DIAMETER, value=round(response.sum_of_diameters_mm, 3), unit=codes.MILLIMETER),
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"{STUDY_GROUP_PREFIX}RECIST 1.1 sum of diameters; response {response.category}", None),
        time_point_context=time_point,
        method=codes.RECIST_1_1,
        algorithm_id=provenance.sr_algorithm(),
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def no_findings_group(
    *, provenance: Provenance, undetermined: bool = False, time_point: hd.sr.TimePointContext | None = None
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A group saying the node looked and found no lesion (or none it could encode).

    Written as the qualitative evaluation Lesion (52988006, SCT) = Absent (or Presence
    Undetermined when lesions were found but none could be encoded).
    """
    value = codes.PRESENCE_UNDETERMINED if undetermined else codes.ABSENT
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(f"{STUDY_GROUP_PREFIX}no lesion reported", None),
        time_point_context=time_point,
        finding_type=codes.LESION,
        algorithm_id=provenance.sr_algorithm(),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.LESION, value=value)],
    )


def build_report(
    source_images: Sequence[Dataset],
    *,
    groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations],
    referenced_images: Sequence[Dataset],
    provenance: Provenance,
    segmentation: Dataset | None = None,
    series_instance_uid: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
) -> hd.sr.Comprehensive3DSR:
    """Wrap measurement groups into a Comprehensive 3D SR, TID 1500 Imaging Measurement Report.

    ``source_images`` are all analysed CT instances (the evidence); ``referenced_images`` the
    key slices written into the Image Library.
    """
    if not source_images:
        raise ValueError("source_images: at least one image is required")
    if not groups:
        raise ValueError("groups: a report needs at least one measurement group")
    report = hd.sr.MeasurementReport(
        observation_context=provenance.observer_context(),
        procedure_reported=codes.CT_PROCEDURE,
        imaging_measurements=list(groups),
        title=codes.IMAGING_MEASUREMENT_REPORT,
        referenced_images=list(referenced_images) or None,
    )
    evidence = list(source_images) + ([segmentation] if segmentation is not None else [])
    _check_references(report, evidence)
    # highdicom deep-copies and re-parses the whole content tree, then walks it again for the
    # evidence: 2/3 of the SR's build time on a 10-lesion study. The document is built around
    # the root container alone, the content tree goes in as built and is parsed once, in place.
    root = report[0]
    stub = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            stub.add(element)
    stub.ContentSequence = []
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=stub,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **provenance.equipment(),
        series_description=SR_SERIES_DESCRIPTION,
        is_complete=True,
        is_final=True,
    )
    sr.ContentSequence = root.ContentSequence
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=False)
    logger.info("SR %s: %d groups for study %s", sr.SOPInstanceUID, len(groups), sr.StudyInstanceUID)
    return sr


def _referenced_instances(items: Sequence[Dataset]) -> set[str]:
    uids: set[str] = set()
    for item in items:
        if "ReferencedSOPSequence" in item and item.ValueType in ("IMAGE", "COMPOSITE"):
            uids.update(str(ref.ReferencedSOPInstanceUID) for ref in item.ReferencedSOPSequence)
        if "ContentSequence" in item:
            uids |= _referenced_instances(item.ContentSequence)
    return uids


def _check_references(report: hd.sr.MeasurementReport, evidence: Sequence[Dataset]) -> None:
    """Every instance the content references must be in the evidence (highdicom's own check)."""
    missing = _referenced_instances(report) - {str(ds.SOPInstanceUID) for ds in evidence}
    if missing:
        raise ValueError(f"groups: reference instances missing from the evidence, e.g. {sorted(missing)[0]}")


def tracking_of_groups(sr: Dataset) -> Mapping[str, str]:
    """Tracking UID to lesion ID (``lesion_tracking_id``) of every lesion's TID 1501 group."""
    report = hd.sr.srread(sr) if not isinstance(sr, hd.sr.Comprehensive3DSR) else sr
    groups = report.content.get_image_measurement_groups()
    return {
        g.tracking_uid: lesion_tracking_id(str(g.tracking_identifier))
        for g in groups
        if g.tracking_uid is not None and not str(g.tracking_identifier).startswith(STUDY_GROUP_PREFIX)
    }
