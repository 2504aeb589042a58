"""Retrieval figures on hand-made embeddings, the ceiling, and truth-lesion embedding inputs."""

from pathlib import Path

import numpy as np
import pytest

from node.eval import cohort as cohort_mod
from node.eval import retrieval
from node.inference.backend import OnnxBackend
from node.synth.phantom import ScanParams, synthesize_study
from node.training.datasets import TrainStudy, train_lesion
from node.training.train import embedder_data

REPO = Path(__file__).resolve().parents[2]
TYPES = ("lung", "liver", "kidney", "bone", "pelvis", "abdomen", "mediastinum", "soft_tissue")


def _cohort(n_patients: int, per_patient: int, rng: np.random.Generator) -> tuple[list[str], list[str], np.ndarray, list[float]]:
    patients = [f"P{p}" for p in range(n_patients) for _ in range(per_patient)]
    types = [TYPES[int(i)] for i in rng.integers(0, len(TYPES), len(patients))]
    return patients, types, rng.normal(size=(len(patients), 3)) * 50.0, list(rng.uniform(5, 50, len(patients)))


def test_perfect_embedding_reaches_one_and_the_ceiling():
    rng = np.random.default_rng(0)
    patients, types, loc, size = _cohort(20, 10, rng)
    codes = np.array([TYPES.index(t) for t in types])
    emb = np.eye(32)[codes] + rng.normal(scale=0.01, size=(len(codes), 32))
    out = retrieval.retrieval_figures(emb, patients=patients, types=types, locations_mm=loc, sizes_mm=size, k=5)
    assert out["ceiling"] == pytest.approx(1.0)  # every type has 5+ lesions in other patients
    assert out["precision"] == pytest.approx(1.0)
    assert out["knn_accuracy"] == pytest.approx(1.0)
    assert out["queries"] == out["lesions"] == 200


def test_random_embedding_is_near_chance():
    rng = np.random.default_rng(1)
    patients, types, loc, size = _cohort(40, 10, rng)
    emb = rng.normal(size=(len(types), 32))
    out = retrieval.retrieval_figures(emb, patients=patients, types=types, locations_mm=loc, sizes_mm=size, k=5)
    _, counts = np.unique(types, return_counts=True)
    chance = float(((counts / counts.sum()) ** 2).sum())  # about 1/8
    assert abs(out["precision"] - chance) < 0.04
    assert out["knn_accuracy"] < 0.3


def test_ceiling_of_a_small_gallery():
    patients = ["A", "B", "B", "C"]
    types = ["lung", "lung", "liver", "liver"]
    # A/lung: 1 of 3 others; B/lung: 1 of 2; B/liver: 1 of 2; C/liver: 1 of 3.
    assert retrieval.precision_ceiling(patients=patients, types=types, k=5) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 1 / 3) / 4)
    # With k=1 a perfect embedding finds one same-type lesion for every query.
    assert retrieval.precision_ceiling(patients=patients, types=types, k=1) == pytest.approx(1.0)
    emb = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    out = retrieval.retrieval_figures(emb, patients=patients, types=types, locations_mm=np.zeros((4, 3)), sizes_mm=[1, 2, 3, 4], k=5)
    assert out["precision"] == pytest.approx(out["ceiling"])


def test_ceiling_rejects_bad_arguments_and_handles_one_patient():
    with pytest.raises(ValueError, match="types"):
        retrieval.precision_ceiling(patients=["A", "B"], types=["lung"])
    with pytest.raises(ValueError, match="k"):
        retrieval.precision_ceiling(patients=["A"], types=["lung"], k=0)
    assert np.isnan(retrieval.precision_ceiling(patients=["A", "A"], types=["lung", "bone"]))
    out = retrieval.retrieval_figures(np.zeros((0, 1)), patients=[], types=[], locations_mm=np.zeros((0, 3)), sizes_mm=[])
    assert out["precision"] is None and out["ceiling"] is None and out["queries"] == 0


@pytest.fixture(scope="module")
def study() -> cohort_mod.EvalStudy:
    scan = ScanParams(rows=96, columns=96, pixel_spacing=4.0, slice_thickness=5.0, coverage="chest_abdomen_pelvis", noise_hu=8.0)
    s = synthesize_study(5, 0, scan=scan, cohort_seed=cohort_mod.HELD_OUT_COHORT_SEED)
    out = cohort_mod.EvalStudy(
        patient=s.patient_id, timepoint=0, volume=s.to_volume(), lesions=list(s.lesions), lesion_labels=s.lesion_labels, pose=s.pose
    )
    assert out.lesions
    return out


def test_truth_inputs_are_the_training_inputs(study):
    scores = np.linspace(-5.0, 5.0, study.volume.pixels.shape[0])
    images, cues = retrieval.truth_lesion_inputs(study, scores)
    train_study = TrainStudy(
        key="k",
        patient=study.patient,
        pixels=study.volume.pixels,
        spacing=study.volume.spacing,
        lesions=tuple(train_lesion(les) for les in study.lesions),
    )
    data = embedder_data([train_study], lambda _: scores)
    assert images.shape == (len(study.lesions), 3, 64, 64)
    np.testing.assert_allclose(images, data.images.astype(np.float32), atol=0.2)
    np.testing.assert_allclose(cues, data.cues, atol=1e-6)
    with pytest.raises(ValueError, match="body_part_scores"):
        retrieval.truth_lesion_inputs(study, scores[:-1])


def test_embed_truth_lesions_with_the_committed_embedder(study):
    scores = np.linspace(-5.0, 5.0, study.volume.pixels.shape[0])
    backend = OnnxBackend(REPO / "triton_models", threads=1)
    try:
        out = retrieval.embed_truth_lesions(study, backend, scores, batch=2)
    finally:
        backend.close()
    assert [t.lesion_id for t in out] == [les.lesion_id for les in study.lesions]
    emb = np.stack([t.embedding for t in out])
    assert emb.shape == (len(study.lesions), 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert all(t.track_id.startswith(study.patient + "/") for t in out)


def test_summary_and_target_use_the_truth_lesions():
    from node.config import Settings
    from node.eval import report, runner

    rng = np.random.default_rng(2)
    scores = []
    for p in range(6):
        truth = []
        for i, kind in enumerate(("lung", "liver", "bone")):
            emb = np.zeros(32, np.float32)
            emb[i] = 1.0
            emb[3 + p] = 0.05  # a little per-patient spread
            truth.append(
                retrieval.TruthEmbedding(
                    lesion_id=f"P{p}-{i}", track_id=f"P{p}/{i}", patient=f"P{p}", timepoint=0, lesion_type=kind,
                    location_mm=tuple(rng.normal(size=3) * 10.0), long_axis_mm=10.0 + i, embedding=emb / np.linalg.norm(emb),
                )
            )
        scores.append(runner.StudyScore(patient=f"P{p}", timepoint=0, analysed=True, truth_lesions=3, key_images=1, truth_embedded=truth))
    summary = runner.summarize(scores, Settings())
    r = summary["retrieval"]
    assert r["precision_at_5"] == pytest.approx(1.0) and r["ceiling"] == pytest.approx(1.0)
    assert r["queries"] == r["lesions"] == 18
    assert summary["type"]["knn_accuracy"] == pytest.approx(1.0)
    assert summary["retrieval_found"]["precision_at_5"] is None  # no analyzer lesions were matched
    assert summary["matching_truth"]["lesions"] == 18
    row = next(t for t in report.apply_targets(summary) if "precision@5" in t["name"])
    assert row["result"] == "PASS" and "truth lesions" in row["name"]
    text = report.format_table(
        {"summary": summary, "cohort": {"description": "hand-made"}, "models": {}, "targets": report.apply_targets(summary)}
    )
    assert "retrieval, truth lesions" in text and "ceiling 1.000" in text and "retrieval, found lesions" in text


def test_a_cohort_too_small_for_the_precision_target_is_named():
    from node.eval import report

    assert report.target_warnings({"retrieval": {"precision_at_5": 0.75, "ceiling": 0.85}}) == [
        "type precision@5 cannot reach its target 0.9 on this cohort: a perfect embedding would score 0.850 "
        "(some types have fewer than 5 lesions in other patients); judge that target on a larger cohort, "
        "e.g. `ainode eval --patients 30 --timepoints 2`"
    ]
    assert report.target_warnings({"retrieval": {"precision_at_5": 0.75, "ceiling": 0.977}}) == []
    assert report.target_warnings({"retrieval": {"precision_at_5": None, "ceiling": None}}) == []
