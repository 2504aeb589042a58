"""RECIST 1.1 response of each follow-up study of a patient, from the lesion tracks.

Target lesions are chosen at baseline among measurable lesions (long axis >= 10 mm, or short
axis >= 15 mm for lymph nodes): the largest first, up to 5 in all and 2 per organ. The sum of
diameters uses the long axis, the short axis for lymph nodes. Categories (target lesions plus
the new-lesion rule): CR when every non-nodal target has gone and every nodal target is under
10 mm short axis; PD when the sum grew by 20 % and 5 mm over the nadir, or a new lesion
appeared; PR when the sum fell by 30 % from baseline; SD otherwise.

Choices an automated node has to make, stated here once:

- a target lesion the node does not find in a follow-up counts as 0 mm (disappeared): the node
  cannot tell "gone" from "missed";
- lymph nodes are lesions of DeepLesion's mediastinum type, or with a site naming a lymph node;
- a new lesion is a track first seen in that follow-up; tracks flagged as unmatchable (no
  embedding) never count as new;
- with no measurable lesion at baseline the category is NE unless a new lesion makes it PD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.lesions.records import LesionType, ResponseAssessment, ResponseCategory

__all__ = ["TrackMeasurement", "assess_studies", "is_lymph_node", "select_targets"]

MAX_TARGETS = 5
MAX_TARGETS_PER_ORGAN = 2
MEASURABLE_MM = 10.0
MEASURABLE_NODE_SHORT_MM = 15.0
NORMAL_NODE_SHORT_MM = 10.0


def is_lymph_node(*, lesion_type: LesionType | str, site: str | None) -> bool:
    """Whether RECIST measures this lesion as a lymph node (short axis)."""
    if site is not None and "lymph" in site:
        return True
    return LesionType(lesion_type) is LesionType.MEDIASTINUM


@dataclass(frozen=True, kw_only=True)
class TrackMeasurement:
    """A tracked lesion as measured in one study (the largest sighting when several)."""

    tracking_uid: str
    long_axis_mm: float
    short_axis_mm: float
    organ: str
    lymph_node: bool = False
    flagged: bool = False

    def __post_init__(self) -> None:
        if not self.tracking_uid:
            raise ValueError("tracking_uid: must not be empty")
        if not (self.long_axis_mm >= 0):
            raise ValueError(f"long_axis_mm: must be >= 0, got {self.long_axis_mm}")
        if not (self.short_axis_mm >= 0):
            raise ValueError(f"short_axis_mm: must be >= 0, got {self.short_axis_mm}")

    @property
    def diameter_mm(self) -> float:
        """The diameter RECIST sums: short axis for lymph nodes, long axis otherwise."""
        return self.short_axis_mm if self.lymph_node else self.long_axis_mm

    @property
    def measurable(self) -> bool:
        if self.flagged:
            return False
        if self.lymph_node:
            return self.short_axis_mm >= MEASURABLE_NODE_SHORT_MM
        return self.long_axis_mm >= MEASURABLE_MM


def select_targets(
    baseline: Sequence[TrackMeasurement],
    *,
    max_targets: int = MAX_TARGETS,
    max_per_organ: int = MAX_TARGETS_PER_ORGAN,
) -> list[TrackMeasurement]:
    """Target lesions at baseline: measurable ones, largest diameter first, within the limits."""
    if max_targets < 1:
        raise ValueError(f"max_targets: must be >= 1, got {max_targets}")
    if max_per_organ < 1:
        raise ValueError(f"max_per_organ: must be >= 1, got {max_per_organ}")
    chosen: list[TrackMeasurement] = []
    per_organ: dict[str, int] = {}
    seen: set[str] = set()
    for m in sorted(baseline, key=lambda m: (-m.diameter_mm, m.tracking_uid)):
        if not m.measurable or m.tracking_uid in seen:
            continue
        if per_organ.get(m.organ, 0) >= max_per_organ:
            continue
        chosen.append(m)
        seen.add(m.tracking_uid)
        per_organ[m.organ] = per_organ.get(m.organ, 0) + 1
        if len(chosen) == max_targets:
            break
    return chosen


def _pct(value: float, reference: float) -> float | None:
    return None if reference <= 0 else 100.0 * (value - reference) / reference


def assess_studies(
    studies: Sequence[tuple[str, Sequence[TrackMeasurement]]],
) -> list[ResponseAssessment]:
    """RECIST 1.1 assessment of every study of one patient, in time order.

    Parameters
    ----------
    studies:
        (study_instance_uid, measurements of the tracks seen in that study), oldest first;
        the first is the baseline.

    Returns
    -------
    list of ResponseAssessment
        one per study; the first has category BASELINE.
    """
    if not studies:
        return []
    baseline_uid, baseline = studies[0]
    targets = select_targets(baseline)
    target_uids = tuple(m.tracking_uid for m in targets)
    node_uids = {m.tracking_uid for m in targets if m.lymph_node}
    baseline_sum = sum(m.diameter_mm for m in targets)
    seen: set[str] = {m.tracking_uid for m in baseline}
    results = [
        ResponseAssessment(
            category=ResponseCategory.BASELINE,
            sum_of_diameters_mm=baseline_sum,
            baseline_sum_mm=baseline_sum,
            nadir_sum_mm=baseline_sum,
            change_from_baseline_pct=0.0 if targets else None,
            change_from_nadir_pct=0.0 if targets else None,
            new_lesions=False,
            target_tracking_uids=target_uids,
            baseline_study_uid=baseline_uid,
        )
    ]
    nadir = baseline_sum
    for _study_uid, measurements in studies[1:]:
        by_uid: dict[str, TrackMeasurement] = {}
        for m in measurements:
            if m.tracking_uid not in by_uid or m.diameter_mm > by_uid[m.tracking_uid].diameter_mm:
                by_uid[m.tracking_uid] = m
        diameters = {uid: (by_uid[uid].diameter_mm if uid in by_uid else 0.0) for uid in target_uids}
        total = sum(diameters.values())
        new = any(uid not in seen and not m.flagged for uid, m in by_uid.items())
        seen.update(by_uid)
        from_nadir = _pct(total, nadir)
        if new:
            category = ResponseCategory.PD
        elif not targets:
            category = ResponseCategory.NE
        elif total - nadir >= 5.0 and total >= 1.2 * nadir:
            category = ResponseCategory.PD
        elif all(
            (diameters[uid] < NORMAL_NODE_SHORT_MM) if uid in node_uids else diameters[uid] == 0.0
            for uid in target_uids
        ):
            category = ResponseCategory.CR
        elif total <= 0.7 * baseline_sum:
            category = ResponseCategory.PR
        else:
            category = ResponseCategory.SD
        results.append(
            ResponseAssessment(
                category=category,
                sum_of_diameters_mm=total,
                baseline_sum_mm=baseline_sum,
                nadir_sum_mm=nadir,
                change_from_baseline_pct=_pct(total, baseline_sum),
                change_from_nadir_pct=from_nadir,
                new_lesions=new,
                target_tracking_uids=target_uids,
                baseline_study_uid=baseline_uid,
            )
        )
        nadir = min(nadir, total)
    return results
