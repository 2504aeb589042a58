"""Evaluation metrics on hand-made inputs with known answers."""

import numpy as np
import pytest
from scipy import stats

from node.eval import metrics


def test_iou_known_values():
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6], [0, 0, 1, 2]])
    out = metrics.iou((0, 0, 2, 2), boxes)
    assert out == pytest.approx([1.0, 1 / 7, 0.0, 0.5])


def test_iou_degenerate_and_bad_input():
    assert metrics.iou((1, 1, 1, 1), [[1, 1, 1, 1]]).tolist() == [0.0]
    with pytest.raises(ValueError, match="box"):
        metrics.iou((0, 0, 1), [[0, 0, 1, 1]])


def test_froc_follows_deeplesion_protocol():
    # 2 images, 3 truth lesions a, b, c. Scores best first: hit a, FP, duplicate of a, hit b, FP.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    hits = [{"a"}, set(), {"a"}, {"b"}, set()]
    sens, fps = metrics.froc_curve(scores, hits, n_truth=3, n_images=2)
    assert sens == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # The duplicate of a found lesion is not a false positive.
    assert fps == pytest.approx([0.0, 0.5, 0.5, 0.5, 1.0])
    # Strictly fewer FPs per image than the rate.
    assert metrics.sensitivity_at_fps(sens, fps, rates=(0.5, 1.0, 2.0)) == pytest.approx([1 / 3, 2 / 3, 2 / 3])


def test_froc_order_is_by_score_not_input():
    sens, fps = metrics.froc_curve([0.1, 0.9], [set(), {"x"}], n_truth=1, n_images=1)
    assert sens.tolist() == [1.0, 1.0]
    assert fps.tolist() == [0.0, 1.0]
    assert metrics.sensitivity_at_fps(sens, fps, rates=(0.5,)) == [1.0]


def test_froc_no_detections_and_bad_input():
    sens, fps = metrics.froc_curve([], [], n_truth=4, n_images=2)
    assert metrics.sensitivity_at_fps(sens, fps) == [0.0] * len(metrics.FROC_RATES)
    with pytest.raises(ValueError, match="hits"):
        metrics.froc_curve([0.5], [], n_truth=1, n_images=1)
    with pytest.raises(ValueError, match="n_images"):
        metrics.froc_curve([], [], n_truth=1, n_images=0)


def test_one_detection_can_find_two_lesions():
    sens, _ = metrics.froc_curve([0.5], [{"a", "b"}], n_truth=2, n_images=1)
    assert sens.tolist() == [1.0]


def test_dice_known_values():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, :2, :2] = True  # 4 voxels
    b[0, :2, :] = True  # 8 voxels, 4 shared
    assert metrics.dice(a, b) == pytest.approx(2 * 4 / 12)
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, np.zeros_like(a)) == 0.0
    assert metrics.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError, match="predicted"):
        metrics.dice(a, b[0])


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 40).astype(float)
    y = x + rng.normal(0, 2, 40)
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert metrics.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.spearman([1, 2, 3], [5, 5, 5]) == 0.0
    with pytest.raises(ValueError, match="y"):
        metrics.spearman([1, 2], [1, 2, 3])


def test_retrieval_at_k_known_answer():
    # Patient A: one lung lesion at 0; patient B: two lung lesions near it and a liver far away.
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [5.0, 0.0], [0.05, 0.0]])
    patients = ["A", "B", "B", "B", "A"]
    types = ["lung", "lung", "lung", "liver", "lung"]
    locations = np.array([[0, 0, 0], [3, 4, 0], [0, 0, 10], [100, 0, 0], [0, 0, 0]], float)
    sizes = [10.0, 12.0, 16.0, 30.0, 10.0]
    out = metrics.retrieval_at_k(emb, patients=patients, types=types, locations_mm=locations, sizes_mm=sizes, k=2)
    # Queries: A0 -> B1, B2 (both lung); A4 -> B1, B2; B1 -> A4, A0; B2 -> A4, A0; B3 -> A4, A0 (lung != liver).
    assert out["queries"] == 5
    assert out["precision"] == pytest.approx((1 + 1 + 1 + 1 + 0) / 5)
    loc = [(5 + 10) / 2, (5 + 10) / 2, 5.0, 10.0, 100.0]
    assert out["location_error_mm"] == pytest.approx(np.mean(loc))
    size = [(2 + 6) / 2, (2 + 6) / 2, 2.0, 6.0, 20.0]
    assert out["size_error_mm"] == pytest.approx(np.mean(size))


def test_retrieval_without_other_patients_has_no_queries():
    out = metrics.retrieval_at_k(
        np.zeros((2, 3)), patients=["A", "A"], types=["lung", "lung"], locations_mm=np.zeros((2, 3)), sizes_mm=[1, 2]
    )
    assert out["queries"] == 0 and np.isnan(out["precision"])
    with pytest.raises(ValueError, match="types"):
        metrics.retrieval_at_k(np.zeros((2, 3)), patients=["A", "B"], types=["lung"], locations_mm=np.zeros((2, 3)), sizes_mm=[1, 2])


def test_knn_type_accuracy_leaves_the_patient_out():
    # Each query's own patient holds a lesion of the same type right next to it; it must not vote.
    emb = np.array([[0.0], [0.01], [1.0], [1.01], [1.02]])
    patients = ["A", "A", "B", "C", "D"]
    types = ["lung", "lung", "liver", "liver", "liver"]
    # A0 and A1: neighbours from B, C, D are all liver -> wrong. B, C, D: 2 liver + A's 2 lung (k=3 -> nearest 3:
    # the other two livers and one lung) -> liver, right.
    assert metrics.knn_type_accuracy(emb, patients=patients, types=types, k=3) == pytest.approx(3 / 5)


def test_knn_tie_goes_to_the_nearest_type():
    emb = np.array([[0.0], [1.0], [2.0]])
    acc = metrics.knn_type_accuracy(emb, patients=["Q", "X", "Y"], types=["bone", "bone", "lung"], k=2)
    # Q: neighbours X (bone, nearer) and Y (lung): tie -> bone, right. X: Q bone, Y lung (both at 1) -> tie, Q first
    # (stable order) -> bone, right. Y: X bone (nearer), Q bone -> bone, wrong.
    assert acc == pytest.approx(2 / 3)
