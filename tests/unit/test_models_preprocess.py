"""The shared preprocessing: window, canvas geometry, lesion crops."""

from __future__ import annotations

import numpy as np
import pytest

from node.inference import preprocess as pp


def test_window_limits() -> None:
    out = pp.window(np.array([-3000.0, -1024.0, 3071.0, 5000.0]))
    np.testing.assert_allclose(out, [0.0, 0.0, 255.0, 255.0])
    assert out.dtype == np.float32


def test_canvas_maps_back_to_the_volume() -> None:
    hu = np.full((40, 100, 120), -1000.0, np.float32)
    hu[10:30, 40:60, 70:90] = 500.0  # a bright block
    spacing = (1.25, 0.8, 0.8)
    canvas = pp.make_canvas(hu, spacing)
    assert canvas.pixels.shape == (int((40 - 1) * 1.25 / 2) + 1, pp.CANVAS_SIZE, pp.CANVAS_SIZE)
    k, r, c = canvas.from_volume(20, 50, 80)
    assert canvas.pixels[int(round(k)), int(round(r)), int(round(c))] > pp.window(np.array(300.0))
    back = canvas.to_volume(k, r, c)
    np.testing.assert_allclose(back, (20, 50, 80), atol=1e-9)
    assert canvas.pixels[0, 0, 0] == 0.0  # outside the field of view: air
    assert pp.ssbr_inputs(canvas).shape == (canvas.pixels.shape[0], 1, pp.SSBR_SIZE, pp.SSBR_SIZE)
    whole = pp.ssbr_inputs(canvas, view=1.0)[:, 0]  # training's input, which it crops itself
    np.testing.assert_allclose(pp.ssbr_inputs(canvas)[:, 0], pp.centre_view(whole, pp.SSBR_VIEW))
    inputs = pp.detector_inputs(canvas, np.array([0, 5]))
    assert inputs.shape == (2, 9, pp.CANVAS_SIZE, pp.CANVAS_SIZE)
    np.testing.assert_array_equal(inputs[0, 0], canvas.pixels[0])  # clamped at the first slice


def test_lesion_crop_is_centred_and_scaled() -> None:
    hu = np.zeros((20, 200, 200), np.float32)
    rr, cc = np.mgrid[:200, :200]
    hu[:, (rr - 90) ** 2 + (cc - 120) ** 2 <= 10**2] = 1000.0  # 10 px = 5 mm radius at 0.5 mm
    crop = pp.lesion_crop(hu, (2.0, 0.5, 0.5), slice_=10.0, center_rc=(90, 120), side_mm=40.0)
    assert crop.shape == (3, pp.CROP_SIZE, pp.CROP_SIZE)
    bright = crop[1] > pp.window(np.array(500.0))
    ys, xs = np.nonzero(bright)
    assert abs(ys.mean() - 31.5) < 1 and abs(xs.mean() - 31.5) < 1
    diameter_px = xs.max() - xs.min() + 1
    assert diameter_px == pytest.approx(10.0 / (40.0 / pp.CROP_SIZE), abs=2)
    with pytest.raises(ValueError, match="side_mm"):
        pp.lesion_crop(hu, (2.0, 0.5, 0.5), slice_=1.0, center_rc=(0, 0), side_mm=0.0)


def test_bad_canvas_arguments() -> None:
    with pytest.raises(ValueError, match="pixels"):
        pp.make_canvas(np.zeros((4, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        pp.make_canvas(np.zeros((4, 4, 4)), (0.0, 1.0, 1.0))


def test_embedder_crop_is_the_box_padded_by_the_seed_context() -> None:
    from node.inference.analyzer import box_crop

    # A 10 mm box (20 px at 0.5 mm): the embedder sees it with 50 mm around it, 110 mm in all,
    # where the segmenter's crop is 2x the box, at least 32 mm.
    centre, side = box_crop((100.0, 80.0, 120.0, 90.0), (2.0, 0.5, 0.5))
    assert centre == (85.0, 110.0)
    assert side == pytest.approx(10.0 + 2 * pp.EMBED_PAD_MM) == pytest.approx(110.0)
    assert pp.crop_geometry(10.0) == 32.0
    # A jittered box is scaled before it is padded; a very large one stops at 256 mm.
    assert box_crop((100.0, 80.0, 120.0, 90.0), (2.0, 0.5, 0.5), scale=1.2)[1] == pytest.approx(112.0)
    assert pp.embed_crop_side(200.0) == 256.0


def test_the_zoomed_canvas_covers_the_body_at_finer_pixels() -> None:
    # The detector's zoomed pass: the body (denser than -500 HU) again at CANVAS_MM / zoom pixels,
    # the same slices, whole tiles and heatmap cells, mapped to the same volume coordinates.
    hu = np.full((30, 200, 240), -1000.0, np.float32)
    hu[:, 30:170, 20:230] = 40.0  # a body 140 x 210 pixels, off centre in rows
    hu[12:18, 100:104, 150:154] = 200.0  # a 3 mm lesion
    spacing = (2.5, 1.5, 1.5)
    canvas = pp.make_canvas(hu, spacing)
    zoomed = pp.zoomed_canvas(hu, spacing, canvas, 2.0)
    assert zoomed.pixels.shape[0] == canvas.pixels.shape[0] and zoomed.slice_step == canvas.slice_step
    assert zoomed.row_step == pytest.approx(canvas.row_step / 2.0)
    rows, cols = zoomed.pixels.shape[1:]
    assert rows == pp.CANVAS_SIZE  # 140 x 1.5 mm = 210 mm of body: 210 pixels, one tile
    assert cols > pp.CANVAS_SIZE and cols % pp.HEATMAP_STRIDE == 0  # 315 mm: 316 pixels
    k, r, c = zoomed.from_volume(15, 101.5, 151.5)
    assert zoomed.pixels[int(round(k)), int(round(r)), int(round(c))] > pp.window(np.array(150.0))
    for corner in ((30, 20), (169, 229)):  # the body's corners are on it
        _, r, c = zoomed.from_volume(0, *corner)
        assert 0 <= r <= rows - 1 and 0 <= c <= cols - 1
    np.testing.assert_allclose(zoomed.to_volume(*zoomed.from_volume(7, 42, 99)), (7, 42, 99), atol=1e-9)
    assert pp.zoomed_canvas(np.full_like(hu, -1000.0), spacing, pp.make_canvas(np.full_like(hu, -1000.0), spacing), 2.0) is None


@pytest.mark.parametrize("length", [pp.CANVAS_SIZE, 258, 316, 512, 700])
def test_detector_tiles_cover_the_zoomed_canvas_and_overlap(length: int) -> None:
    starts = pp.tile_starts(length)
    assert starts[0] == 0 and starts[-1] + pp.CANVAS_SIZE == length
    assert all(s % pp.HEATMAP_STRIDE == 0 for s in starts)
    assert all(b - a <= pp.CANVAS_SIZE - pp.CANVAS_SIZE // 4 for a, b in zip(starts[:-1], starts[1:], strict=True))
