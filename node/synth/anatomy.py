"""A patient's anatomy as z-keyframed elliptic solids in the body frame.

Body frame: x to the patient's left, y posterior, z superior (mm), x = 0 on the midline,
y = 0 at the body's centre, z = 0 at the top of the pubic symphysis. Every structure is a stack
of ellipses whose centre, semi-axes and HU are interpolated along z; ribs and lung vessels are
drawn by the renderer from the parameters kept here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from node.synth.truth import ORGAN_LABELS

HuFunction = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Solid:
    """A structure: ellipses keyframed along z, painted with ``hu`` and labelled ``label``.

    ``hu_fn(z, thickness)``, when given, returns the HU of each slice (e.g. discs between
    vertebrae) instead of the constant ``hu``. ``within`` restricts painting to voxels already
    labelled with that organ (vessels inside the lungs).
    """

    name: str
    label: int
    hu: float
    z: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: float = 0.0
    hu_fn: HuFunction | None = None
    within: int = 0
    paint_label: bool = True

    @property
    def z_range(self) -> tuple[float, float]:
        return float(self.z[0]), float(self.z[-1])

    def section(self, z: float | np.ndarray) -> tuple[np.ndarray, ...]:
        """Centre and semi-axes at body ``z`` (zero semi-axes outside the solid)."""
        zz = np.asarray(z, dtype=np.float64)
        inside = (zz >= self.z[0]) & (zz <= self.z[-1])
        return (
            np.interp(zz, self.z, self.cx),
            np.interp(zz, self.z, self.cy),
            np.where(inside, np.interp(zz, self.z, self.a), 0.0),
            np.where(inside, np.interp(zz, self.z, self.b), 0.0),
        )

    def contains(self, point: tuple[float, float, float], margin: float = 0.0) -> bool:
        """Whether body ``point`` (x, y, z) lies within the solid grown by ``margin`` mm in the
        axial plane (and along z)."""
        x, y, z = point
        z0, z1 = self.z_range
        if not z0 - margin <= z <= z1 + margin:
            return False
        cx, cy, a, b = (float(v) for v in self.section(float(np.clip(z, z0, z1))))
        if a <= 0 or b <= 0:
            return False
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        u = (x - cx) * ca + (y - cy) * sa
        v = -(x - cx) * sa + (y - cy) * ca
        return (u / (a + margin)) ** 2 + (v / (b + margin)) ** 2 <= 1.0


def tube(name: str, label: str, hu: float, z, cx, cy, a, b=None, **kw) -> Solid:
    z = np.asarray(z, dtype=np.float64)
    order = np.argsort(z)

    def arr(v):
        v = np.broadcast_to(np.asarray(v, dtype=np.float64), z.shape)
        return v[order].copy()

    return Solid(
        name=name,
        label=ORGAN_LABELS[label],
        hu=hu,
        z=z[order],
        cx=arr(cx),
        cy=arr(cy),
        a=arr(a),
        b=arr(a if b is None else b),
        **kw,
    )


def ellipsoid(
    name: str, label: str, hu: float, center, semi, *, angle: float = 0.0, n: int = 11, **kw
) -> Solid:
    """An ellipsoid (axes along x, y, z, then turned by ``angle`` in the axial plane)."""
    t = np.linspace(-1.0, 1.0, n)
    prof = np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0))
    prof[0] = prof[-1] = 0.02
    return tube(
        name,
        label,
        hu,
        center[2] + t * semi[2],
        center[0],
        center[1],
        semi[0] * prof,
        semi[1] * prof,
        angle=angle,
        **kw,
    )


@dataclass(frozen=True, kw_only=True)
class Segment:
    """A straight vessel from ``p0`` to ``p1`` (body mm) with radius ``r0`` tapering to ``r1``."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r0: float
    r1: float
    hu: float
    within: int


@dataclass(frozen=True, kw_only=True)
class Anatomy:
    """One patient's body: solids in paint order, vessels, ribs and landmarks (body mm)."""

    solids: list[Solid]
    vessels: list[Segment]
    landmarks: dict[str, float]
    body: Solid
    rib_band: tuple[float, float]
    rib_period: float
    rib_drop: float
    rib_z: tuple[float, float]
    named: dict[str, Solid] = field(default_factory=dict)
    sex: str = "F"


def _disc_hu(z0: float, period: float, disc: float, body_hu: float, disc_hu: float) -> HuFunction:
    def fn(z: np.ndarray, thickness: float) -> np.ndarray:
        offsets = np.linspace(-0.5, 0.5, 5) * thickness
        phase = np.mod((z[:, None] + offsets[None, :] - z0), period) / period
        frac = (phase < disc / period).mean(axis=1)
        return body_hu + frac * (disc_hu - body_hu)

    return fn


def build_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy: size, habitus, organ sizes and positions differ per patient."""
    sz = rng.uniform(0.88, 1.12)  # height
    sw = rng.uniform(0.82, 1.22)  # width
    sd = sw * rng.uniform(0.9, 1.1)  # depth
    fat = rng.uniform(6.0, 38.0) * (sw / 1.0)  # subcutaneous fat thickness, mm
    muscle = rng.uniform(8.0, 16.0)
    sex = "M" if rng.random() < 0.5 else "F"

    z_sym = 0.0
    z_crest = 180.0 * sz
    z_kid = 275.0 * sz
    z_dr = 440.0 * sz + rng.uniform(-15, 15)  # right diaphragm dome
    z_dl = z_dr - rng.uniform(5, 25)
    z_carina = 610.0 * sz
    z_apex = 700.0 * sz
    z_top = z_apex + 40.0

    # Body outline: half-width a and half-depth b along z.
    kz = np.array([-80.0, z_sym, z_crest, z_kid, z_dr - 20, z_carina, z_apex, z_top])
    ka = np.array([175, 180, 165, 158, 160, 168, 155, 70.0]) * sw
    kb = np.array([110, 112, 112, 118, 118, 112, 98, 60.0]) * sd
    kb = kb + np.array([0, 0, 1, 1, 0.5, 0, 0, 0]) * (fat - 20.0) * 0.8  # belly
    body = tube("body", "skin", 20.0, kz, 0.0, 0.0, ka, kb)
    int_s = tube(
        "x",
        "skin",
        0.0,
        kz,
        0.0,
        0.0,
        np.maximum(ka - 2.0 - fat - muscle, 5),
        np.maximum(kb - 2.0 - fat - muscle, 5),
    )
    # Skin, subcutaneous fat, muscle wall and visceral fat are drawn by depth under the skin.
    solids: list[Solid] = []
    ai = lambda z: float(np.interp(z, kz, int_s.a))  # noqa: E731
    bi = lambda z: float(np.interp(z, kz, int_s.b))  # noqa: E731

    # Spine: y position follows lordosis / kyphosis.
    spz = np.array([-20.0, 60, 150, z_crest + 40, z_kid, z_dr, z_carina, z_apex, z_top])
    spy = np.array([0.55, 0.62, 0.55, 0.42, 0.40, 0.50, 0.55, 0.45, 0.2]) * np.interp(spz, kz, kb)
    spr = np.array([30, 32, 28, 24, 22, 19, 16, 14, 10.0]) * np.sqrt(sw)
    vperiod = 34.0 * sz
    named: dict[str, Solid] = {}

    # Muscles around the spine and psoas.
    for side in (-1, 1):
        solids.append(
            tube(
                "paraspinal",
                "muscle",
                52.0,
                spz[2:],
                side * spr[2:] * 1.5,
                spy[2:] + spr[2:] * 1.6,
                spr[2:] * 1.1,
                spr[2:] * 1.2,
            )
        )
        solids.append(
            tube(
                "psoas",
                "muscle",
                50.0,
                [40, 120, 200, z_kid + 40],
                side * np.array([70, 62, 48, 32]),
                np.array([0.1, 0.15, 0.28, 0.3]) * kb[2],
                [24, 22, 18, 8],
                [24, 22, 18, 8],
            )
        )

    # Lungs.
    lung_hu = rng.uniform(-880, -830)
    for side, zd in ((-1, z_dr), (1, z_dl)):
        lz = np.array([zd - 45, zd - 10, zd + 40, z_carina, z_apex - 20, z_apex + 5])
        la = np.array([0.12, 0.30, 0.42, 0.44, 0.32, 0.12])
        lb = np.array([0.25, 0.62, 0.78, 0.75, 0.55, 0.25])
        ly = np.array([0.55, 0.3, 0.08, 0.02, 0.05, 0.1])
        lx = np.array([0.55, 0.52, 0.50, 0.48, 0.45, 0.40])
        aa = np.array([ai(z) for z in lz])
        bb = np.array([bi(z) for z in lz])
        lung = tube("lung", "lung", lung_hu, lz, side * lx * aa, ly * bb, la * aa * 1.05, lb * bb)
        solids.append(lung)
        named["lung_right" if side < 0 else "lung_left"] = lung

    med = tube(
        "mediastinum",
        "mediastinum",
        -70.0,
        [z_dl + 20, z_carina, z_apex],
        [8, 0, 0],
        [-0.2 * bi(z_dl), -0.05 * bi(z_carina), 0.1 * bi(z_apex)],
        [0.24 * ai(z_dl), 0.2 * ai(z_carina), 0.14 * ai(z_apex)],
        [0.7 * bi(z_dl), 0.6 * bi(z_carina), 0.4 * bi(z_apex)],
    )
    solids.append(med)
    named["mediastinum"] = med
    trachea = tube(
        "airway",
        "airway",
        -1000.0,
        [z_carina - 10, z_carina, z_top],
        [0, 0, 0],
        [0.0, -0.1 * bi(z_carina), -0.2 * bi(z_apex)],
        [14, 9, 9],
        [9, 9, 9],
    )
    solids.append(trachea)
    named["trachea"] = trachea
    heart_c = (22.0 * sw, -0.25 * bi(z_dl + 70), z_dl + 55 * sz)
    heart_s = (62.0 * sw, 50.0 * sd, 68.0 * sz)
    solids.append(ellipsoid("heart", "heart", 95.0, heart_c, heart_s, angle=-0.5))
    solids.append(
        ellipsoid(
            "heart_blood",
            "heart",
            150.0,
            (heart_c[0] + 5, heart_c[1], heart_c[2] + 5),
            tuple(0.72 * s for s in heart_s),
            angle=-0.5,
        )
    )
    named["heart"] = solids[-2]

    # Aorta and vena cava.
    ao_y = (
        np.interp([150, z_kid, z_dr, z_carina], spz, spy)
        - np.interp([150, z_kid, z_dr, z_carina], spz, spr)
        - 14
    )
    aorta = tube(
        "aorta",
        "aorta",
        165.0,
        [150.0, z_kid, z_dr, z_carina + 15],
        [5, 15, 20, 22],
        ao_y,
        [9, 10, 12, 13],
    )
    solids.append(aorta)
    solids.append(
        tube(
            "aorta_asc",
            "aorta",
            165.0,
            [heart_c[2] + 40, z_carina + 15],
            [12, 4],
            [heart_c[1] - 10, -0.25 * bi(z_carina)],
            [15, 14],
        )
    )
    named["aorta"] = aorta
    solids.append(
        tube(
            "ivc",
            "vessel",
            120.0,
            [150.0, z_kid, z_dr - 30, z_dr + 10],
            [-22, -25, -30, -20],
            ao_y[:3].tolist() + [ao_y[2] - 20],
            [11, 12, 13, 13],
            [9, 10, 11, 12],
        )
    )
    for side in (-1, 1):
        solids.append(
            tube(
                "iliac",
                "vessel",
                150.0,
                [0, 60, 150],
                side * np.array([75, 58, 12]),
                [0.05 * kb[1], 0.25 * kb[1], ao_y[0]],
                [7, 7, 7],
            )
        )

    # Abdominal organs.
    liver_c = (-0.38 * ai(z_dr), -0.05 * bi(z_dr), z_dr - 75 * sz)
    liver_s = (
        0.56 * ai(z_dr) * rng.uniform(0.9, 1.1),
        0.78 * bi(z_dr),
        95 * sz * rng.uniform(0.9, 1.15),
    )
    liver = ellipsoid("liver", "liver", rng.uniform(95, 115), liver_c, liver_s, angle=0.25)
    solids.append(liver)
    solids.append(
        ellipsoid(
            "liver_left",
            "liver",
            liver.hu,
            (0.12 * ai(z_dr), -0.45 * bi(z_dr), z_dr - 50 * sz),
            (0.35 * ai(z_dr), 0.28 * bi(z_dr), 45 * sz),
            angle=0.4,
        )
    )
    named["liver"] = liver
    spleen = ellipsoid(
        "spleen",
        "spleen",
        rng.uniform(105, 125),
        (0.6 * ai(z_dl), 0.45 * bi(z_dl), z_dl - 70 * sz),
        (32, 55 * rng.uniform(0.8, 1.3), 55 * sz),
        angle=-0.7,
    )
    solids.append(spleen)
    stomach_c = (0.3 * ai(z_dl), -0.25 * bi(z_dl), z_dl - 60 * sz)
    solids.append(ellipsoid("stomach", "stomach", 55.0, stomach_c, (55, 38, 50), angle=0.5))
    solids.append(
        ellipsoid(
            "stomach_lumen",
            "stomach",
            rng.choice([15.0, -900.0]),
            (stomach_c[0], stomach_c[1] - 8, stomach_c[2] + 10),
            (45, 25, 35),
            angle=0.5,
        )
    )
    for side, dz in ((-1, -15.0), (1, 0.0)):
        kc = (side * 0.42 * ai(z_kid), 0.45 * bi(z_kid), z_kid + dz * sz)
        kid = ellipsoid("kidney", "kidney", 175.0, kc, (27, 32, 55 * sz), angle=side * 0.45)
        solids.append(kid)
        solids.append(
            ellipsoid(
                "kidney_sinus",
                "kidney",
                -30.0,
                (kc[0] - side * 10, kc[1] - 6, kc[2]),
                (8, 12, 25 * sz),
                angle=side * 0.45,
            )
        )
        named["kidney_right" if side < 0 else "kidney_left"] = kid
    solids.append(
        ellipsoid(
            "pancreas",
            "pancreas",
            95.0,
            (15, ao_y[1] - 40, z_kid + 45 * sz),
            (75 * sw, 14, 18),
            angle=-0.25,
        )
    )

    # Bowel: colon frame, rectum and random small-bowel loops.
    wall = 70.0
    zc0, zc1 = 150.0 * sz, z_kid + 30 * sz
    for side in (-1, 1):
        solids.append(
            tube(
                "colon",
                "bowel",
                wall,
                [zc0, zc1],
                side * 0.72 * ai(z_kid),
                [0.0, -0.1 * bi(z_kid)],
                [24, 24],
            )
        )
        solids.append(
            tube(
                "colon_lumen",
                "bowel",
                -880.0,
                [zc0 + 5, zc1 - 5],
                side * 0.72 * ai(z_kid),
                [0.0, -0.1 * bi(z_kid)],
                [19, 19],
            )
        )
    solids.append(
        ellipsoid("colon", "bowel", wall, (0, -0.55 * bi(z_kid), zc1), (0.65 * ai(z_kid), 22, 24))
    )
    solids.append(
        ellipsoid(
            "colon_lumen", "bowel", -880.0, (0, -0.55 * bi(z_kid), zc1), (0.6 * ai(z_kid), 17, 19)
        )
    )
    solids.append(
        tube("rectum", "bowel", 45.0, [20, 130], [0, 5], [0.55 * kb[1], 0.45 * kb[2]], [22, 18])
    )
    for _ in range(int(rng.integers(8, 16))):
        c = (
            rng.uniform(-0.45, 0.45) * ai(z_kid),
            rng.uniform(-0.6, 0.0) * bi(z_kid),
            rng.uniform(90, z_kid - 20),
        )
        r = rng.uniform(11, 19)
        solids.append(
            ellipsoid(
                "bowel",
                "bowel",
                wall,
                c,
                (r, r * rng.uniform(0.7, 1.0), r * 1.6),
                angle=rng.uniform(0, np.pi),
            )
        )
        solids.append(
            ellipsoid(
                "bowel_lumen",
                "bowel",
                float(rng.choice([20.0, -900.0, 220.0], p=[0.6, 0.2, 0.2])),
                c,
                (r - 3, r * 0.85 - 3, r * 1.6 - 3),
                angle=0.0,
            )
        )
    fill = rng.uniform(0.6, 1.2)
    solids.append(
        ellipsoid(
            "bladder", "bladder", 8.0, (0, -0.25 * kb[1], 45.0), (42 * fill, 36 * fill, 38 * fill)
        )
    )

    # Skeleton.
    disc = _disc_hu(z_sym + 200.0, vperiod, 8.0 * sz, 240.0, 85.0)
    solids.append(tube("spine", "spine", 620.0, spz, 0.0, spy, spr, spr * 0.9))
    named["spine"] = Solid(
        name="spine",
        label=ORGAN_LABELS["spine"],
        hu=230.0,
        z=spz,
        cx=np.zeros_like(spz),
        cy=spy,
        a=spr - 3.0,
        b=spr * 0.9 - 3.0,
        hu_fn=disc,
    )
    solids.append(named["spine"])
    solids.append(
        tube(
            "spinal_canal",
            "spinal_canal",
            20.0,
            spz[2:],
            0.0,
            spy[2:] + spr[2:] * 0.9 + 9,
            9.0,
            8.0,
        )
    )
    solids.append(
        tube(
            "spinous",
            "spine",
            520.0,
            spz[2:],
            0.0,
            spy[2:] + spr[2:] * 0.9 + 27,
            6.0,
            11.0,
            hu_fn=_disc_hu(z_sym + 200.0 + vperiod / 2, vperiod, vperiod * 0.45, 520.0, 60.0),
        )
    )
    solids.append(
        tube(
            "sacrum",
            "pelvis",
            450.0,
            [30, 90, 160],
            0.0,
            [0.7 * kb[1], 0.62 * kb[1], spy[2] + 10],
            [30, 48, 38],
            [14, 18, 16],
        )
    )
    for side in (-1, 1):
        solids.append(
            tube(
                "ilium",
                "pelvis",
                560.0,
                [60, 110, z_crest],
                side * np.array([0.5, 0.6, 0.62]) * ka[1],
                np.array([0.2, 0.3, 0.35]) * kb[1],
                [14, 12, 8],
                [38, 60, 45],
                angle=side * 0.65,
            )
        )
        solids.append(
            tube(
                "ilium_marrow",
                "pelvis",
                240.0,
                [62, 110, z_crest - 4],
                side * np.array([0.5, 0.6, 0.62]) * ka[1],
                np.array([0.2, 0.3, 0.35]) * kb[1],
                [9, 7, 4],
                [32, 54, 40],
                angle=side * 0.65,
            )
        )
        fh = (side * 0.48 * ka[1], 0.0, 25.0)
        solids.append(
            tube(
                "femur",
                "femur",
                600.0,
                [-80, -20, fh[2] - 20, fh[2] + 22],
                side * np.array([0.62, 0.6, 0.52, 0.48]) * ka[1],
                0.0,
                [15, 16, 24, 8],
                [15, 16, 24, 8],
            )
        )
        solids.append(
            tube(
                "femur_marrow",
                "femur",
                220.0,
                [-80, -20, fh[2] - 20, fh[2] + 18],
                side * np.array([0.62, 0.6, 0.52, 0.48]) * ka[1],
                0.0,
                [9, 11, 20, 5],
                [9, 11, 20, 5],
            )
        )
        solids.append(
            tube(
                "pubis",
                "pelvis",
                500.0,
                [-25, 5],
                side * np.array([0.2, 0.12]) * ka[1],
                -0.55 * kb[1],
                [20, 14],
                [12, 10],
                angle=side * 0.5,
            )
        )
    solids.append(
        tube(
            "sternum",
            "sternum",
            420.0,
            [heart_c[2], z_apex - 40],
            0.0,
            [-bi(heart_c[2]) + 4, -bi(z_apex - 40) + 4],
            [14, 18],
            [6, 7],
        )
    )

    # Vessels in the lungs and liver: branching straight segments from the hila.
    vessels: list[Segment] = []
    for key in ("lung_right", "lung_left"):
        lung = named[key]
        hilum = (float(np.sign(lung.cx[2])) * 45.0, -0.05 * bi(z_carina), z_carina - 60.0)
        for _ in range(55):
            z = rng.uniform(lung.z[0] + 25, lung.z[-1] - 15)
            cx, cy, a, b = (float(v) for v in lung.section(z))
            ang = rng.uniform(0, 2 * np.pi)
            end = (cx + 0.85 * a * np.cos(ang), cy + 0.85 * b * np.sin(ang), z)
            mid = tuple(
                h + (e - h) * rng.uniform(0.3, 0.6) for h, e in zip(hilum, end, strict=True)
            )
            vessels.append(
                Segment(p0=hilum, p1=mid, r0=4.5, r1=3.0, hu=90.0, within=ORGAN_LABELS["lung"])
            )
            vessels.append(
                Segment(p0=mid, p1=end, r0=2.6, r1=0.8, hu=70.0, within=ORGAN_LABELS["lung"])
            )
    porta = (liver_c[0] + 25, liver_c[1] + 10, liver_c[2] - 10)
    for _ in range(14):
        end = tuple(c + s * rng.uniform(-0.7, 0.7) for c, s in zip(liver_c, liver_s, strict=True))
        vessels.append(
            Segment(
                p0=porta, p1=end, r0=5.0, r1=1.5, hu=liver.hu + 55.0, within=ORGAN_LABELS["liver"]
            )
        )

    landmarks = {
        "symphysis": z_sym,
        "iliac_crest": z_crest,
        "kidney": z_kid,
        "diaphragm_right": z_dr,
        "diaphragm_left": z_dl,
        "carina": z_carina,
        "lung_apex": z_apex,
        "body_top": z_top,
        "body_bottom": -80.0,
        "fat_mm": fat,
        "muscle_mm": muscle,
    }
    return Anatomy(
        solids=solids,
        vessels=vessels,
        landmarks=landmarks,
        body=body,
        rib_band=(2.0 + fat + 0.2 * muscle, 2.0 + fat + muscle + 4.0),
        rib_period=vperiod,
        rib_drop=60.0 * sz,
        rib_z=(z_dl - 80.0 * sz, z_apex),
        named=named,
        sex=sex,
    )


def region_ranges(anatomy: Anatomy) -> dict[str, tuple[float, float]]:
    """Body-frame z-range of each body region."""
    lm = anatomy.landmarks
    return {
        "pelvis": (lm["body_bottom"], lm["iliac_crest"]),
        "abdomen": (lm["iliac_crest"], lm["diaphragm_right"]),
        "chest": (lm["diaphragm_right"], lm["lung_apex"]),
    }
