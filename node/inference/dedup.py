"""One lesion, one record: detections that segment into the same lesion are merged.

The detector can fire on several slices or cells of one lesion that the 3D grouping keeps
apart; after segmentation they share most of their mask. The best-scored one is kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from node.imaging.volume import Volume
from node.lesions.records import Lesion

OVERLAP = 0.3  # intersection over the smaller mask
CENTRE_FRACTION = 0.25  # centres closer than this fraction of the larger long axis


def mask_overlap(a: Lesion, b: Lesion) -> float:
    """Intersection of two lesion masks over the smaller one (0 when either has none)."""
    if a.mask is None or b.mask is None or not a.mask.any() or not b.mask.any():
        return 0.0
    lo = np.maximum(a.mask_offset, b.mask_offset)
    hi = np.minimum(np.add(a.mask_offset, a.mask.shape), np.add(b.mask_offset, b.mask.shape))
    if np.any(hi <= lo):
        return 0.0
    sa = tuple(slice(int(lo_ - o), int(hi_ - o)) for lo_, hi_, o in zip(lo, hi, a.mask_offset, strict=True))
    sb = tuple(slice(int(lo_ - o), int(hi_ - o)) for lo_, hi_, o in zip(lo, hi, b.mask_offset, strict=True))
    inter = np.count_nonzero(a.mask[sa] & b.mask[sb])
    return inter / min(np.count_nonzero(a.mask), np.count_nonzero(b.mask))


def _same_centre(a: Lesion, b: Lesion) -> bool:
    if a.center_patient is None or b.center_patient is None:
        return False
    axes = [x.recist.long_axis_mm for x in (a, b) if x.recist is not None]
    limit = max(3.0, CENTRE_FRACTION * max(axes)) if axes else 3.0
    return float(np.linalg.norm(np.subtract(a.center_patient, b.center_patient))) <= limit


def suppress_duplicates(lesions: list[Lesion], volume: Volume | None = None) -> list[Lesion]:
    """Keep the best-scored lesion of every set that overlaps; re-number them 0..n-1 by score."""
    kept: list[Lesion] = []
    for lesion in sorted(lesions, key=lambda x: -x.score):
        if any(mask_overlap(lesion, k) >= OVERLAP or _same_centre(lesion, k) for k in kept):
            continue
        kept.append(lesion)
    return [dataclasses.replace(lesion, index=i) for i, lesion in enumerate(kept)]
