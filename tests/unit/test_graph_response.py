"""RECIST 1.1 target selection and response categories."""

from __future__ import annotations

import pytest

from node.lesions.records import LesionType, ResponseCategory
from node.lesions.response import TrackMeasurement, assess_studies, is_lymph_node, select_targets


def m(uid: str, long: float, short: float | None = None, organ: str = "liver", node: bool = False) -> TrackMeasurement:
    return TrackMeasurement(tracking_uid=uid, long_axis_mm=long, short_axis_mm=short if short is not None else long / 2, organ=organ, lymph_node=node)


def test_targets_are_measurable_largest_first_five_in_all_two_per_organ() -> None:
    baseline = [
        m("l1", 50), m("l2", 40), m("l3", 30),  # third liver lesion not chosen
        m("p1", 20, organ="lung"), m("p2", 9, organ="lung"),  # 9 mm: not measurable
        m("n1", 30, 16, organ="mediastinum", node=True), m("n2", 30, 12, organ="mediastinum", node=True),
        m("k1", 12, organ="kidney"), m("b1", 11, organ="bone"),
    ]
    chosen = [t.tracking_uid for t in select_targets(baseline)]
    assert chosen == ["l1", "l2", "p1", "n1", "k1"]


def test_categories_including_nadir_and_new_lesion_rule() -> None:
    base = [m("a", 40), m("b", 20, organ="lung")]
    studies = [
        ("s0", base),
        ("s1", [m("a", 25), m("b", 10, organ="lung")]),  # 35 of 60: -41.7 % -> PR
        ("s2", [m("a", 36), m("b", 10, organ="lung")]),  # 46 vs nadir 35: +31 %, +11 mm -> PD
        ("s3", [m("a", 30), m("b", 14, organ="lung")]),  # 44: vs nadir 35 +25.7% +9 mm -> PD
        ("s4", [m("a", 28), m("b", 10, organ="lung"), m("c", 4, organ="bone")]),  # new lesion -> PD
    ]
    result = assess_studies(studies)
    assert [r.category for r in result] == [
        ResponseCategory.BASELINE, ResponseCategory.PR, ResponseCategory.PD, ResponseCategory.PD, ResponseCategory.PD,
    ]
    assert result[1].sum_of_diameters_mm == 35 and result[1].change_from_baseline_pct == pytest.approx(-41.6667, abs=1e-3)
    assert result[2].nadir_sum_mm == 35 and result[2].change_from_nadir_pct == pytest.approx(31.4286, abs=1e-3)
    assert result[4].new_lesions and not result[3].new_lesions
    assert result[0].target_tracking_uids == ("a", "b") and result[3].baseline_study_uid == "s0"


def test_stable_complete_response_and_nodes_under_ten_mm() -> None:
    base = [m("a", 40), m("n", 30, 20, organ="mediastinum", node=True)]
    result = assess_studies([
        ("s0", base),
        ("s1", [m("a", 38), m("n", 28, 18, organ="mediastinum", node=True)]),  # SD
        ("s2", [m("n", 12, 8, organ="mediastinum", node=True)]),  # a gone, node < 10 mm -> CR
    ])
    assert [r.category for r in result[1:]] == [ResponseCategory.SD, ResponseCategory.CR]
    assert result[0].sum_of_diameters_mm == 60  # 40 long + 20 short


def test_small_absolute_growth_is_not_progression() -> None:
    result = assess_studies([("s0", [m("a", 12)]), ("s1", [m("a", 10)]), ("s2", [m("a", 14)])])
    assert result[2].category is ResponseCategory.SD  # +40 % but only +4 mm over the nadir


def test_no_targets_is_not_evaluable_and_flagged_tracks_are_not_new() -> None:
    flagged = TrackMeasurement(tracking_uid="x", long_axis_mm=30, short_axis_mm=20, organ="liver", flagged=True)
    result = assess_studies([("s0", [m("a", 5)]), ("s1", [m("a", 5), flagged])])
    assert result[1].category is ResponseCategory.NE and not result[1].new_lesions


def test_lymph_node_rule_and_validation() -> None:
    assert is_lymph_node(lesion_type=LesionType.MEDIASTINUM, site=None)
    assert not is_lymph_node(lesion_type=LesionType.LIVER, site="liver")
    with pytest.raises(ValueError, match="long_axis_mm"):
        TrackMeasurement(tracking_uid="a", long_axis_mm=-1, short_axis_mm=1, organ="liver")
    assert assess_studies([]) == []
