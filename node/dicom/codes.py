"""Every coded concept the node writes into DICOM, checked against pydicom's code dictionary.

One module holds them all so that SEG, SR and presentation state say the same thing with the
same code. Sites are keyed by the short names used on ``Lesion.site`` and ``LesionType``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.lesions.records import LesionType, ResponseCategory

# Segment and finding types.
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = codes.SCT.MorphologicallyAbnormalStructure
ANATOMICAL_STRUCTURE: Code = codes.SCT.AnatomicalStructure
LESION: Code = codes.SCT.Lesion
MASS: Code = codes.SCT.Mass
NODULE: Code = codes.SCT.Nodule
LYMPH_NODE: Code = codes.SCT.LymphNode
NEOPLASM: Code = codes.SCT.Neoplasm

# Measurements.
# PS3.16 CID 7470 spells them "Long Axis" / "Short Axis" (pydicom: "Long axis"); OHIF's RECIST
# (Bidirectional) reader finds the axes by exactly this meaning.
LONG_AXIS: Code = Code(codes.SCT.LongAxis.value, "SCT", "Long Axis")
SHORT_AXIS: Code = Code(codes.SCT.ShortAxis.value, "SCT", "Short Axis")
DIAMETER: Code = codes.SCT.Diameter
VOLUME: Code = codes.SCT.Volume
VOLUME_FROM_VOXELS: Code = codes.DCM.SumOfSegmentedVoxelMethodForVolume
FINDING_SITE: Code = codes.SCT.FindingSite
COMMENT: Code = codes.DCM.Comment
MILLIMETER: Code = codes.UCUM.Millimeter
CUBIC_MILLIMETER: Code = codes.UCUM.CubicMillimeter
UNITLESS: Code = Code("1", "UCUM", "no units")
PERCENT: Code = Code("%", "UCUM", "Percent")
# No standard concept means "AI confidence": Certainty of Finding (111012, DCM) with a unitless
# value in [0, 1] is the closest one and is what the node writes for the detector's score.
DETECTOR_SCORE: Code = codes.DCM.CertaintyOfFinding

# Methods, tracking, report structure.
RECIST_1_1: Code = codes.DCM.RECIST1Point1
TRACKING_IDENTIFIER: Code = codes.DCM.TrackingIdentifier
TRACKING_UID: Code = codes.DCM.TrackingUniqueIdentifier
TARGET_LESION_AT_BASELINE: Code = codes.DCM.TargetLesionAtBaseline
NON_TARGET_LESION_AT_BASELINE: Code = codes.DCM.NonTargetLesionAtBaseline
IMAGING_MEASUREMENT_REPORT: Code = codes.DCM.ImagingMeasurementReport
ARTIFICIAL_INTELLIGENCE: Code = codes.DCM.ArtificialIntelligence
DEVICE_OBSERVER: Code = codes.DCM.Device
CT_PROCEDURE: Code = codes.SCT.ComputedTomography
FINDING: Code = codes.DCM.Finding
ABSENT: Code = codes.SCT.Absent
PRESENT: Code = codes.SCT.Present
PRESENCE_UNDETERMINED: Code = codes.DCM.PresenceUndetermined
RESPONSE_EVALUATION: Code = codes.DCM.ResponseEvaluation
RESPONSE_EVALUATION_METHOD: Code = codes.DCM.ResponseEvaluationMethod

# Time points (CID 6146).
TIME_POINT_BASELINE: Code = codes.DCM.Baseline
TIME_POINT_POSTTREATMENT: Code = codes.DCM.Posttreatment

SITES: Mapping[str, Code] = MappingProxyType(
    {
        "lung": codes.SCT.Lung,
        "liver": codes.SCT.Liver,
        "kidney": codes.SCT.Kidney,
        "mediastinum": codes.SCT.Mediastinum,
        "abdomen": codes.SCT.Abdomen,
        "pelvis": codes.SCT.Pelvis,
        "soft_tissue": codes.SCT.SoftTissue,
        "bone": codes.SCT.Bone,
        "chest": codes.SCT.Chest,
    }
)
"""Anatomic sites by the short names used on ``Lesion.site``."""

LESION_TYPE_SITES: Mapping[LesionType, Code] = MappingProxyType(
    {kind: SITES[kind.value] for kind in LesionType}
)
"""The site each DeepLesion coarse type stands for."""

RESPONSE_CATEGORIES: Mapping[ResponseCategory, Code] = MappingProxyType(
    {
        ResponseCategory.CR: Code("112041", "DCM", "Target Lesion Complete Response"),
        ResponseCategory.PR: Code("112042", "DCM", "Target Lesion Partial Response"),
        ResponseCategory.PD: Code("112043", "DCM", "Target Lesion Progressive Disease"),
        ResponseCategory.SD: Code("112044", "DCM", "Target Lesion Stable Disease"),
    }
)
"""RECIST target-lesion response codes (CID 6144); BASELINE and NE have no code."""


def site_code(*, site: str | None, lesion_type: LesionType) -> Code:
    """The finding site of a lesion: its own ``site`` when known, else its type's site.

    Raises
    ------
    ValueError
        If ``site`` is not a key of ``SITES``.
    """
    if site is None:
        return LESION_TYPE_SITES[LesionType(lesion_type)]
    try:
        return SITES[site]
    except KeyError:
        raise ValueError(f"site: unknown site {site!r}; known: {', '.join(SITES)}") from None
