"""Turn one analysed CT series and its lesion records into SEG, TID 1500 SR and presentation state.

This is the one call the worker and ``ainode analyze`` make. Lesions that cannot be encoded
(no key slice, degenerate axes, ...) are left out with a logged reason and counted; a bad record
never crashes the build nor yields an invalid object.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset

from node.dicom import codes, sr
from node.dicom.pr import build_presentation_state
from node.dicom.provenance import Provenance, _is_uid
from node.dicom.seg import build_segmentation, place_mask
from node.imaging.volume import Volume
from node.lesions.records import Lesion, LesionType, ResponseAssessment

logger = logging.getLogger(__name__)

#: Short axis may exceed long axis by this much (mm) before the axes count as degenerate.
AXIS_TOLERANCE_MM = 0.05


@dataclass(frozen=True, kw_only=True)
class ResultObjects:
    """The DICOM objects built for one series, and what was left out.

    Parameters
    ----------
    seg:
        The SEG, or None when no reported lesion has a mask.
    sr:
        The TID 1500 report; always present (it says "no lesion" when nothing was found).
    pr:
        The presentation state with the RECIST lines, or None when no lesion was reported.
    excluded:
        ``(Lesion.index, reason)`` of every lesion left out.
    summary_lines:
        One human-readable line per lesion, reported or left out.
    lesions:
        The reported lesions with their tracking ID and UID as written.
    """

    seg: Dataset | None
    sr: Dataset
    pr: Dataset | None
    excluded: list[tuple[int, str]]
    summary_lines: list[str]
    lesions: tuple[Lesion, ...] = ()

    @property
    def datasets(self) -> list[Dataset]:
        """The objects to store, SEG first so that the SR's references resolve."""
        return [ds for ds in (self.seg, self.sr, self.pr) if ds is not None]


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)) for v in values)


def encoding_problem(lesion: Lesion, volume: Volume) -> str | None:
    """Why a lesion cannot be written into DICOM, or None when it can."""
    n_slices, rows, columns = volume.shape
    if not isinstance(lesion.key_slice, (int, np.integer)) or not 0 <= int(lesion.key_slice) < n_slices:
        return f"key slice {lesion.key_slice!r} is not a slice of the {n_slices}-slice volume"
    try:
        LesionType(lesion.lesion_type)
        codes.site_code(site=lesion.site, lesion_type=lesion.lesion_type)
    except ValueError as exc:
        return f"unknown lesion type or site ({exc})"
    if not _finite(lesion.score):
        return "detector score is not a finite number"
    recist = lesion.recist
    if recist is None:
        return "no RECIST axes"
    if not _finite(recist.long_axis_mm, recist.short_axis_mm):
        return "RECIST axis length is not a finite number"
    if recist.long_axis_mm <= 0 or recist.short_axis_mm <= 0:
        return f"degenerate RECIST axes ({recist.long_axis_mm} x {recist.short_axis_mm} mm)"
    if recist.short_axis_mm > recist.long_axis_mm + AXIS_TOLERANCE_MM:
        return f"short axis {recist.short_axis_mm:.2f} mm exceeds long axis {recist.long_axis_mm:.2f} mm"
    for name, ends in (("long", recist.long_axis_endpoints), ("short", recist.short_axis_endpoints)):
        try:
            points = np.asarray(ends, dtype=np.float64)
        except (TypeError, ValueError):
            return f"{name} axis end points are not numbers"
        if points.shape != (2, 2) or not np.all(np.isfinite(points)):
            return f"{name} axis needs two finite (column, row) end points"
        if np.allclose(points[0], points[1]):
            return f"{name} axis end points coincide"
        if np.any(points < 0) or np.any(points[:, 0] > columns - 1) or np.any(points[:, 1] > rows - 1):
            return f"{name} axis end points lie outside the {columns}x{rows} slice"
    if lesion.volume_mm3 is not None and (not _finite(lesion.volume_mm3) or lesion.volume_mm3 < 0):
        return f"volume {lesion.volume_mm3!r} mm3 is not a non-negative number"
    if lesion.tracking_uid is not None and not _is_uid(str(lesion.tracking_uid)):
        return f"tracking UID {lesion.tracking_uid!r} is not a valid UID"
    if lesion.tracking_id is not None and not (0 < len(str(lesion.tracking_id)) <= 64):
        return "tracking ID must be 1 to 64 characters"
    return None


def _order_sources(source_images: Sequence[Dataset], volume: Volume) -> list[Dataset]:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_images}
    if volume.frame_numbers:
        uid = volume.sop_instance_uids[0]
        if uid not in by_uid:
            raise ValueError(f"source_images: the multi-frame source {uid} is missing")
        return [by_uid[uid]]
    missing = [uid for uid in volume.sop_instance_uids if uid not in by_uid]
    if missing:
        raise ValueError(f"source_images: {len(missing)} slices of the volume have no source image, e.g. {missing[0]}")
    ordered = [by_uid[uid] for uid in volume.sop_instance_uids]
    studies = {str(ds.StudyInstanceUID) for ds in ordered}
    if studies != {volume.study_instance_uid}:
        raise ValueError("source_images: images do not all belong to the volume's study")
    return ordered


def _lesion_volume_mm3(lesion: Lesion, volume: Volume) -> float | None:
    if lesion.volume_mm3 is not None:
        return float(lesion.volume_mm3)
    placed = place_mask(volume, lesion)
    if placed is None:
        return None
    return float(placed[1].sum()) * float(np.prod(volume.spacing))


def _summary(lesion: Lesion, volume_mm3: float | None, segment: int | None) -> str:
    assert lesion.recist is not None
    site = lesion.site or LesionType(lesion.lesion_type).value
    parts = [
        f"{lesion.tracking_id} ({site.replace('_', ' ')}): "
        f"{lesion.recist.long_axis_mm:.1f} x {lesion.recist.short_axis_mm:.1f} mm",
    ]
    if volume_mm3 is not None:
        parts.append(f"{volume_mm3:.0f} mm3")
    parts.append(f"score {lesion.score:.2f}")
    parts.append(f"slice {lesion.key_slice + 1}")
    parts.append(f"segment {segment}" if segment else "no mask")
    return ", ".join(parts)


def _date_series(ds: Dataset | None) -> None:
    """Series Date/Time = when the object was made, so PACS and Orthanc Explorer list it by date."""
    if ds is None:
        return
    date = ds.get("ContentDate") or ds.get("InstanceCreationDate")
    time_ = ds.get("ContentTime") or ds.get("InstanceCreationTime")
    if date and "SeriesDate" not in ds:
        ds.SeriesDate = date
    if time_ and "SeriesTime" not in ds:
        ds.SeriesTime = time_


def build_result_objects(
    source_images: Sequence[Dataset],
    volume: Volume,
    lesions: Sequence[Lesion],
    *,
    provenance: Provenance,
    response: ResponseAssessment | None = None,
    time_point: str | None = None,
    omit_empty_frames: bool = True,
    organs: Mapping[str, np.ndarray] | None = None,
    with_presentation_state: bool = True,
) -> ResultObjects:
    """Build SEG, TID 1500 SR and presentation state for one analysed CT series.

    Parameters
    ----------
    source_images:
        The CT instances of the analysed series, in any order.
    volume:
        The assembled volume; ``volume.sop_instance_uids[i]`` is the source of slice ``i``.
    lesions:
        The lesions found. ``tracking_id`` / ``tracking_uid`` come from the lesion graph; where
        None a readable ID and a new UID are minted.
    provenance:
        Algorithm, model versions and device.
    response:
        RECIST response of this study against the patient's baseline, written to the SR.
    time_point:
        E.g. ``"baseline"`` or ``"follow-up 1"`` (TID 1502).
    omit_empty_frames:
        Leave SEG frames without any segment out.
    organs:
        Optional organ masks (full volume, keyed by ``codes.SITES`` names) for extra segments.
    with_presentation_state:
        Also build the presentation state.

    Returns
    -------
    ResultObjects
    """
    if not isinstance(provenance, Provenance):
        raise ValueError("provenance: must be a node.dicom.provenance.Provenance")
    ordered = _order_sources(source_images, volume)
    tp_context = sr.time_point_context(time_point)

    excluded: list[tuple[int, str]] = []
    summary: list[str] = []
    kept: list[Lesion] = []
    seen_uids: set[str] = set()
    for lesion in lesions:
        reason = encoding_problem(lesion, volume)
        if reason is None and lesion.tracking_uid is not None and lesion.tracking_uid in seen_uids:
            reason = f"tracking UID {lesion.tracking_uid} is given to another lesion of this study"
        if reason is not None:
            logger.warning("lesion %s left out of study %s results: %s", lesion.index, volume.study_instance_uid, reason)
            excluded.append((lesion.index, reason))
            summary.append(f"lesion {lesion.index} left out: {reason}")
            continue
        if lesion.tracking_uid is not None:
            seen_uids.add(str(lesion.tracking_uid))
        kept.append(lesion)
    if len({lesion.index for lesion in kept}) != len(kept):
        raise ValueError("lesions: Lesion.index values must be unique")

    used_ids = {str(lesion.tracking_id) for lesion in kept if lesion.tracking_id is not None}
    resolved: list[Lesion] = []
    for lesion in kept:
        tracking_id = lesion.tracking_id
        if tracking_id is None:
            number = lesion.index + 1
            tracking_id = f"Lesion {number}"
            while tracking_id in used_ids:
                number += 1000
                tracking_id = f"Lesion {number}"
            used_ids.add(tracking_id)
        resolved.append(
            dataclasses.replace(
                lesion,
                tracking_id=str(tracking_id),
                tracking_uid=str(lesion.tracking_uid) if lesion.tracking_uid is not None else str(hd.UID()),
            )
        )

    multi_frame = bool(volume.frame_numbers)
    key_images = {lesion.index: ordered[0] if multi_frame else ordered[lesion.key_slice] for lesion in resolved}
    key_frames = {lesion.index: volume.frame_numbers[lesion.key_slice] for lesion in resolved} if multi_frame else {}

    seg_result = build_segmentation(
        ordered, volume, resolved, provenance=provenance, organs=organs, omit_empty_frames=omit_empty_frames
    )
    seg = seg_result.dataset if seg_result is not None else None
    segment_numbers = seg_result.segment_numbers if seg_result is not None else {}

    targets = set(response.target_tracking_uids) if response is not None else set()
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = []
    for lesion in resolved:
        groups.append(
            sr.recist_group(
                lesion,
                key_images[lesion.index],
                provenance=provenance,
                frame_number=key_frames.get(lesion.index),
                time_point=tp_context,
                target=(lesion.tracking_uid in targets) if targets else None,
            )
        )
        volume_mm3 = _lesion_volume_mm3(lesion, volume)
        segment = segment_numbers.get(lesion.index)
        if seg is not None and segment is not None:
            groups.append(
                sr.volumetric_group(
                    lesion, seg, segment, provenance=provenance, volume_mm3=volume_mm3, time_point=tp_context
                )
            )
        summary.append(_summary(lesion, volume_mm3, segment))
    if response is not None:
        groups.append(sr.response_group(response, provenance=provenance, time_point=tp_context))
    if not resolved:
        groups.append(sr.no_findings_group(provenance=provenance, undetermined=bool(excluded), time_point=tp_context))

    # highdicom's Image Library descriptors read single-frame attributes (PixelSpacing, ...):
    # an Enhanced CT source gets no library; its frames are still referenced by the SCOORDs.
    key_list = [] if multi_frame else list({str(ds.SOPInstanceUID): ds for ds in key_images.values()}.values())
    report = sr.build_report(
        ordered, groups=groups, referenced_images=key_list, provenance=provenance, segmentation=seg
    )
    pr = None
    if with_presentation_state and resolved:
        pr = build_presentation_state(key_images, resolved, provenance=provenance, frame_numbers=key_frames)
    for ds in (seg, report, pr):
        _date_series(ds)
    summary.append(
        f"{len(resolved)} lesion(s) reported, {len(excluded)} left out"
        + (f"; RECIST response {response.category}" if response is not None else "")
    )
    return ResultObjects(
        seg=seg, sr=report, pr=pr, excluded=excluded, summary_lines=summary, lesions=tuple(resolved)
    )
