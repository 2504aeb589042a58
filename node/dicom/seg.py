"""DICOM SEG for lesion masks: one segment per lesion (and per organ), aligned with the CT slices."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset

from node.dicom import codes
from node.dicom.provenance import Provenance
from node.imaging.volume import Volume
from node.lesions.records import Lesion

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9701
SEG_SERIES_DESCRIPTION = "ainode lesion segmentation"


@dataclass(frozen=True, kw_only=True)
class SegmentationResult:
    """A built SEG and where each lesion and organ went.

    ``segment_numbers`` maps ``Lesion.index`` to its segment number; ``organ_segments`` maps
    an organ's site name to its segment number.
    """

    dataset: hd.seg.Segmentation
    segment_numbers: Mapping[int, int]
    organ_segments: Mapping[str, int]


def place_mask(volume: Volume, lesion: Lesion) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Where a lesion's mask lands in the volume, clipped to it; None when nothing lands.

    Returns the volume slices and the matching part of the mask.
    """
    if lesion.mask is None:
        return None
    mask = np.asarray(lesion.mask)
    if mask.ndim != 3:
        return None
    volume_index: list[slice] = []
    mask_index: list[slice] = []
    for offset, size, limit in zip(lesion.mask_offset, mask.shape, volume.shape, strict=True):
        start, stop = max(int(offset), 0), min(int(offset) + size, limit)
        if stop <= start:
            return None
        volume_index.append(slice(start, stop))
        mask_index.append(slice(start - int(offset), stop - int(offset)))
    part = mask[tuple(mask_index)].astype(bool, copy=False)
    if not part.any():
        return None
    return (volume_index[0], volume_index[1], volume_index[2]), part


def build_segmentation(
    source_images: Sequence[Dataset],
    volume: Volume,
    lesions: Sequence[Lesion],
    *,
    provenance: Provenance,
    organs: Mapping[str, np.ndarray] | None = None,
    series_instance_uid: str | None = None,
    series_number: int = SEG_SERIES_NUMBER,
    omit_empty_frames: bool = True,
) -> SegmentationResult | None:
    """Build a BINARY SEG with one segment per lesion mask and per organ mask.

    Parameters
    ----------
    source_images:
        The CT instances, ordered like the volume's slices (single-frame), or the one
        multi-frame instance when ``volume.frame_numbers`` is set.
    volume:
        The volume the lesions were found in.
    lesions:
        Lesions with ``tracking_id`` and ``tracking_uid`` already set; those whose mask is
        None or falls outside the volume get no segment.
    provenance:
        Algorithm and device identification.
    organs:
        Optional full-volume boolean masks keyed by a site name of ``codes.SITES``.
    omit_empty_frames:
        Leave out frames with no segment (older viewers mis-place sparse SEGs: pass False).

    Returns
    -------
    SegmentationResult | None
        None when no lesion and no organ has a mask.
    """
    if not source_images:
        raise ValueError("source_images: at least one image is required")
    multi_frame = bool(volume.frame_numbers)
    if not multi_frame and len(source_images) != volume.shape[0]:
        raise ValueError(
            f"source_images: {len(source_images)} images for a volume of {volume.shape[0]} slices"
        )
    for lesion in lesions:
        if lesion.tracking_uid is None or lesion.tracking_id is None:
            raise ValueError(f"lesions: lesion {lesion.index} has no tracking identifier")

    placed: list[tuple[int, tuple[slice, slice, slice], np.ndarray]] = []
    for lesion in lesions:
        where = place_mask(volume, lesion)
        if where is None:
            if lesion.mask is not None:
                logger.warning("lesion %d: mask is empty or outside the volume; no segment", lesion.index)
            continue
        placed.append((lesion.index, *where))
    organ_masks: list[tuple[str, np.ndarray]] = []
    for name, mask in (organs or {}).items():
        if name not in codes.SITES:
            raise ValueError(f"organs: unknown site {name!r}")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != volume.shape:
            raise ValueError(f"organs: mask {name!r} has shape {mask.shape}, volume {volume.shape}")
        if mask.any():
            organ_masks.append((name, mask))
    if not placed and not organ_masks:
        return None

    algorithm = provenance.seg_algorithm()
    by_index = {lesion.index: lesion for lesion in lesions}
    descriptions: list[hd.seg.SegmentDescription] = []
    segment_numbers: dict[int, int] = {}
    organ_segments: dict[str, int] = {}
    for number, (index, _, _) in enumerate(placed, start=1):
        lesion = by_index[index]
        site = codes.site_code(site=lesion.site, lesion_type=lesion.lesion_type)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"{lesion.tracking_id}"[:64],
                segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                segmented_property_type=codes.LESION,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=lesion.tracking_uid,
                tracking_id=lesion.tracking_id,
                anatomic_regions=[site],
            )
        )
        segment_numbers[index] = number
    for number, (name, _) in enumerate(organ_masks, start=len(placed) + 1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name.replace("_", " "),
                segmented_property_category=codes.ANATOMICAL_STRUCTURE,
                segmented_property_type=codes.SITES[name],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
        organ_segments[name] = number

    n_segments = len(descriptions)
    overlapping = bool(organ_masks) and n_segments > 1
    label: np.ndarray | None = None
    if not overlapping:
        label = np.zeros(volume.shape, dtype=np.uint8 if n_segments < 256 else np.uint16)
        for number, (_, where, part) in enumerate(placed, start=1):
            region = label[where]
            if np.any(region[part]):
                overlapping = True
                break
            region[part] = number
    if overlapping:
        stack = np.zeros((*volume.shape, n_segments), dtype=bool)
        for number, (_, where, part) in enumerate(placed, start=1):
            stack[(*where, number - 1)] |= part
        for number, (_, mask) in enumerate(organ_masks, start=len(placed) + 1):
            stack[..., number - 1] = mask
        pixels: np.ndarray = stack
    else:
        assert label is not None
        for number, (_, mask) in enumerate(organ_masks, start=len(placed) + 1):
            label[mask] = number
        pixels = label

    images: Sequence[Dataset] = source_images
    if multi_frame:
        frames = np.zeros((int(source_images[0].NumberOfFrames), *pixels.shape[1:]), dtype=pixels.dtype)
        frames[np.asarray(volume.frame_numbers) - 1] = pixels
        pixels = frames
    elif omit_empty_frames:
        # Only slices holding a segment are needed; this keeps big studies cheap.
        occupied = np.flatnonzero(pixels.reshape(pixels.shape[0], -1).any(axis=1))
        images = [source_images[i] for i in occupied]
        pixels = pixels[occupied]

    reference = source_images[0]
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **provenance.equipment(),
        content_label="LESIONS",
        content_description="Lesion masks by ainode",
        series_description=SEG_SERIES_DESCRIPTION,
        omit_empty_frames=omit_empty_frames,
    )
    logger.info(
        "SEG %s: %d segments over %d frames for study %s",
        seg.SOPInstanceUID, n_segments, int(seg.NumberOfFrames), reference.StudyInstanceUID,
    )
    return SegmentationResult(dataset=seg, segment_numbers=segment_numbers, organ_segments=organ_segments)
