"""Algorithm 1, pairwise accuracy, track assignment and threshold tuning."""

from __future__ import annotations

import numpy as np
import pytest

from node.config import Settings
from node.lesions.matching import (
    assign_tracks,
    groups_from_labels,
    match_lesions,
    match_patient_reference,
    pairwise_accuracy,
    simulate_cohort,
    tune_thresholds,
)


def test_merge_threshold_exclusion_and_extraction_on_a_hand_made_graph() -> None:
    # Study 0: lesions A, A' (a duplicate, merged by T1), B. Study 1: A2, B2, C (new).
    emb = np.array([[0.0, 0.0], [0.05, 0.0], [5.0, 0.0], [0.2, 0.1], [5.1, 0.0], [0.4, 0.1]])
    study = np.array([0, 0, 0, 1, 1, 1])
    labels = match_lesions(emb, study, t1=0.1, t2=1.0)
    # C at 0.4 is within T2 of A but A's nearest in study 1 is A2: exclusion drops A-C.
    assert labels.tolist() == [0, 0, 1, 0, 1, 2]


def test_threshold_drops_long_edges_and_vanished_lesions_stay_alone() -> None:
    emb = np.array([[0.0, 0.0], [3.0, 0.0], [0.1, 0.0]])
    labels = match_lesions(emb, np.array([0, 0, 1]), t1=0.1, t2=1.0)
    assert labels[0] == labels[2] and labels[1] not in (labels[0],)


def test_same_study_lesions_are_never_joined_directly() -> None:
    emb = np.array([[0.0], [0.5]])
    labels = match_lesions(emb, np.array([7, 7]), t1=0.1, t2=10.0)
    assert labels.tolist() == [0, 1]


def test_patients_are_never_matched_with_each_other() -> None:
    emb = np.zeros((2, 4))
    labels = match_lesions(emb, np.array([0, 1]), t1=0.1, t2=1.0, patient=np.array([1, 2]))
    assert labels.tolist() == [0, 1]


def test_vectorised_matching_equals_the_step_by_step_reference() -> None:
    rng = np.random.default_rng(3)
    for _ in range(150):
        n = int(rng.integers(1, 10))
        emb = rng.normal(size=(n, 3))
        study = rng.integers(0, 4, size=n)
        t1, t2 = float(rng.uniform(0, 1.5)), float(rng.uniform(0, 3))
        expected = match_patient_reference(emb, study.tolist(), t1=t1, t2=t2)
        assert match_lesions(emb, study, t1=t1, t2=t2).tolist() == expected.tolist()


def test_many_patients_at_once_equal_one_patient_at_a_time() -> None:
    cohort = simulate_cohort(patients=60, studies=150, lesions=450, seed=5)
    together = match_lesions(cohort.embeddings, cohort.study, t1=0.15, t2=0.7, patient=cohort.patient)
    for p in np.unique(cohort.patient):
        sel = cohort.patient == p
        alone = match_lesions(cohort.embeddings[sel], cohort.study[sel], t1=0.15, t2=0.7)
        assert pairwise_accuracy(groups_from_labels(together[sel]), groups_from_labels(alone)) == (1.0, 1.0)


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        match_lesions(np.zeros(3), np.zeros(3), t1=0.1, t2=1)
    with pytest.raises(ValueError, match="study"):
        match_lesions(np.zeros((3, 2)), np.zeros(2), t1=0.1, t2=1)
    with pytest.raises(ValueError, match="t2"):
        match_lesions(np.zeros((3, 2)), np.zeros(3), t1=0.1, t2=float("nan"))


def test_pairwise_accuracy_counts_pairs() -> None:
    truth = [["a", "b", "c"], ["d"]]
    assert pairwise_accuracy(truth, truth) == (1.0, 1.0)
    precision, recall = pairwise_accuracy([["a", "b"], ["c", "d"]], truth)
    assert precision == pytest.approx(0.5) and recall == pytest.approx(1 / 3)
    assert pairwise_accuracy([["a"], ["b"]], [["a", "b"]]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="groups"):
        pairwise_accuracy([["a"], ["a"]], truth)


def test_assign_tracks_keeps_the_track_with_the_largest_overlap() -> None:
    groups = np.array([0, 0, 0, 1, 2, 2])
    previous = np.array([10, 10, 11, 11, -1, -1])
    mapping = assign_tracks(groups, previous)
    assert mapping == {0: 10, 1: 11}  # group 2 is new
    # Two old tracks merged by a late prior: the older (lower rank) keeps its UID.
    assert assign_tracks(np.array([0, 0]), np.array([12, 11]), {12: 0, 11: 1}) == {0: 12}


def test_matching_a_deeplesion_sized_cohort() -> None:
    # Its speed (< 5 s) is `ainode bench graph`'s to show, against a baseline in the same run:
    # a timed test failed here on a loaded host.
    cohort = simulate_cohort(patients=4427, studies=10594, lesions=32735, seed=11)
    labels = match_lesions(cohort.embeddings, cohort.study, t1=0.15, t2=0.7, patient=cohort.patient)
    precision, recall = pairwise_accuracy(groups_from_labels(labels), groups_from_labels(cohort.truth))
    assert len(labels) == len(cohort.embeddings) > 30_000 and precision >= 0.95 and recall >= 0.95


def test_tuned_thresholds_carry_over_to_a_held_out_simulated_cohort() -> None:
    tuning = simulate_cohort(patients=300, studies=720, lesions=2200, seed=21)
    tuned = tune_thresholds(tuning, t1_grid=(0.1, 0.15, 0.2), t2_grid=(0.5, 0.6, 0.7, 0.8))
    assert tuned.precision >= 0.95 and tuned.recall >= 0.95
    held_out = simulate_cohort(patients=400, studies=960, lesions=2950, seed=99)
    labels = match_lesions(held_out.embeddings, held_out.study, t1=tuned.t1, t2=tuned.t2, patient=held_out.patient)
    precision, recall = pairwise_accuracy(groups_from_labels(labels), groups_from_labels(held_out.truth))
    assert precision >= 0.95 and recall >= 0.95


def test_settings_thresholds_follow_the_committed_embedder_over_time() -> None:
    # The committed models on 3 patients x 3 studies no model was trained on (cohort seed 0,
    # patients 30000+): Algorithm 1 with the settings' thresholds on the analyzer's own lesions
    # that match a truth lesion. A regression floor against a gross mismatch of embedder and
    # thresholds, not the 0.95 target, which `ainode eval` measures on larger cohorts: these 3
    # patients (about 9 true pairs) give 0.73 / 0.89 with embedder ab70004d and t1 0.05 / t2 0.6
    # (two liver lesions of one study embed 0.03 apart), 0.82 / 0.78 with bd2bffd3 and t2 0.7,
    # 0.83 / 0.83 with 52ef8de2; random embeddings give recall 0.
    from pathlib import Path

    from node.eval.cohort import synthetic_cohort
    from node.eval.runner import graph_accuracy, score_analysis
    from node.inference.analyzer import Analyzer
    from node.inference.backend import OnnxBackend

    backend = OnnxBackend(Path(__file__).resolve().parents[2] / "triton_models", threads=1)
    matched = []
    for study in synthetic_cohort(patients=3, timepoints=3, seed=0, first_patient=30000):
        matched += score_analysis(study, Analyzer(backend).analyze(study.volume))
    figures, _ = graph_accuracy(matched, np.stack([m.embedding for m in matched]), Settings())
    assert figures["true_pairs"] >= 5, f"too few lesions found again over time to test ({len(matched)} matched)"
    precision, recall = figures["precision"], figures["recall"]
    assert precision >= 0.7 and recall >= 0.7, (precision, recall)
