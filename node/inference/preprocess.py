"""The seed's preprocessing: one HU window, fixed mm grids, 3 neighbouring slices at 2 mm.

Every model sees pixels windowed to -1024..3071 HU and rescaled to 0..255 (float32).
The detector and the body-part regressor work on a *canvas*: the volume resampled to
2 mm x 2 mm pixels on a fixed ``CANVAS_SIZE`` square centred on the volume, with 2 mm between
slices. The segmenter and embedder work on lesion-centred crops taken from the original volume.
Training (node.training) uses these same functions, so the wire format is defined here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

HU_MIN = -1024.0
HU_MAX = 3071.0
SLICE_MM = 2.0  # distance between the 3 neighbouring slices of a group
CANVAS_MM = 2.0  # detector pixel size (1 mm pixels, 2x downsampled)
CANVAS_SIZE = 256  # 512 mm field of view
SSBR_SIZE = 64  # body-part regressor input (8 mm pixels)
SSBR_VIEW = 0.8  # the node's body-part regressor sees the middle 80% of the slice (``ssbr_inputs``)
CROP_SIZE = 64  # segmenter / embedder crop, pixels
DETECTOR_GROUPS = 3  # 3DCE: key group plus one group above and one below
DETECTOR_CHANNELS = 3 * DETECTOR_GROUPS
HEATMAP_STRIDE = 2  # detector output cells per canvas pixel (4 mm cells)
MIN_LESION_MM = 3.0
MAX_LESION_MM = 100.0


def window(hu: np.ndarray) -> np.ndarray:
    """Window HU to -1024..3071 and rescale to 0..255 float32 (the seed's single window)."""
    out = np.clip(np.asarray(hu, dtype=np.float32), HU_MIN, HU_MAX)
    out -= HU_MIN
    out *= 255.0 / (HU_MAX - HU_MIN)
    return out


@dataclass(frozen=True, kw_only=True)
class Canvas:
    """A volume resampled to the detector grid, with the map back to the volume's voxels.

    ``pixels`` has shape (canvas slices, CANVAS_SIZE, CANVAS_SIZE), windowed to 0..255.
    Canvas voxel (k, r, c) is volume voxel (k * slice_step, row0 + r * row_step,
    col0 + c * col_step).
    """

    pixels: np.ndarray
    slice_step: float
    row0: float
    row_step: float
    col0: float
    col_step: float

    def to_volume(self, k: float, r: float, c: float) -> tuple[float, float, float]:
        """Volume (slice, row, column) of canvas (slice, row, column)."""
        return (k * self.slice_step, self.row0 + r * self.row_step, self.col0 + c * self.col_step)

    def from_volume(self, s: float, row: float, col: float) -> tuple[float, float, float]:
        """Canvas (slice, row, column) of volume (slice, row, column)."""
        return (s / self.slice_step, (row - self.row0) / self.row_step, (col - self.col0) / self.col_step)

    def per_slice(self, values: np.ndarray, count: int) -> np.ndarray:
        """``values`` given on each canvas slice, linearly interpolated at the volume's ``count`` slices."""
        return np.interp(np.arange(count), np.arange(len(values)) * self.slice_step, values)


def resample_slices(pixels: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linearly interpolate a (slices, rows, cols) stack at fractional slice ``positions``."""
    n = pixels.shape[0]
    positions = np.clip(np.asarray(positions, dtype=np.float64), 0.0, n - 1.0)
    lo = np.floor(positions).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (positions - lo).astype(np.float32)[:, None, None]
    return pixels[lo] * (1.0 - w) + pixels[hi] * w


def make_canvas(
    pixels: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    pixel_mm: float = CANVAS_MM,
    shape: tuple[int, int] = (CANVAS_SIZE, CANVAS_SIZE),
    centre: tuple[float, float] | None = None,
) -> Canvas:
    """Resample a HU stack to 2 mm slices and 2 mm pixels on the fixed square canvas.

    Parameters
    ----------
    pixels:
        (slices, rows, cols) HU.
    spacing:
        (slice, row, column) spacing in mm.
    pixel_mm, shape, centre:
        another grid in the plane (the detector's zoomed pass, ``zoomed_canvas``): its pixel size,
        (rows, cols) and the volume (row, col) at its centre (default the volume's centre).
    """
    if pixels.ndim != 3:
        raise ValueError(f"pixels: expected 3 dimensions, got shape {pixels.shape}")
    if min(spacing) <= 0:
        raise ValueError(f"spacing: must be positive, got {spacing}")
    n, rows, cols = pixels.shape
    slice_step = SLICE_MM / spacing[0]
    count = int(np.floor((n - 1) / slice_step)) + 1
    row_step = pixel_mm / spacing[1]
    col_step = pixel_mm / spacing[2]
    centre_row, centre_col = centre if centre is not None else ((rows - 1) / 2.0, (cols - 1) / 2.0)
    row0 = centre_row - (shape[0] - 1) / 2.0 * row_step
    col0 = centre_col - (shape[1] - 1) / 2.0 * col_step
    # In-plane first (on the original slices), then along z: both are linear and separable,
    # and the in-plane step shrinks the data before slices are interpolated.
    stack = np.asarray(pixels, dtype=np.float32)
    sigma = (0.0, max(0.0, (row_step - 1.0) / 2.0), max(0.0, (col_step - 1.0) / 2.0))
    if sigma[1] > 0.1 or sigma[2] > 0.1:
        # Pre-smooth before downsampling so thin structures do not alias away.
        stack = ndimage.gaussian_filter(stack, sigma=sigma, mode="nearest")
    plane = ndimage.affine_transform(
        stack,
        matrix=np.array([1.0, row_step, col_step]),
        offset=(0.0, row0, col0),
        output_shape=(n, *shape),
        order=1,
        mode="constant",
        cval=HU_MIN,
        prefilter=False,
    )
    out = resample_slices(plane, np.arange(count) * slice_step)
    return Canvas(
        pixels=window(out),
        slice_step=slice_step,
        row0=row0,
        row_step=row_step,
        col0=col0,
        col_step=col_step,
    )


def zoomed_canvas(pixels: np.ndarray, spacing: tuple[float, float, float], canvas: Canvas, zoom: float) -> Canvas | None:
    """The body's part of the volume at ``CANVAS_MM / zoom`` pixels, for the detector's zoomed pass.

    The same slices as ``canvas``; in the plane, the box around whatever is denser than -500 HU on
    any of them (the body), at least one detector tile (``CANVAS_SIZE``) on each side and a whole
    number of heatmap cells. None when there is no body. Its tiles: ``tile_starts``.
    """
    body = (canvas.pixels > window(np.array(-500.0))).any(axis=0)
    if not body.any():
        return None
    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    _, r0, c0 = canvas.to_volume(0, rows[0], cols[0])
    _, r1, c1 = canvas.to_volume(0, rows[-1], cols[-1])

    def side(extent: int) -> int:
        n = max(CANVAS_SIZE, int(np.ceil(extent * zoom)))
        return n + (-n) % HEATMAP_STRIDE

    shape = (side(rows[-1] - rows[0] + 1), side(cols[-1] - cols[0] + 1))
    return make_canvas(pixels, spacing, pixel_mm=CANVAS_MM / zoom, shape=shape, centre=((r0 + r1) / 2.0, (c0 + c1) / 2.0))


def tile_starts(length: int, *, overlap: int = CANVAS_SIZE // 4) -> list[int]:
    """First pixels of the detector tiles (``CANVAS_SIZE`` wide) that cover ``length`` pixels,
    neighbours overlapping by at least ``overlap`` so a lesion at a seam has context in one of them."""
    if length <= CANVAS_SIZE:
        return [0]
    count = 1 + int(np.ceil((length - CANVAS_SIZE) / (CANVAS_SIZE - overlap)))
    starts = np.linspace(0, length - CANVAS_SIZE, count)
    return sorted({int(round(x / HEATMAP_STRIDE)) * HEATMAP_STRIDE for x in starts})


def ssbr_inputs(canvas: Canvas, *, view: float = SSBR_VIEW) -> np.ndarray:
    """Body-part regressor input, (N,1,64,64): every canvas slice block-averaged to SSBR_SIZE,
    then its middle ``view`` (a fraction of the side) resized back to SSBR_SIZE (``centre_view``).

    The regressor trains on random crops of 0.6-1.0 of the slice resized back (node.training), so
    the node shows it the middle of that range; training reads the whole slice (``view`` 1.0),
    which it crops itself."""
    f = CANVAS_SIZE // SSBR_SIZE
    n = canvas.pixels.shape[0]
    small = canvas.pixels.reshape(n, SSBR_SIZE, f, SSBR_SIZE, f).mean(axis=(2, 4))
    return centre_view(small, view)[:, None].astype(np.float32)


def centre_view(images: np.ndarray, view: float) -> np.ndarray:
    """The middle ``view`` of each (..., S, S) image, resized back to S x S by bilinear
    interpolation at pixel centres (torch's ``interpolate(mode="bilinear", align_corners=False)``,
    which the body-part regressor's training crops use)."""
    if not 0.0 < view <= 1.0:
        raise ValueError(f"view: a fraction of the side in (0, 1], got {view}")
    size = images.shape[-1]
    side = max(1, int(round(size * view)))
    if side == size:
        return images
    start = (size - side) // 2
    crop = images[..., start : start + side, start : start + side]
    factors = (1.0,) * (images.ndim - 2) + (size / side,) * 2
    return ndimage.zoom(crop, factors, order=1, mode="nearest", grid_mode=True, prefilter=False)


def detector_offsets() -> np.ndarray:
    """Canvas-slice offsets of the 9 detector channels: groups (k-4..k-2), (k-1..k+1), (k+2..k+4)."""
    return np.arange(-(DETECTOR_CHANNELS // 2), DETECTOR_CHANNELS // 2 + 1)


def detector_inputs(canvas: Canvas, keys: np.ndarray) -> np.ndarray:
    """Detector input for canvas key slices ``keys``: (len(keys), 9, CANVAS_SIZE, CANVAS_SIZE)."""
    n = canvas.pixels.shape[0]
    idx = np.clip(np.asarray(keys)[:, None] + detector_offsets()[None, :], 0, n - 1)
    return canvas.pixels[idx].astype(np.float32, copy=False)


def crop_geometry(box_mm: float) -> float:
    """Side in mm of the segmenter's square crop around a lesion whose larger box side is ``box_mm``.

    The seed pads 50 mm around the box; the segmenter's crops are 2x the box, at least 32 mm, so
    small lesions keep enough pixels on the 64-pixel crop (the embedder's: ``embed_crop_side``).
    """
    return float(np.clip(2.0 * box_mm, 32.0, 256.0))


EMBED_PAD_MM = 50.0  # embedder crop: context around the lesion box, the seed's padding


def embed_crop_side(box_mm: float) -> float:
    """Side in mm of the embedder's square crop around a lesion whose larger box side is ``box_mm``.

    The seed's: the box padded by EMBED_PAD_MM on each side, so the crop shows the organ and
    vessels around the lesion, which tell its type where the lesion alone does not (a bone lesion
    from a kidney cyst, a lymph node from its neighbours); at most 256 mm.
    """
    return float(np.clip(box_mm + 2.0 * EMBED_PAD_MM, 32.0, 256.0))


def lesion_crop(
    pixels: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    slice_: float,
    center_rc: tuple[float, float],
    side_mm: float,
    size: int = CROP_SIZE,
) -> np.ndarray:
    """Crop 3 slices at ``slice_`` - 2 mm, ``slice_``, + 2 mm around ``center_rc`` (rows, cols).

    Returns a (3, size, size) float32 array windowed to 0..255, ``side_mm`` wide.
    """
    if side_mm <= 0:
        raise ValueError(f"side_mm: must be positive, got {side_mm}")
    n, rows, cols = pixels.shape
    step = SLICE_MM / spacing[0]
    zs = np.array([slice_ - step, slice_, slice_ + step])
    px = side_mm / size
    offsets = (np.arange(size) - (size - 1) / 2.0) * px
    rr = center_rc[0] + offsets / spacing[1]
    cc = center_rc[1] + offsets / spacing[2]
    z_lo = int(np.clip(np.floor(zs.min()), 0, n - 1))
    z_hi = int(np.clip(np.ceil(zs.max()), 0, n - 1)) + 1
    r_lo = int(np.clip(np.floor(rr[0]) - 1, 0, rows - 1))
    r_hi = int(np.clip(np.ceil(rr[-1]) + 2, 1, rows))
    c_lo = int(np.clip(np.floor(cc[0]) - 1, 0, cols - 1))
    c_hi = int(np.clip(np.ceil(cc[-1]) + 2, 1, cols))
    sub = np.asarray(pixels[z_lo:z_hi, r_lo:r_hi, c_lo:c_hi], dtype=np.float32)
    grid_z = np.clip(zs, 0, n - 1) - z_lo
    coords = np.empty((3, 3, size, size), dtype=np.float32)
    coords[0] = grid_z[:, None, None]
    coords[1] = (rr - r_lo)[None, :, None]
    coords[2] = (cc - c_lo)[None, None, :]
    inside = (
        (rr >= -0.5)[None, :, None] & (rr <= rows - 0.5)[None, :, None]
        & (cc >= -0.5)[None, None, :] & (cc <= cols - 0.5)[None, None, :]
    )
    sigma = max(0.0, (px / min(spacing[1:]) - 1.0) / 2.0)
    if sigma > 0.1:
        sub = ndimage.gaussian_filter(sub, sigma=(0.0, sigma, sigma), mode="nearest")
    out = ndimage.map_coordinates(sub, coords.reshape(3, -1), order=1, mode="nearest", prefilter=False)
    out = out.reshape(3, size, size)
    out = np.where(inside, out, HU_MIN)
    return window(out)
