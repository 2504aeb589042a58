"""Render a synthetic CT study of one patient at one timepoint, with its ground truth.

Everything is deterministic in (cohort_seed, patient_seed, timepoint): the anatomy and the
lesion tracks depend on the patient only; pose, scan and noise on the timepoint too.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, replace

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage
from scipy.spatial import ConvexHull

from node.synth.anatomy import Anatomy, Solid, build_anatomy, region_ranges
from node.synth.lesions import COHORT_VERSION, LesionTrack, draw_tracks
from node.synth.truth import ORGAN_LABELS, LesionTruth, SynthStudy

logger = logging.getLogger(__name__)

COVERAGES = ("chest", "abdomen", "abdomen_pelvis", "chest_abdomen", "chest_abdomen_pelvis")
THICKNESSES = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)


@dataclass(frozen=True, kw_only=True)
class ScanParams:
    """How the synthetic scanner acquires and reconstructs the study.

    Parameters
    ----------
    rows, columns:
        matrix size.
    pixel_spacing:
        in-plane pixel size in mm (square pixels); the field of view is ``columns * pixel_spacing``.
    slice_thickness:
        reconstructed thickness in mm; ``slice_spacing`` defaults to it.
    coverage:
        one of ``COVERAGES``; the scanned z-range follows the patient's landmarks.
    num_slices:
        fixes the number of slices (centred on the coverage) instead of deriving it.
    fov_center:
        reconstruction centre (x, y) in patient mm.
    noise_hu:
        standard deviation of the noise at 2.5 mm for an average patient.
    jitter_mm:
        random change of each end of the scan range.
    """

    rows: int = 512
    columns: int = 512
    pixel_spacing: float = 0.78
    slice_thickness: float = 2.5
    slice_spacing: float | None = None
    coverage: str = "chest_abdomen_pelvis"
    num_slices: int | None = None
    fov_center: tuple[float, float] = (0.0, 0.0)
    noise_hu: float = 12.0
    kvp: float = 120.0
    jitter_mm: float = 15.0

    def __post_init__(self) -> None:
        if self.rows < 16 or self.columns < 16:
            raise ValueError("rows and columns must be at least 16")
        if not 0.05 <= self.pixel_spacing <= 10.0:
            raise ValueError(f"pixel_spacing must be 0.05-10 mm, got {self.pixel_spacing}")
        if not 0.1 <= self.slice_thickness <= 20.0:
            raise ValueError(f"slice_thickness must be 0.1-20 mm, got {self.slice_thickness}")
        if self.slice_spacing is not None and self.slice_spacing <= 0:
            raise ValueError("slice_spacing must be positive")
        if self.coverage not in COVERAGES:
            raise ValueError(
                f"coverage must be one of {', '.join(COVERAGES)}, got {self.coverage!r}"
            )
        if self.num_slices is not None and self.num_slices < 1:
            raise ValueError("num_slices must be at least 1")

    @property
    def spacing_z(self) -> float:
        return self.slice_spacing or self.slice_thickness

    @classmethod
    def small(cls, **changes) -> ScanParams:
        """Fast preset for tests and training: 128x128 at 3.3 mm, 5 mm slices, chest to pelvis."""
        return replace(
            cls(rows=128, columns=128, pixel_spacing=3.3, slice_thickness=5.0, noise_hu=8.0),
            **changes,
        )

    @classmethod
    def full(cls, **changes) -> ScanParams:
        """The benchmark study: 300 slices of 512x512, 2.5 mm, chest to pelvis."""
        return replace(cls(num_slices=300), **changes)

    @classmethod
    def random(
        cls, rng: np.random.Generator, *, small: bool = False, max_slices: int = 400
    ) -> ScanParams:
        """A clinically plausible scan: spacing 0.6-0.98 mm, thickness 0.625-5 mm, varied coverage."""
        coverage = str(rng.choice(COVERAGES, p=[0.2, 0.15, 0.15, 0.15, 0.35]))
        fov_center = (float(rng.uniform(-15, 15)), float(rng.uniform(-25, 25)))
        if small:
            n = int(rng.choice([96, 128, 160]))
            return cls(
                rows=n,
                columns=n,
                pixel_spacing=float(rng.uniform(380, 460)) / n,
                slice_thickness=float(rng.choice([4.0, 5.0])),
                coverage=coverage,
                fov_center=fov_center,
                noise_hu=8.0,
            )
        length = {
            "chest": 330.0,
            "abdomen": 330.0,
            "abdomen_pelvis": 500.0,
            "chest_abdomen": 600.0,
            "chest_abdomen_pelvis": 800.0,
        }[coverage]
        allowed = [t for t in THICKNESSES if length / t <= max_slices] or [5.0]
        return cls(
            pixel_spacing=float(rng.uniform(0.6, 0.98)),
            slice_thickness=float(rng.choice(allowed)),
            coverage=coverage,
            fov_center=fov_center,
            noise_hu=float(rng.uniform(9, 16)),
            kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0])),
        )


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _scan_range(anatomy: Anatomy, coverage: str) -> tuple[float, float]:
    lm = anatomy.landmarks
    lo = {
        "chest": lm["diaphragm_left"] - 50,
        "abdomen": lm["iliac_crest"] - 25,
        "abdomen_pelvis": -35.0,
        "chest_abdomen": lm["iliac_crest"] - 25,
        "chest_abdomen_pelvis": -35.0,
    }[coverage]
    hi = {
        "chest": lm["lung_apex"] + 25,
        "abdomen": lm["diaphragm_right"] + 30,
        "abdomen_pelvis": lm["diaphragm_right"] + 30,
        "chest_abdomen": lm["lung_apex"] + 25,
        "chest_abdomen_pelvis": lm["lung_apex"] + 25,
    }[coverage]
    return lo, hi


class _Canvas:
    """One slice being painted: HU image and organ labels, with body-frame pixel grids."""

    def __init__(self, xb: np.ndarray, yb: np.ndarray, to_pixel, ps: float) -> None:
        self.xb, self.yb, self.to_pixel, self.ps = xb, yb, to_pixel, ps
        self.rows, self.cols = xb.shape
        self.img: np.ndarray = np.empty(xb.shape, np.float32)
        self.lab: np.ndarray = np.empty(xb.shape, np.uint8)

    def box(self, cx: float, cy: float, radius: float) -> tuple[slice, slice] | None:
        c, r = self.to_pixel(cx, cy)
        h = radius / self.ps + 2.0
        r0, r1 = max(0, int(r - h)), min(self.rows, int(r + h) + 2)
        c0, c1 = max(0, int(c - h)), min(self.cols, int(c + h) + 2)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def alpha(self, bb, cx, cy, a, b, angle=0.0, lobes=0, amp=0.0, phase=0.0) -> np.ndarray:
        dx = self.xb[bb] - np.float32(cx)
        dy = self.yb[bb] - np.float32(cy)
        if angle:
            ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
            dx, dy = dx * ca + dy * sa, dy * ca - dx * sa
        u = dx * np.float32(1.0 / a)
        v = dy * np.float32(1.0 / b)
        f = np.sqrt(u * u + v * v)
        if lobes:
            f /= 1.0 + amp * np.cos(lobes * np.arctan2(v, u) + phase)
        scale = np.float32(min(a, b) / self.ps)
        return np.clip(np.float32(0.5) - (f - np.float32(1.0)) * scale, 0.0, 1.0)

    def paint(self, bb, alpha: np.ndarray, hu: float, label: int, within: int = 0) -> None:
        if within:
            alpha = alpha * (self.lab[bb] == within)
        sub = self.img[bb]
        sub += alpha * (np.float32(hu) - sub)
        if label:
            self.lab[bb][alpha > 0.5] = label


def _layer_lut(
    lm: dict[str, float], ps: float, step: float = 0.25
) -> tuple[np.ndarray, np.ndarray, float]:
    """HU and label by depth under the skin (mm), with partial-volume ramps one pixel wide."""
    depth = np.arange(-20.0, 260.0, step)
    edges = [0.0, 2.0, 2.0 + lm["fat_mm"], 2.0 + lm["fat_mm"] + lm["muscle_mm"]]
    hus = [-1000.0, 25.0, -105.0, 52.0, -92.0]
    labels = [
        0,
        ORGAN_LABELS["skin"],
        ORGAN_LABELS["subcutaneous_fat"],
        ORGAN_LABELS["muscle"],
        ORGAN_LABELS["visceral_fat"],
    ]
    hu = np.full(depth.shape, hus[0])
    lab = np.zeros(depth.shape, np.uint8)
    for e, h0, h1, lb in zip(edges, hus[:-1], hus[1:], labels[1:], strict=True):
        hu += (h1 - h0) * np.clip(0.5 + (depth - e) / max(ps, 0.5), 0.0, 1.0)
        lab[depth >= e] = lb
    return hu.astype(np.float32), lab, step


def _recist(mask: np.ndarray, dr: float, dc: float):
    """Long and short axis (mm) and end points (col, row) of a 2-D mask, edge to edge."""
    rows, cols = np.nonzero(mask)
    corners = np.array([(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)])
    pts = (np.stack([cols, rows], 1)[:, None, :] + corners[None]).reshape(-1, 2) * (dc, dr)
    try:
        hull = pts[ConvexHull(pts).vertices]
    except Exception:  # degenerate (collinear) masks: use all corner points
        hull = np.unique(pts, axis=0)
    d = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    i, j = np.unravel_index(np.argmax(d), d.shape)
    p0, p1 = hull[i], hull[j]
    long_mm = float(d[i, j])
    u = (p1 - p0) / long_mm
    n = np.array([-u[1], u[0]])
    centers = np.stack([cols, rows], 1) * (dc, dr)
    t = centers @ u
    s = centers @ n
    step = min(dr, dc)
    bins = np.round((t - t.min()) / step).astype(np.int64)
    nb = int(bins.max()) + 1
    smin = np.full(nb, np.inf)
    smax = np.full(nb, -np.inf)
    np.minimum.at(smin, bins, s)
    np.maximum.at(smax, bins, s)
    half = 0.5 * abs(n[0] * dc) + 0.5 * abs(n[1] * dr)
    ext = np.where(np.isfinite(smin), smax - smin + 2 * half, 0.0)
    k = int(np.argmax(ext))
    tk = t.min() + k * step
    q0 = tk * u + (smin[k] - half) * n
    q1 = tk * u + (smax[k] + half) * n
    short_mm = float(min(ext[k], long_mm))

    def px(p):
        return (float(p[0] / dc), float(p[1] / dr))

    return long_mm, short_mm, (px(p0), px(p1)), (px(q0), px(q1))


def synthesize_study(
    patient_seed: int,
    timepoint: int,
    *,
    scan: ScanParams | None = None,
    cohort_seed: int = 0,
    small: bool = False,
    noise: bool = True,
    max_timepoints: int = 8,
    cohort_version: int | None = None,
) -> SynthStudy:
    """Synthesize one CT study of patient ``patient_seed`` at ``timepoint`` (0 = baseline).

    Parameters
    ----------
    patient_seed:
        selects the patient (anatomy, lesions); PatientID is ``SYN%04d``.
    timepoint:
        0 for the baseline, then one per follow-up; lesions change and the pose differs.
    scan:
        acquisition parameters; drawn at random for the timepoint when ``None``.
    cohort_seed:
        selects the cohort: the same patient seed gives another patient in another cohort.
    small:
        with ``scan=None``, draw a small fast scan (about 128x128, 4-5 mm) instead of a clinical one.
    noise:
        add CT noise (turn off for exact-value tests).
    cohort_version:
        how lesions are placed (``node.synth.lesions.COHORT_VERSION``, the newest, when None); 1
        reproduces the cohort the committed models were trained on.
    """
    if patient_seed < 0:
        raise ValueError(f"patient_seed must be 0 or more, got {patient_seed}")
    if not 0 <= timepoint < max_timepoints:
        raise ValueError(f"timepoint must be in 0..{max_timepoints - 1}, got {timepoint}")
    prng = np.random.default_rng([cohort_seed, patient_seed, 0])
    anatomy = build_anatomy(prng)
    tracks = draw_tracks(
        anatomy, prng, timepoints=max_timepoints, liver_hu=anatomy.named["liver"].hu,
        version=COHORT_VERSION if cohort_version is None else cohort_version,
    )
    birth_offset = int(prng.integers(0, 3650))
    age_years = int(prng.integers(35, 85))
    trng = np.random.default_rng([cohort_seed, patient_seed, 1, timepoint])
    if scan is None:
        scan = ScanParams.random(trng, small=small)

    # Pose: the patient lies differently each time; the table height differs.
    theta = float(np.deg2rad(trng.uniform(-4.0, 4.0)))
    xc = float(trng.uniform(-30, 30))
    yc = float(trng.uniform(-45, 35))
    tz = float(trng.uniform(-900, -300))
    lo, hi = _scan_range(anatomy, scan.coverage)
    lo += trng.uniform(-1, 1) * scan.jitter_mm
    hi += trng.uniform(-1, 1) * scan.jitter_mm
    dz = scan.spacing_z
    n = scan.num_slices or max(1, int((hi - lo) / dz) + 1)
    if scan.num_slices:
        lo = 0.5 * (lo + hi) - 0.5 * (n - 1) * dz
    z0 = round(lo + tz, 3)
    zp = z0 + dz * np.arange(n)
    zb = zp - tz

    ps = scan.pixel_spacing
    R, C = scan.rows, scan.columns
    x0 = scan.fov_center[0] - 0.5 * (C - 1) * ps
    y0 = scan.fov_center[1] - 0.5 * (R - 1) * ps
    affine = np.array([[ps, 0, 0, x0], [0, ps, 0, y0], [0, 0, dz, z0], [0, 0, 0, 1.0]])
    ct, st = np.cos(theta), np.sin(theta)
    xp = (x0 + ps * np.arange(C, dtype=np.float32))[None, :] - np.float32(xc)
    yp = (y0 + ps * np.arange(R, dtype=np.float32))[:, None] - np.float32(yc)
    xb = (np.float32(ct) * xp + np.float32(st) * yp).astype(np.float32)
    yb = (np.float32(ct) * yp - np.float32(st) * xp).astype(np.float32)

    def to_pixel(bx: float, by: float) -> tuple[float, float]:
        px_ = xc + ct * bx - st * by
        py_ = yc + st * bx + ct * by
        return (px_ - x0) / ps, (py_ - y0) / ps

    canvas = _Canvas(xb, yb, to_pixel, ps)
    rho = np.sqrt(xb * xb + yb * yb)
    xb2, yb2 = xb * xb, yb * yb
    ang = np.arctan2(xb, yb)  # 0 = posterior (spine), +-pi = anterior
    hu_lut, lab_lut, lut_step = _layer_lut(anatomy.landmarks, ps)
    lut_off = np.float32(20.0 / lut_step)

    # Table: a curved carbon plate under the patient, fixed in the scanner.
    _, _, _, bb_all = anatomy.body.section(zb)
    table_top = yc + float(bb_all.max()) + 1.0
    tx = x0 + ps * np.arange(C)
    ty = y0 + ps * np.arange(R)
    curve = table_top + 0.0009 * tx**2
    tdist = ty[:, None] - curve[None, :]
    table_alpha = (
        np.clip(0.5 + tdist / ps, 0, 1)
        * np.clip(0.5 + (10.0 - tdist) / ps, 0, 1)
        * (np.abs(tx) < 230)[None, :]
    ).astype(np.float32)
    base_img = np.float32(-1000.0) + table_alpha * np.float32(1000.0 - 250.0)
    base_lab = np.where(table_alpha > 0.5, ORGAN_LABELS["table"], 0).astype(np.uint8)

    # Per-slice section of every solid.
    sections = []
    for solid in anatomy.solids:
        cx, cy, a, b = solid.section(zb)
        hu = solid.hu_fn(zb, scan.slice_thickness) if solid.hu_fn is not None else None
        sections.append((solid, cx, cy, a, b, hu))
    body_a = np.interp(zb, anatomy.body.z, anatomy.body.a)
    body_b = np.interp(zb, anatomy.body.z, anatomy.body.b)
    body_in = (zb >= anatomy.body.z[0]) & (zb <= anatomy.body.z[-1])

    # Lesions present at this timepoint.
    drawn: list[tuple[LesionTrack, float, tuple[float, float, float]]] = []
    for tr in tracks:
        d = tr.diameter_at(timepoint)
        if d <= 0:
            continue
        semi = tuple(0.5 * d * r for r in tr.semi_ratio)
        drawn.append((tr, d, semi))
    alpha_sum = np.zeros(len(drawn) + 1)
    lesion_labels = np.zeros((n, R, C), np.uint16)
    hu_out = np.empty((n, R, C), np.int16)
    organ_out = np.empty((n, R, C), np.uint8)

    # Noise bank: correlated noise windows picked at random offsets.
    pad = 32
    bank = trng.standard_normal((3, R + pad, C + pad), dtype=np.float32)
    bank = 0.5 * bank + ndimage.uniform_filter(bank, size=(1, 3, 3)) * 2.2
    bank /= bank.std()
    size_factor = float(
        np.clip(np.mean(body_a[body_in]) / 160.0 if body_in.any() else 1.0, 0.7, 1.5)
    )
    sigma = np.float32(scan.noise_hu * size_factor * np.sqrt(2.5 / scan.slice_thickness))
    offs = trng.integers(0, pad, size=(n, 3))

    rib_lo, rib_hi = anatomy.rib_band
    thick = scan.slice_thickness
    for k in range(n):
        z = float(zb[k])
        img, lab = canvas.img, canvas.lab
        img[...] = base_img
        lab[...] = base_lab
        if body_in[k]:
            a, b = float(body_a[k]), float(body_b[k])
            bb = canvas.box(0.0, 0.0, max(a, b) + 4)
            if bb is not None:
                f = np.sqrt(xb2[bb] * np.float32(1 / a**2) + yb2[bb] * np.float32(1 / b**2))
                depth = rho[bb] * (np.float32(1.0) - f) / np.maximum(f, np.float32(1e-3))
                idx = np.clip(
                    depth * np.float32(1 / lut_step) + lut_off, 0, len(hu_lut) - 1
                ).astype(np.intp)
                inside = depth > -3 * ps
                sub = img[bb]
                layer_hu = hu_lut[idx]
                sub[inside] = layer_hu[inside] + table_alpha[bb][inside] * (
                    sub[inside] + 1000.0
                ) * (layer_hu[inside] < -500)
                lab[bb][inside] = np.where(
                    lab_lut[idx][inside] > 0, lab_lut[idx][inside], lab[bb][inside]
                )
                if anatomy.rib_z[0] <= z <= anatomy.rib_z[1]:
                    band = (depth > rib_lo) & (depth < rib_hi)
                    th = ang[bb][band]
                    g = 0.5 * (1.0 - np.cos(th))
                    phase = np.mod((z + anatomy.rib_drop * g) / anatomy.rib_period, 1.0)
                    rib = (phase < 0.32) & (np.abs(th) > 0.3) & (np.abs(th) < 2.7)
                    if rib.any():
                        sel = np.zeros(band.shape, bool)
                        sel[band] = rib
                        sub[sel] = 480.0 + 0.0 * sub[sel]
                        lab[bb][sel] = ORGAN_LABELS["rib"]
        for solid, cx, cy, a, b, hu in sections:
            if a[k] <= 0.0 or b[k] <= 0.0:
                continue
            bb = canvas.box(float(cx[k]), float(cy[k]), float(max(a[k], b[k])))
            if bb is None:
                continue
            al = canvas.alpha(bb, float(cx[k]), float(cy[k]), float(a[k]), float(b[k]), solid.angle)
            canvas.paint(
                bb,
                al,
                float(hu[k]) if hu is not None else solid.hu,
                solid.label if solid.paint_label else 0,
                solid.within,
            )
        for seg in anatomy.vessels:
            za, zc = seg.p0[2], seg.p1[2]
            if not min(za, zc) <= z <= max(za, zc) or za == zc:
                continue
            t = (z - za) / (zc - za)
            vx = seg.p0[0] + t * (seg.p1[0] - seg.p0[0])
            vy = seg.p0[1] + t * (seg.p1[1] - seg.p0[1])
            r = seg.r0 + t * (seg.r1 - seg.r0)
            length = float(np.linalg.norm(np.subtract(seg.p1, seg.p0)))
            stretch = min(3.0, length / max(abs(zc - za), 1e-3))
            bb = canvas.box(vx, vy, r * stretch)
            if bb is None:
                continue
            dirn = np.arctan2(seg.p1[1] - seg.p0[1], seg.p1[0] - seg.p0[0])
            al = canvas.alpha(bb, vx, vy, r * stretch, r, float(dirn))
            canvas.paint(
                bb, al * np.float32(min(1.0, r / max(ps, 1e-3) * 1.2)), seg.hu, 0, seg.within
            )
        for li, (tr, _d, semi) in enumerate(drawn, start=1):
            cz = tr.center[2]
            if abs(z - cz) > semi[2] + thick:
                continue
            bb = canvas.box(tr.center[0], tr.center[1], max(semi[0], semi[1]) * (1 + tr.lobe_amp))
            if bb is None:
                continue
            acc = None
            for s in (-1 / 3, 0.0, 1 / 3):
                zz = z + s * thick
                q = 1.0 - ((zz - cz) / semi[2]) ** 2
                if q <= 0:
                    continue
                sc = float(np.sqrt(q))
                al = canvas.alpha(
                    bb,
                    tr.center[0],
                    tr.center[1],
                    max(semi[0] * sc, 0.05),
                    max(semi[1] * sc, 0.05),
                    tr.angle,
                    tr.lobes,
                    tr.lobe_amp,
                    tr.lobe_phase,
                )
                acc = al if acc is None else acc + al
            if acc is None:
                continue
            acc *= np.float32(1 / 3)
            canvas.paint(bb, acc, tr.hu, 0)
            if tr.core_hu is not None:
                core = canvas.alpha(
                    bb, tr.center[0], tr.center[1], semi[0] * 0.5, semi[1] * 0.5, tr.angle
                )
                canvas.paint(bb, core * min(1.0, acc.max()), tr.core_hu, 0)
            thr = 0.5 * min(1.0, max(0.3, 2 * semi[2] / thick))
            lesion_labels[k][bb][acc >= thr] = li
            alpha_sum[li] += float(acc.sum())
        if noise:
            o = offs[k]
            img += sigma * bank[o[2] % 3, o[0] : o[0] + R, o[1] : o[1] + C]
        np.clip(img, -1024.0, 3071.0, out=img)
        np.rint(img, out=img)
        hu_out[k] = img
        organ_out[k] = lab

    # Measure every lesion that is visible.
    pid = f"SYN{patient_seed:04d}"
    lesions: list[LesionTruth] = []
    relabel = np.zeros(len(drawn) + 1, np.uint16)
    objects = ndimage.find_objects(lesion_labels, max_label=len(drawn))
    voxel = ps * ps * dz
    for li, ((tr, d, _semi), sl) in enumerate(zip(drawn, objects, strict=True), start=1):
        if sl is None:
            continue
        sub = lesion_labels[sl] == li
        counts = sub.sum(axis=(1, 2))
        if counts.max() == 0:
            continue
        kk = int(np.argmax(counts))
        key = sl[0].start + kk
        m2 = sub[kk]
        long_mm, short_mm, lp, sp = _recist(m2, ps, ps)
        r_off, c_off = sl[1].start, sl[2].start
        rows, cols = np.nonzero(m2)
        new = len(lesions) + 1
        relabel[li] = new
        cpx = xc + ct * tr.center[0] - st * tr.center[1]
        cpy = yc + st * tr.center[0] + ct * tr.center[1]
        lesions.append(
            LesionTruth(
                lesion_id=f"{pid}-T{timepoint}-{new:02d}",
                track_id=f"{pid}-L{tr.track:02d}",
                label=new,
                lesion_type=tr.lesion_type,
                site=tr.site,
                appearance=tr.appearance,
                center_patient=(float(cpx), float(cpy), float(tr.center[2] + tz)),
                key_slice=key,
                box=(
                    c_off + cols.min() - 0.5,
                    r_off + rows.min() - 0.5,
                    c_off + cols.max() + 0.5,
                    r_off + rows.max() + 0.5,
                ),
                long_axis_mm=long_mm,
                short_axis_mm=short_mm,
                long_axis_endpoints=(
                    (lp[0][0] + c_off, lp[0][1] + r_off),
                    (lp[1][0] + c_off, lp[1][1] + r_off),
                ),
                short_axis_endpoints=(
                    (sp[0][0] + c_off, sp[0][1] + r_off),
                    (sp[1][0] + c_off, sp[1][1] + r_off),
                ),
                volume_mm3=float(alpha_sum[li] * voxel),
                diameter_mm=d,
                change=tr.change_at(timepoint),
            )
        )
    if len(lesions) != len(drawn) or any(relabel[i] != i for i in range(len(relabel))):
        lesion_labels = relabel[lesion_labels]

    regions = {}
    for name, (rlo, rhi) in region_ranges(anatomy).items():
        a_, b_ = max(rlo + tz, zp[0]), min(rhi + tz, zp[-1])
        if a_ < b_:
            regions[name] = (float(a_), float(b_))

    base = _dt.date(2018, 1, 1) + _dt.timedelta(days=int(patient_seed * 37 % 900))
    study_day = base + _dt.timedelta(
        days=sum(
            int(np.random.default_rng([cohort_seed, patient_seed, 2, t]).integers(60, 120))
            for t in range(timepoint)
        )
    )
    birth = study_day - _dt.timedelta(days=365 * age_years + birth_offset % 365)
    logger.debug(
        "synthesized %s timepoint %d: %d slices, %d lesions", pid, timepoint, n, len(lesions)
    )
    return SynthStudy(
        hu=hu_out,
        affine=affine,
        spacing=(float(dz), float(ps), float(ps)),
        slice_thickness=float(thick),
        lesions=lesions,
        organ_labels=organ_out,
        lesion_labels=lesion_labels,
        regions=regions,
        patient_id=pid,
        patient_name=f"SYNTHETIC^P{patient_seed:04d}",
        patient_sex=anatomy.sex,
        patient_birth_date=birth.strftime("%Y%m%d"),
        study_instance_uid=_uid(cohort_seed, patient_seed, timepoint, "study"),
        series_instance_uid=_uid(cohort_seed, patient_seed, timepoint, "series"),
        frame_of_reference_uid=_uid(cohort_seed, patient_seed, timepoint, "for"),
        study_date=study_day.strftime("%Y%m%d"),
        study_time=f"{8 + patient_seed % 9:02d}{(patient_seed * 7 + timepoint * 13) % 60:02d}00",
        accession_number=f"A{patient_seed:05d}{timepoint:02d}",
        timepoint=timepoint,
        coverage=scan.coverage,
        kvp=scan.kvp,
        table_height_mm=float(table_top),
        pose={
            "rotation_deg": float(np.rad2deg(theta)),
            "shift_x_mm": xc,
            "shift_y_mm": yc,
            "shift_z_mm": tz,
        },
    )


__all__ = ["ScanParams", "synthesize_study", "SynthStudy", "LesionTruth", "Solid"]
