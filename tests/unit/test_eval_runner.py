"""Scoring a study from hand-made model outputs built from its truth, and one small real run."""

import json
import zlib
from dataclasses import replace

import numpy as np
import pytest

from node.cli import main
from node.config import Settings
from node.eval import cohort as cohort_mod
from node.eval import runner
from node.inference import preprocess as pp
from node.inference.analyzer import Analysis, Detection
from node.inference.backend import OnnxBackend
from node.lesions.records import Lesion, LesionType
from node.synth.phantom import ScanParams, synthesize_study

TYPES = tuple(LesionType)


@pytest.fixture(scope="module")
def studies() -> list[cohort_mod.EvalStudy]:
    out = []
    for p, t in ((3, 0), (3, 1), (4, 0), (4, 1)):
        scan = ScanParams(rows=96, columns=96, pixel_spacing=4.0, slice_thickness=5.0, coverage="chest_abdomen_pelvis", noise_hu=8.0)
        s = synthesize_study(p, t, scan=scan, cohort_seed=cohort_mod.HELD_OUT_COHORT_SEED)
        out.append(
            cohort_mod.EvalStudy(
                patient=s.patient_id, timepoint=t, volume=s.to_volume(), lesions=list(s.lesions), lesion_labels=s.lesion_labels, pose=s.pose
            )
        )
    assert sum(len(s.lesions) for s in out) >= 4
    return out


def oracle_detections(study: cohort_mod.EvalStudy, canvas: pp.Canvas) -> list[Detection]:
    """The detections a perfect detector would give: each truth box on its key slice, plus one FP."""
    _, rs, cs = study.volume.spacing
    dets = []
    for lesion in study.lesions:
        c0, r0, c1, r1 = lesion.box
        k = int(round(lesion.key_slice / canvas.slice_step))
        _, r, c = canvas.from_volume(lesion.key_slice, 0.5 * (r0 + r1), 0.5 * (c0 + c1))
        dets.append(Detection(k=k, row=r, col=c, height_mm=(r1 - r0) * rs, width_mm=(c1 - c0) * cs, score=0.9, type_index=0))
        # A false positive on the same key image, far away, with a lower score.
        dets.append(Detection(k=k, row=5.0, col=5.0, height_mm=10.0, width_mm=10.0, score=0.2, type_index=0))
    return dets


def oracle_analysis(study: cohort_mod.EvalStudy) -> Analysis:
    """What perfect models would return: truth masks, RECIST, and embeddings that encode track and type."""
    lesions = []
    for i, lesion in enumerate(study.lesions):
        mask = study.lesion_labels == lesion.label
        zs, ys, xs = np.nonzero(mask)
        lo = (zs.min(), ys.min(), xs.min())
        # Type in the first 8 values; a direction of its own per track in the other 24, so
        # different tracks sit about 1.4 apart (beyond t2) and sightings of one track coincide.
        own = np.random.default_rng(zlib.crc32(f"{study.patient}/{lesion.track_id}".encode())).normal(size=24)
        emb = np.concatenate([np.eye(8)[TYPES.index(lesion.lesion_type)], own / np.linalg.norm(own)]).astype(np.float32)
        lesions.append(
            Lesion(
                index=i,
                key_slice=lesion.key_slice,
                box=lesion.box,
                score=0.9,
                lesion_type=lesion.lesion_type,
                recist=lesion.recist,
                volume_mm3=lesion.volume_mm3,
                mask=mask[lo[0] : zs.max() + 1, lo[1] : ys.max() + 1, lo[2] : xs.max() + 1],
                mask_offset=tuple(int(v) for v in lo),
                embedding=emb,
            )
        )
    z = study.body_z()  # a perfect regressor: the same score at the same body position in every patient
    return Analysis(lesions=lesions, body_part_scores=(z / 10.0).astype(np.float32))


def test_perfect_models_score_perfectly(studies):
    scores = []
    for study in studies:
        canvas = pp.make_canvas(study.volume.pixels, study.volume.spacing)
        key_images, key_c, vol_c = runner.score_detections(study, canvas, oracle_detections(study, canvas))
        assert key_images == len({int(round(les.key_slice / canvas.slice_step)) for les in study.lesions})
        assert all(c.hits for c in key_c if c.score == 0.9)
        assert not any(c.hits for c in key_c if c.score == 0.2)
        matched = runner.score_analysis(study, oracle_analysis(study))
        assert len(matched) == len(study.lesions)
        assert all(m.dice == 1.0 and m.long_axis_error_mm == 0.0 for m in matched)
        scores.append(
            runner.StudyScore(
                patient=study.patient,
                timepoint=study.timepoint,
                analysed=True,
                truth_lesions=len(study.lesions),
                key_images=key_images,
                key_candidates=key_c,
                volume_candidates=vol_c,
                matched=matched,
                found_lesions=len(matched),
                spearman=1.0,
                body_part=(oracle_analysis(study).body_part_scores, study.body_z()),
            )
        )
    summary = runner.summarize(scores, Settings())
    # A body-part score that is one body position in every patient: pooled over the studies too.
    assert summary["body_part"]["spearman_pooled"] == pytest.approx(1.0)
    assert summary["body_part"]["z_spread_mm"] == pytest.approx(0.0, abs=1e-3)
    # One that is ordered in each patient but offset from one to the next (the table's position):
    offset = [replace(sc, body_part=(sc.body_part[0] + 30.0 * i, sc.body_part[1])) for i, sc in enumerate(scores)]
    assert runner.summarize(offset, Settings())["body_part"]["z_spread_mm"] > 50.0
    assert summary["detection"]["key_slice"]["sensitivity"]["0.5"] == 1.0
    assert summary["detection"]["per_volume"]["sensitivity"]["4.0"] == 1.0
    assert summary["segmentation"]["dice"] == 1.0
    assert summary["recist"]["long_axis_mae_mm"] == 0.0
    assert summary["type"]["detector_accuracy"] == 1.0
    m = summary["matching"]
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["true_pairs"] >= 1
    assert m["tuned"]["applied"] is False


def test_a_detection_the_segmenter_finds_nothing_in_is_ranked_down(studies):
    from node.inference.analyzer import NO_MASK_SCORE

    study = studies[0]
    canvas = pp.make_canvas(study.volume.pixels, study.volume.spacing)
    dets = oracle_detections(study, canvas)
    # Boxes from the segmenter: the lesions' own, and nothing where the false positives are.
    refined = {i: (study.lesions[i // 2].box if i % 2 == 0 else None) for i in range(len(dets))}
    _, key_c, _ = runner.score_detections(study, canvas, dets, key_boxes=refined)
    assert sorted({c.score for c in key_c}) == [pytest.approx(0.2 * NO_MASK_SCORE), 0.9]
    assert all(c.hits for c in key_c if c.score == 0.9)
    # Without the segmenter's boxes: the detector's scores as they are.
    _, plain, _ = runner.score_detections(study, canvas, dets)
    assert sorted({c.score for c in plain}) == [0.2, 0.9]


def test_missed_lesions_and_wrong_types_lower_the_figures(studies):
    study = next(s for s in studies if len(s.lesions) >= 2)
    analysis = oracle_analysis(study)
    first = analysis.lesions[0]
    wrong = replace(first, lesion_type=TYPES[(TYPES.index(first.lesion_type) + 1) % 8], recist=replace(first.recist, long_axis_mm=first.recist.long_axis_mm + 3.0))
    # The first lesion reported twice (the second copy matches nothing) and the others missed.
    matched = runner.score_analysis(study, replace(analysis, lesions=[wrong, replace(wrong, score=0.1)]))
    assert len(matched) == 1
    assert matched[0].long_axis_error_mm == pytest.approx(3.0)
    assert matched[0].predicted_type != matched[0].truth_type
    score = runner.StudyScore(patient=study.patient, timepoint=0, analysed=True, truth_lesions=len(study.lesions), key_images=1, matched=matched, found_lesions=2, spearman=0.5)
    summary = runner.summarize([score], Settings())
    assert summary["matched_lesions"] == 1 and summary["found_lesions"] == 2
    assert summary["type"]["detector_accuracy"] == 0.0
    assert summary["detection"]["key_slice"]["sensitivity"]["16.0"] == 0.0


def test_lesion_rows_say_what_became_of_each_truth_lesion(studies):
    study = next(s for s in studies if len(s.lesions) >= 2)
    canvas = pp.make_canvas(study.volume.pixels, study.volume.spacing)
    dets = oracle_detections(study, canvas)
    first, second = study.lesions[0], study.lesions[1]
    # The first lesion's detection kept, the second's shrunk to a quarter of its box, the others dropped.
    kept = [dets[0], replace(dets[2], height_mm=dets[2].height_mm / 4, width_mm=dets[2].width_mm / 4, score=0.7)]
    _, key_c, vol_c = runner.score_detections(study, canvas, kept)
    analysis = oracle_analysis(study)
    longer = replace(analysis.lesions[0], recist=replace(analysis.lesions[0].recist, long_axis_mm=analysis.lesions[0].recist.long_axis_mm - 2.5))
    matched = runner.score_analysis(study, replace(analysis, lesions=[longer]))
    rows = runner.lesion_rows(study, key_candidates=key_c, volume_candidates=vol_c, matched=matched)
    assert [r["lesion_id"] for r in rows] == [les.lesion_id for les in study.lesions]
    assert all(set(r) == set(runner.LESION_COLUMNS) for r in rows)
    one, two = rows[0], rows[1]
    assert one["key_slice_result"] == "hit" and one["key_slice_hit_score"] == 0.9 and one["key_slice_best_iou"] > 0.9
    assert one["found"] is True and one["long_axis_error_mm"] == pytest.approx(-2.5) and one["dice"] == 1.0
    assert one["type"] == str(first.lesion_type) and one["long_axis_mm"] == round(first.long_axis_mm, 2)
    assert two["key_slice_result"] == "box IoU < 0.5" and 0.0 < two["key_slice_best_iou"] < 0.5
    assert two["key_slice_hit_score"] is None and two["found"] is False and two["long_axis_error_mm"] is None
    assert two["volume_hit_score"] == 0.7  # its centre is inside the lesion, so it counts per volume
    assert all(r["key_slice_result"] == "missed" and r["key_slice_best_iou"] == 0.0 for r in rows[2:] if r["study"] == one["study"])
    assert second.lesion_id == two["lesion_id"]

    types = runner.by_type(rows)
    assert sum(v["lesions"] for v in types.values()) == len(rows)
    assert sum(v["key_slice_hits_any_score"] for v in types.values()) == 1
    assert types[str(first.lesion_type)]["long_axis_bias_mm"] == pytest.approx(-2.5)
    assert types[str(first.lesion_type)]["long_axis_mae_mm"] == pytest.approx(2.5)

    skipped = runner.lesion_rows(study, reason="too few slices")
    assert {r["key_slice_result"] for r in skipped} == {"not analysed: too few slices"}
    assert all(v["lesions"] == 0 for v in runner.by_type(skipped).values())


def test_detector_cache_runs_the_detector_once(studies):
    class Counting:
        def __init__(self):
            self.calls = 0

        def infer(self, model, inputs):
            self.calls += 1
            return {"out": inputs["image"].sum(axis=(1, 2, 3))}

        def model_versions(self):
            return {}

        def close(self):
            pass

    inner = Counting()
    cache = runner.DetectorCache(inner)
    a = np.ones((2, 9, 4, 4), np.float32)
    first = cache.infer("lesion_detector", {"image": a})
    again = cache.infer("lesion_detector", {"image": a.copy()})
    assert inner.calls == 1 and cache.hits == 1 and again is first
    cache.infer("lesion_detector", {"image": a * 2})
    cache.infer("lesion_segmenter", {"image": a})
    cache.infer("lesion_segmenter", {"image": a})
    assert inner.calls == 4


def test_eval_command_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "eval.json"
    csv_path = tmp_path / "lesions.csv"
    rc = main([
        "--data-dir", str(tmp_path / "state"), "eval", "--patients", "2", "--timepoints", "1", "--slices", "60",
        "--json", str(out), "--lesions", str(csv_path),
    ])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    assert rows and list(rows[0]) == list(runner.LESION_COLUMNS)
    assert all(r["key_slice_result"] in ("hit", "box IoU < 0.5", "missed") for r in rows)
    assert "by lesion type" in printed
    assert "synthetic-cohort figures, not clinical" in printed
    assert "85.65%" in printed and "different data" in printed
    result = json.loads(out.read_text())
    s = result["summary"]
    assert result["label"] == "synthetic-cohort figures, not clinical"
    assert s["studies"] == 2 and s["studies_analysed"] == 2
    for kind in ("key_slice", "per_volume"):
        assert set(s["detection"][kind]["sensitivity"]) == {"0.5", "1.0", "2.0", "4.0", "8.0", "16.0"}
        assert s["detection"][kind]["criterion"]
    for key in ("segmentation", "recist", "body_part", "retrieval", "type", "matching"):
        assert key in s
    assert {"dice"} <= set(s["segmentation"])
    assert {"long_axis_mae_mm", "short_axis_mae_mm"} <= set(s["recist"])
    assert -1.0 <= s["body_part"]["spearman"] <= 1.0
    assert {"precision_at_5", "location_error_mm", "size_error_mm"} <= set(s["retrieval"])
    assert "knn_accuracy" in s["type"]
    assert {"precision", "recall", "t1", "t2", "tuned"} <= set(s["matching"])
    assert [t["name"] for t in result["targets"]] and all(t["result"] in ("PASS", "FAIL") for t in result["targets"])
    assert sum(v["lesions"] for v in s["by_type"].values()) == len(rows) == s["truth_lesions"]


def test_read_study_from_a_cohort_folder(tmp_path):
    from node.synth.cohort import write_cohort

    write_cohort(tmp_path, patients=1, timepoints=1, seed=cohort_mod.HELD_OUT_COHORT_SEED, scan=ScanParams(rows=64, columns=64, pixel_spacing=3.0, slice_thickness=5.0, num_slices=12))
    (folder,) = cohort_mod.study_folders(tmp_path)
    study = cohort_mod.read_study(folder)
    direct = synthesize_study(1, 0, scan=ScanParams(rows=64, columns=64, pixel_spacing=3.0, slice_thickness=5.0, num_slices=12), cohort_seed=cohort_mod.HELD_OUT_COHORT_SEED)
    assert study.volume.pixels.shape == direct.hu.shape
    assert np.array_equal(study.lesion_labels, direct.lesion_labels)
    assert [les.lesion_id for les in study.lesions] == [les.lesion_id for les in direct.lesions]
    assert study.pose == pytest.approx(direct.pose, abs=1e-3)


def test_onnx_backend_run_on_one_tiny_study(tmp_path):
    study = next(cohort_mod.synthetic_cohort(patients=1, timepoints=1, num_slices=20))
    backend = OnnxBackend(Settings().model_repository)
    score = runner.evaluate_study(study, runner.DetectorCache(backend))
    assert score.analysed and score.spearman is not None


def test_in_memory_cohort_follows_the_cohort_version():
    # Older versions stay available so that earlier figures can be measured again; a patient
    # whose lesions clash in version 1 gets other lesions in version 2, one with a lymph node
    # out of fat in version 2 gets another place for it in version 3, the default.
    from node.synth.lesions import COHORT_VERSION

    def lesions(version):
        return [
            [(les.lesion_id, les.box) for les in s.lesions]
            for s in cohort_mod.synthetic_cohort(patients=8, timepoints=1, num_slices=40, cohort_version=version)
        ]

    assert lesions(None) == lesions(COHORT_VERSION) == lesions(3)
    assert lesions(1) != lesions(2) != lesions(3)


def test_key_check_gives_the_full_evaluations_key_slice_figures(tmp_path, capsys):
    # `ainode eval --key-check` runs the detector on key images only: the key-slice FROC and each
    # lesion's result must be the full evaluation's, to the digit.
    cohort = list(cohort_mod.synthetic_cohort(patients=2, timepoints=1, seed=0, first_patient=20000, num_slices=50))
    assert sum(len(s.lesions) for s in cohort) >= 2
    backend = OnnxBackend(Settings().model_repository)
    scores = [runner.evaluate_study(s, runner.DetectorCache(backend)) for s in cohort]
    full = runner.summarize(scores, Settings())["detection"]["key_slice"]
    check = runner.key_slice_check(cohort, backend, progress=False)
    assert {k: check["froc"][k] for k in ("sensitivity", "candidates", "images", "lesions")} == {
        k: full[k] for k in ("sensitivity", "candidates", "images", "lesions")
    }
    counted = {r: sum(v[r] for v in check["by_type"].values()) for r in ("hit", "box IoU < 0.5", "missed")}
    rows = [row for score in scores for row in score.lesions]
    assert counted == {r: sum(1 for row in rows if row["key_slice_result"] == r) for r in counted}
    assert sum(v["lesions"] for v in check["by_size"].values()) == len(rows)

    out = tmp_path / "key.json"
    rc = main(["--data-dir", str(tmp_path / "state"), "eval", "--key-check", "--seed", "0", "--first-patient", "20000",
               "--patients", "2", "--timepoints", "1", "--slices", "50", "--json", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "key-slice check (synthetic-cohort figures, not clinical)" in printed and "box IoU < 0.5" in printed
    assert json.loads(out.read_text())["key_check"]["froc"]["sensitivity"] == check["froc"]["sensitivity"]
    assert main(["--data-dir", str(tmp_path / "state"), "eval", "--key-check", "--walk-check"]) == 1
