"""RECIST measurement from a lesion mask on its key slice."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from node.lesions.records import RecistAxes


def measure_recist(mask: np.ndarray, pixel_spacing: tuple[float, float]) -> RecistAxes | None:
    """Long axis (longest in-plane diameter) and short axis (longest diameter perpendicular to it).

    Parameters
    ----------
    mask:
        2D boolean mask (rows, columns) of one lesion on its key slice.
    pixel_spacing:
        (row, column) spacing in mm.

    Returns
    -------
    RecistAxes or None
        End points are (column, row) pixel coordinates in ``mask``; lengths in mm include the
        extent of the end pixels. None for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected 2 dimensions, got shape {mask.shape}")
    rs, cs = float(pixel_spacing[0]), float(pixel_spacing[1])
    if rs <= 0 or cs <= 0:
        raise ValueError(f"pixel_spacing: must be positive, got {pixel_spacing}")
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    pts = np.stack([cols * cs, rows * rs], axis=1).astype(np.float64)  # mm, (x, y)
    candidates = pts
    if len(pts) >= 4:
        try:
            candidates = pts[ConvexHull(pts).vertices]
        except QhullError:  # collinear pixels
            candidates = pts
    if len(candidates) > 2000:
        candidates = candidates[:: len(candidates) // 2000 + 1]
    d2 = ((candidates[:, None, :] - candidates[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    p, q = candidates[i], candidates[j]
    length = float(np.sqrt(d2[i, j]))
    u = (q - p) / length if length > 0 else np.array([1.0, 0.0])
    v = np.array([-u[1], u[0]])
    long_mm = length + abs(u[0]) * cs + abs(u[1]) * rs

    # Short axis: longest chord perpendicular to the long axis (bin pixels along u).
    pu = (pts - p) @ u
    pv = (pts - p) @ v
    width = min(rs, cs)
    bins = np.round(pu / width).astype(np.int64)
    order = np.argsort(bins, kind="stable")
    b_sorted = bins[order]
    starts = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    vmin = np.minimum.reduceat(pv[order], starts)
    vmax = np.maximum.reduceat(pv[order], starts)
    k = int(np.argmax(vmax - vmin))
    chord = float(vmax[k] - vmin[k])
    short_mm = chord + abs(v[0]) * cs + abs(v[1]) * rs
    short_mm = min(short_mm, long_mm)
    u_at = b_sorted[starts[k]] * width
    s0 = p + u * u_at + v * vmin[k]
    s1 = p + u * u_at + v * vmax[k]

    def to_px(point: np.ndarray) -> tuple[float, float]:
        return (float(point[0] / cs), float(point[1] / rs))

    return RecistAxes(
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        long_axis_endpoints=(to_px(p), to_px(q)),
        short_axis_endpoints=(to_px(s0), to_px(s1)),
    )
