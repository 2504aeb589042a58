"""Grayscale Softcopy Presentation State drawing RECIST lines, for viewers that draw no SR graphics."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from node.dicom.provenance import Provenance
from node.dicom.sr import image_coordinates
from node.lesions.records import Lesion

logger = logging.getLogger(__name__)

PR_SERIES_NUMBER = 9703
PR_SERIES_DESCRIPTION = "ainode RECIST annotations"
#: Soft-tissue window used when the presentation state is displayed.
WINDOW_CENTER = 40.0
WINDOW_WIDTH = 400.0


def build_presentation_state(
    key_images: Mapping[int, Dataset],
    lesions: Sequence[Lesion],
    *,
    provenance: Provenance,
    frame_numbers: Mapping[int, int] | None = None,
    series_instance_uid: str | None = None,
    series_number: int = PR_SERIES_NUMBER,
) -> hd.pr.GrayscaleSoftcopyPresentationState | None:
    """Draw each lesion's long and short axis and its tracking ID on its key slice.

    Parameters
    ----------
    key_images:
        Source instance of each lesion's key slice, by ``Lesion.index``.
    lesions:
        Lesions with RECIST axes and tracking identifiers.
    frame_numbers:
        Frame of the key slice by ``Lesion.index`` for multi-frame sources.

    Returns
    -------
    highdicom.pr.GrayscaleSoftcopyPresentationState | None
        None when no lesion has RECIST axes.
    """
    drawable = [lesion for lesion in lesions if lesion.recist is not None]
    if not drawable:
        return None
    for lesion in drawable:
        if lesion.index not in key_images:
            raise ValueError(f"key_images: no image for lesion {lesion.index}")
    layer = hd.pr.GraphicLayer(layer_name="RECIST", order=1, description="RECIST 1.1 axes by ainode")
    frame_numbers = frame_numbers or {}
    by_image: dict[tuple[str, int | None], list[Lesion]] = {}
    for lesion in drawable:
        key = (str(key_images[lesion.index].SOPInstanceUID), frame_numbers.get(lesion.index))
        by_image.setdefault(key, []).append(lesion)

    annotations = []
    referenced: dict[str, Dataset] = {}
    for (uid, frame), group in by_image.items():
        image = key_images[group[0].index]
        referenced[uid] = image
        objects: list[hd.pr.GraphicObject] = []
        texts: list[hd.pr.TextObject] = []
        for lesion in group:
            assert lesion.recist is not None
            for ends in (lesion.recist.long_axis_endpoints, lesion.recist.short_axis_endpoints):
                objects.append(
                    hd.pr.GraphicObject(
                        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                        graphic_data=np.array([image_coordinates(p) for p in ends], dtype=np.float64),
                        units=hd.pr.AnnotationUnitsValues.PIXEL,
                        tracking_id=lesion.tracking_id,
                        tracking_uid=lesion.tracking_uid,
                    )
                )
            anchor = image_coordinates(lesion.recist.long_axis_endpoints[0])
            texts.append(
                hd.pr.TextObject(
                    text_value=(
                        f"{lesion.tracking_id}: {lesion.recist.long_axis_mm:.1f} x "
                        f"{lesion.recist.short_axis_mm:.1f} mm"
                    )[:64],
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    anchor_point=anchor,
                    anchor_point_visible=False,
                    tracking_id=lesion.tracking_id,
                    tracking_uid=lesion.tracking_uid,
                )
            )
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[image],
                graphic_layer=layer,
                referenced_frame_number=frame,
                graphic_objects=objects,
                text_objects=texts,
            )
        )
    images = list(referenced.values())
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=images,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        **provenance.equipment(),
        content_label="RECIST",
        content_description="RECIST 1.1 axes drawn by ainode",
        graphic_annotations=annotations,
        graphic_layers=[layer],
        voi_lut_transformations=[
            hd.pr.SoftcopyVOILUTTransformation(window_center=WINDOW_CENTER, window_width=WINDOW_WIDTH)
        ],
        series_description=PR_SERIES_DESCRIPTION,
    )
    source = images[0]
    if "BodyPartExamined" in source:
        pr.BodyPartExamined = source.BodyPartExamined
    if "Laterality" in source:
        pr.Laterality = source.Laterality
    elif "BodyPartExamined" not in pr:
        pr.Laterality = ""  # General Series 2C: unknown, since the body part is not given
    logger.info("PR %s: %d lesions on %d images", pr.SOPInstanceUID, len(drawable), len(images))
    return pr
