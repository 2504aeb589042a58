"""RECIST axes measured from masks: known shapes give known diameters."""

from __future__ import annotations

import numpy as np
import pytest

from node.inference.recist import measure_recist


def _ellipse(shape, centre, a, b, theta):
    rr, cc = np.mgrid[: shape[0], : shape[1]].astype(float)
    dx, dy = cc - centre[0], rr - centre[1]
    p = dx * np.cos(theta) + dy * np.sin(theta)
    q = -dx * np.sin(theta) + dy * np.cos(theta)
    return (p / a) ** 2 + (q / b) ** 2 <= 1.0


@pytest.mark.parametrize("theta", [0.0, 0.5, 1.2])
def test_ellipse_axes_and_perpendicularity(theta: float) -> None:
    mask = _ellipse((200, 200), (100, 90), 40, 15, theta)
    axes = measure_recist(mask, (0.5, 0.5))
    assert axes is not None
    assert axes.long_axis_mm == pytest.approx(40.0, abs=1.0)
    assert axes.short_axis_mm == pytest.approx(15.0, abs=1.0)
    (x0, y0), (x1, y1) = axes.long_axis_endpoints
    (u0, v0), (u1, v1) = axes.short_axis_endpoints
    lu = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0)
    su = np.array([u1 - u0, v1 - v0]) / np.hypot(u1 - u0, v1 - v0)
    assert abs(lu @ su) < 0.05
    assert abs(np.arctan2(lu[1], lu[0]) % np.pi - theta % np.pi) < 0.1
    for point in (*axes.long_axis_endpoints, *axes.short_axis_endpoints):
        assert mask[int(round(point[1])), int(round(point[0]))]


def test_anisotropic_pixels() -> None:
    mask = np.zeros((50, 100), bool)
    mask[20:30, 10:90] = True  # 80 columns x 1 mm, 10 rows x 2 mm
    axes = measure_recist(mask, (2.0, 1.0))
    assert axes.long_axis_mm == pytest.approx(np.hypot(80, 20), abs=1.5)
    assert axes.short_axis_mm <= axes.long_axis_mm


def test_empty_and_bad_arguments() -> None:
    assert measure_recist(np.zeros((10, 10), bool), (1.0, 1.0)) is None
    with pytest.raises(ValueError, match="mask"):
        measure_recist(np.zeros((2, 2, 2), bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="pixel_spacing"):
        measure_recist(np.ones((3, 3), bool), (0.0, 1.0))
    single = np.zeros((5, 5), bool)
    single[2, 2] = True
    axes = measure_recist(single, (0.8, 0.8))
    assert axes.long_axis_mm == pytest.approx(0.8)
