"""Lesion tracks of one patient: where each lesion sits, how it looks and how it changes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from node.lesions.records import LesionType
from node.synth.anatomy import Anatomy

#: Relative frequency of each lesion type (roughly DeepLesion's mix).
TYPE_WEIGHTS: dict[LesionType, float] = {
    LesionType.LUNG: 0.22,
    LesionType.ABDOMEN: 0.14,
    LesionType.MEDIASTINUM: 0.14,
    LesionType.LIVER: 0.16,
    LesionType.PELVIS: 0.08,
    LesionType.SOFT_TISSUE: 0.08,
    LesionType.KIDNEY: 0.08,
    LesionType.BONE: 0.10,
}

CHANGES = ("grow", "shrink", "stable", "disappear")


@dataclass(frozen=True, kw_only=True)
class LesionTrack:
    """One lesion across a patient's studies (body-frame geometry, mm).

    ``diameter_mm`` is the size at ``birth``; later sizes follow ``rate`` per timepoint and the
    lesion is gone from ``gone_at`` on.
    """

    track: int
    lesion_type: LesionType
    site: str
    appearance: str
    center: tuple[float, float, float]
    semi_ratio: tuple[float, float, float]
    angle: float
    lobes: int
    lobe_amp: float
    lobe_phase: float
    hu: float
    core_hu: float | None
    diameter_mm: float
    birth: int
    pattern: str
    rate: float
    gone_at: int | None

    def diameter_at(self, timepoint: int) -> float:
        """Diameter (mm) at ``timepoint``; 0 when not (or no longer) present."""
        if timepoint < self.birth or (self.gone_at is not None and timepoint >= self.gone_at):
            return 0.0
        d = self.diameter_mm * self.rate ** (timepoint - self.birth)
        return float(min(d, 100.0)) if d >= 3.0 else 0.0

    def change_at(self, timepoint: int) -> str:
        if timepoint == self.birth:
            return "baseline" if timepoint == 0 else "new"
        return self.pattern


def _point_in(
    solid, rng: np.random.Generator, *, rmax: float, zmargin: float = 0.2
) -> tuple[float, float, float]:
    z0, z1 = solid.z_range
    span = z1 - z0
    z = rng.uniform(z0 + zmargin * span, z1 - zmargin * span)
    cx, cy, a, b = (float(v) for v in solid.section(z))
    r = rmax * np.sqrt(rng.uniform(0, 1))
    t = rng.uniform(0, 2 * np.pi)
    ca, sa = np.cos(solid.angle), np.sin(solid.angle)
    u, v = r * a * np.cos(t), r * b * np.sin(t)
    return (cx + u * ca - v * sa, cy + u * sa + v * ca, z)


def _node_point(
    kind: LesionType, anatomy: Anatomy, rng: np.random.Generator, d: float
) -> tuple[float, float, float]:
    """Version 3: a mediastinal node anywhere around the trachea, an abdominal one around the
    aorta, a pelvic one around an iliac artery, up to NODE_REACH_MM from the tube's wall (that
    it lands in fat is for _clashes to check)."""
    lm = anatomy.landmarks
    if kind is LesionType.MEDIASTINUM:
        vessel = anatomy.named["trachea"]
        z = min(rng.uniform(lm["carina"] - 50, lm["carina"] + 40), vessel.z_range[1])
    elif kind is LesionType.ABDOMEN:
        vessel = anatomy.named["aorta"]
        z = rng.uniform(lm["iliac_crest"] + 20, lm["kidney"] + 40)
    else:
        side = rng.choice([-1.0, 1.0])
        vessel = next(s for s in anatomy.solids if s.name == "iliac" and np.sign(s.cx[0]) == side)
        z = rng.uniform(40, min(vessel.z_range[1], lm["iliac_crest"] - 50))
    cx, cy, a, b = (float(v) for v in vessel.section(z))
    r = max(a, b) + d / 2 + GAP_MM + rng.uniform(0, NODE_REACH_MM)
    t = rng.uniform(0, 2 * np.pi)
    return (cx + r * np.cos(t), cy + r * np.sin(t), z)


def _site_point(
    kind: LesionType, anatomy: Anatomy, rng: np.random.Generator, d: float, version: int
) -> tuple[tuple[float, float, float], str]:
    n = anatomy.named
    lm = anatomy.landmarks
    if version >= 3 and kind in NODE_TYPES:
        return _node_point(kind, anatomy, rng, d), kind.value
    if kind is LesionType.LUNG:
        lung = n["lung_right" if rng.random() < 0.5 else "lung_left"]
        return _point_in(lung, rng, rmax=0.6), "lung"
    if kind is LesionType.LIVER:
        return _point_in(n["liver"], rng, rmax=0.6, zmargin=0.3), "liver"
    if kind is LesionType.KIDNEY:
        kid = n["kidney_right" if rng.random() < 0.5 else "kidney_left"]
        return _point_in(kid, rng, rmax=0.8, zmargin=0.3), "kidney"
    if kind is LesionType.MEDIASTINUM:
        tr = n["trachea"]
        z = rng.uniform(lm["carina"] - 50, lm["carina"] + 40)
        cx, cy, _, _ = (float(v) for v in tr.section(min(z, tr.z[-1])))
        side = rng.choice([-1.0, 1.0])
        return (cx + side * rng.uniform(14, 24), cy + rng.uniform(-25, 10), z), "mediastinum"
    if kind is LesionType.ABDOMEN:
        ao = n["aorta"]
        z = rng.uniform(lm["iliac_crest"] + 20, lm["kidney"] + 40)
        cx, cy, _, _ = (float(v) for v in ao.section(z))
        side = rng.choice([-1.0, 1.0])
        return (
            cx + side * (12 + d / 2 + rng.uniform(2, 10)),
            cy + rng.uniform(-10, 10),
            z,
        ), "abdomen"
    if kind is LesionType.PELVIS:
        side = rng.choice([-1.0, 1.0])
        z = rng.uniform(40, lm["iliac_crest"] - 50)
        body = anatomy.body
        _, _, a, b = (float(v) for v in body.section(z))
        return (side * 0.38 * a, rng.uniform(-0.05, 0.15) * b, z), "pelvis"
    if kind is LesionType.SOFT_TISSUE:
        z = rng.uniform(lm["iliac_crest"] - 60, lm["lung_apex"] - 60)
        _, _, a, b = (float(v) for v in anatomy.body.section(z))
        t = rng.uniform(-np.pi, 0.0)  # anterior and lateral walls
        depth = (
            2.0
            + lm["fat_mm"] * rng.uniform(0.3, 0.7)
            + (lm["muscle_mm"] * 0.5 if lm["fat_mm"] < d else 0.0)
        )
        return ((a - depth) * np.cos(t), (b - depth) * np.sin(t), z), "soft_tissue"
    # bone: vertebral body or iliac wing
    sp = n["spine"]
    if rng.random() < 0.7:
        z = rng.uniform(lm["iliac_crest"], lm["carina"])
        cx, cy, a, b = (float(v) for v in sp.section(z))
        return (cx + rng.uniform(-0.3, 0.3) * a, cy + rng.uniform(-0.3, 0.3) * b, z), "bone"
    side = rng.choice([-1.0, 1.0])
    z = rng.uniform(110, lm["iliac_crest"] - 20)
    ilium = next(s for s in anatomy.solids if s.name == "ilium" and np.sign(s.cx[1]) == side)
    cx, cy, _, _ = (float(v) for v in ilium.section(z))
    return (cx, cy, z), "bone"


_SIZE = {
    LesionType.LUNG: (4.0, 30.0),
    LesionType.LIVER: (6.0, 70.0),
    LesionType.KIDNEY: (10.0, 50.0),
    LesionType.MEDIASTINUM: (10.0, 35.0),
    LesionType.ABDOMEN: (10.0, 40.0),
    LesionType.PELVIS: (10.0, 40.0),
    LesionType.SOFT_TISSUE: (8.0, 45.0),
    LesionType.BONE: (8.0, 28.0),
}


def _appearance(
    kind: LesionType, rng: np.random.Generator, d: float, liver_hu: float
) -> tuple[str, float, float | None]:
    if kind is LesionType.LUNG:
        if rng.random() < 0.3:
            return "ground_glass", float(rng.uniform(-650, -450)), None
        return "solid", float(rng.uniform(20, 50)), None
    if kind is LesionType.LIVER:
        if rng.random() < 0.25:
            return "hypervascular", liver_hu + float(rng.uniform(35, 60)), None
        return "hypodense", liver_hu - float(rng.uniform(45, 80)), (10.0 if d > 35 else None)
    if kind is LesionType.KIDNEY:
        return (
            "enhancing_mass",
            float(rng.uniform(100, 135)),
            (float(rng.uniform(20, 40)) if d > 30 else None),
        )
    if kind is LesionType.BONE:
        if rng.random() < 0.5:
            return "lytic", float(rng.uniform(25, 60)), None
        return "sclerotic", float(rng.uniform(750, 1000)), None
    if kind in (LesionType.MEDIASTINUM, LesionType.ABDOMEN, LesionType.PELVIS):
        return "lymph_node", float(rng.uniform(30, 55)), None
    return "mass", float(rng.uniform(30, 55)), None


#: The synthetic cohort's version. 1: each lesion placed once, wherever it fell (lesions could
#: overlap, and a lung lesion could lie in the heart, whose ellipsoid the lung's overlaps).
#: 2: a lesion is redrawn until it keeps GAP_MM from the others and, in the lung, out of
#: LUNG_EXCLUDES. 3: as 2, and a lymph node (mediastinal, abdominal, pelvic) is drawn around its
#: chain's tube (_node_point) and redrawn until it lies in fat, touching no solid but
#: NODE_SURROUNDS, inside the mediastinum or the body wall (in 2 most abdominal and pelvic nodes
#: touched the psoas, kidney, liver or bowel, some of the same density, unseen). A node too big
#: for the fat it may lie in is left out, as a clashing lesion always was. Patients without a redrawn
#: lesion are the same in all three. Models trained on an older version are reproduced with
#: ``ainode train --cohort-version N``; evaluation cohorts use the newest.
COHORT_VERSION = 3
PLACE_TRIES = 50  # places drawn for one lesion before it is left out
GAP_MM = 3.0  # least distance between two lesions' outlines at one timepoint (as spheres)
#: Solids a lung lesion must stay out of: the lung's ellipsoid overlaps them.
LUNG_EXCLUDES = ("heart", "mediastinum", "aorta")
#: Version 3: the only solids a lymph node may touch. Nodes sit in fat: a mediastinal node
#: inside the mediastinum (painted over the lungs' ellipsoids), an abdominal or pelvic one inside
#: the body wall; touching a vessel, muscle, bowel or organ, a node of 30-55 HU could lie unseen
#: in tissue of its own density (psoas, bowel wall, rectum) or be read as that organ's lesion.
NODE_SURROUNDS = ("lung", "mediastinum")
NODE_TYPES = (LesionType.MEDIASTINUM, LesionType.ABDOMEN, LesionType.PELVIS)
NODE_REACH_MM = 45.0  # version 3: farthest a node's outline lies from its vessel's wall


def _reach(track: LesionTrack, timepoints: int) -> np.ndarray:
    """Half the lesion's diameter at each timepoint, lobes included (mm): 0 where it is absent."""
    return np.array([0.5 * track.diameter_at(t) * (1.0 + track.lobe_amp) for t in range(timepoints)])


def _clashes(
    track: LesionTrack, anatomy: Anatomy, placed: list[LesionTrack], timepoints: int, version: int
) -> bool:
    """A lung lesion reaching into the heart, mediastinum or aorta at its largest, a lymph node
    touching a solid other than NODE_SURROUNDS or out of its fat at its largest (version 3), or a
    lesion within GAP_MM of another one at a timepoint where both are present."""
    reach = _reach(track, timepoints)
    if version >= 3 and track.appearance == "lymph_node":
        lm, grown = anatomy.landmarks, float(reach.max())
        wall = 2.0 + lm["fat_mm"] + lm["muscle_mm"]  # skin, subcutaneous fat, muscle
        if track.lesion_type is LesionType.MEDIASTINUM:  # within the mediastinum's fat, not the lung
            inside = anatomy.named["mediastinum"].contains(track.center, -grown)
        else:
            inside = anatomy.body.contains(track.center, -(wall + grown))
        if not inside or any(
            solid.contains(track.center, grown)
            for solid in anatomy.solids
            if solid.name not in NODE_SURROUNDS
        ):
            return True
    if track.lesion_type is LesionType.LUNG and any(
        anatomy.named[name].contains(track.center, float(reach.max())) for name in LUNG_EXCLUDES
    ):
        return True
    c = np.asarray(track.center)
    for other in placed:
        other_reach = _reach(other, timepoints)
        gap = np.linalg.norm(c - np.asarray(other.center)) - reach - other_reach
        if np.any((reach > 0) & (other_reach > 0) & (gap < GAP_MM)):
            return True
    return False


def draw_tracks(
    anatomy: Anatomy,
    rng: np.random.Generator,
    *,
    timepoints: int = 8,
    liver_hu: float = 105.0,
    version: int = COHORT_VERSION,
) -> list[LesionTrack]:
    """Draw a patient's lesions at baseline and those that appear at later timepoints
    (``version``: see COHORT_VERSION)."""
    if version not in (1, 2, 3):
        raise ValueError(f"cohort version must be 1, 2 or 3, got {version}")
    kinds = list(TYPE_WEIGHTS)
    p = np.array([TYPE_WEIGHTS[k] for k in kinds])
    p /= p.sum()
    births = [0] * int(rng.integers(2, 7))
    for t in range(1, timepoints):
        births += [t] * int(rng.random() < 0.3)
    tracks = []
    for birth in births:
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        lo, hi = _SIZE[kind]
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if birth > 0:
            d = min(d, 15.0)
        center, site = _site_point(kind, anatomy, rng, d, version)
        appearance, hu, core = _appearance(kind, rng, d, liver_hu)
        pattern = str(rng.choice(CHANGES, p=[0.35, 0.3, 0.25, 0.1]))
        rate = {
            "grow": rng.uniform(1.15, 1.5),
            "shrink": rng.uniform(0.55, 0.85),
            "stable": rng.uniform(0.96, 1.04),
            "disappear": 1.0,
        }[pattern]
        gone = birth + int(rng.integers(1, 3)) if pattern == "disappear" else None
        big = d > 20
        track = LesionTrack(
            track=len(tracks) + 1,
            lesion_type=kind,
            site=site,
            appearance=appearance,
            center=center,
            semi_ratio=(1.0, float(rng.uniform(0.65, 1.0)), float(rng.uniform(0.7, 1.0))),
            angle=float(rng.uniform(0, np.pi)),
            lobes=int(rng.integers(3, 6)) if big else 0,
            lobe_amp=float(rng.uniform(0.04, 0.12)) if big else 0.0,
            lobe_phase=float(rng.uniform(0, 2 * np.pi)),
            hu=hu,
            core_hu=core,
            diameter_mm=d,
            birth=birth,
            pattern=pattern,
            rate=float(rate),
            gone_at=gone,
        )
        if version == 1:
            tracks.append(track)
            continue
        # A lesion must sit in its organ's tissue and apart from the others at every timepoint:
        # redraw its place (only then does the patient's random stream change), else leave it out.
        for _ in range(PLACE_TRIES * (4 if version >= 3 and kind in NODE_TYPES else 1)):
            if not _clashes(track, anatomy, tracks, timepoints, version):
                tracks.append(track)
                break
            center, site = _site_point(kind, anatomy, rng, d, version)
            track = replace(track, center=center, site=site)
    return tracks
