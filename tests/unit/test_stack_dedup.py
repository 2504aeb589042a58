"""Duplicate detections of one lesion become one record."""

from __future__ import annotations

import numpy as np

from node.inference.dedup import mask_overlap, suppress_duplicates
from node.lesions.records import Lesion, LesionType, RecistAxes


def lesion(index: int, score: float, offset, centre, size: int = 6, long_mm: float = 20.0) -> Lesion:
    return Lesion(
        index=index, key_slice=offset[0] + 1, box=(0, 0, 1, 1), score=score, lesion_type=LesionType.LIVER,
        recist=RecistAxes(long_axis_mm=long_mm, short_axis_mm=long_mm / 2,
                          long_axis_endpoints=((0, 0), (1, 0)), short_axis_endpoints=((0, 0), (0, 1))),
        volume_mm3=100.0, mask=np.ones((3, size, size), bool), mask_offset=tuple(offset), center_patient=centre,
    )


def test_overlap_is_relative_to_the_smaller_mask() -> None:
    a = lesion(0, 0.9, (0, 0, 0), (0, 0, 0))
    b = lesion(1, 0.8, (0, 3, 3), (50, 50, 50))
    assert mask_overlap(a, b) == 0.25
    assert mask_overlap(a, lesion(2, 0.5, (10, 0, 0), (0, 0, 90))) == 0.0


def test_duplicates_keep_the_best_and_renumber() -> None:
    best = lesion(0, 0.7, (0, 0, 0), (0.0, 0.0, 0.0))
    same_mask = lesion(1, 0.9, (0, 1, 1), (40.0, 0.0, 0.0))
    same_centre = lesion(2, 0.6, (20, 20, 20), (41.0, 0.0, 0.0))
    other = lesion(3, 0.5, (40, 40, 40), (100.0, 0.0, 0.0))
    kept = suppress_duplicates([best, same_mask, same_centre, other])
    assert [k.score for k in kept] == [0.9, 0.5]
    assert [k.index for k in kept] == [0, 1]
