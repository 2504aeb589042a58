"""`ainode train` end to end on a tiny synthetic cohort: ONNX files, configs and model cards appear."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from node.cli import main
from node.inference.backend import MODEL_NAMES, OnnxBackend
from node.training import commands, export


def test_train_all_writes_a_servable_repository(tmp_path: Path) -> None:
    out = tmp_path / "models"
    rc = main(["train", "all", "--patients", "4", "--val-patients", "1", "--scale", "0.05", "--ssbr-steps", "200",
               "--detector-epochs", "20", "--segmenter-epochs", "20", "--segmenter-mask-cut", "0.35", "--threads", "1", "--out", str(out)])
    assert rc == 0
    backend = OnnxBackend(out)
    versions = backend.model_versions()
    assert set(versions) == set(MODEL_NAMES)
    # date-seed, then a weights digest each; each model's seed is its committed recipe's
    assert {name: v.rsplit("-", 1)[0].split("-")[1] for name, v in versions.items()} == {
        "body_part_regressor": "seed1", "lesion_detector": "seed0", "lesion_segmenter": "seed0", "lesion_embedder": "seed0"}
    for name in MODEL_NAMES:
        card = json.loads((out / "cards" / f"{name}.json").read_text())
        assert card["figures"] and card["version"] == versions[name]
        assert card["trained_with"]["threads"] == 1 and card["trained_with"]["cpu_capability"]  # what the last bits depend on
        assert (out / "cpu" / name / "config.pbtxt").is_file() and (out / "gpu" / name / "config.pbtxt").is_file()
    # The segmenter's cut travels with its weights: ONNX metadata, both Triton configs, its card.
    assert backend.model_parameters("lesion_segmenter") == {"mask_threshold": "0.35"}
    assert all(backend.model_parameters(name) == {} for name in MODEL_NAMES if name != "lesion_segmenter")
    for variant in ("cpu", "gpu"):
        assert 'key: "ainode_mask_threshold"\n  value: { string_value: "0.35" }' in (out / variant / "lesion_segmenter" / "config.pbtxt").read_text()
    assert json.loads((out / "cards" / "lesion_segmenter.json").read_text())["runtime"] == {"mask_threshold": "0.35"}
    # The detector trains on 256x256 studies only, the others on the mixed cohort (_medium_every).
    assert "every training patient at 256x256" in json.loads((out / "cards" / "lesion_detector.json").read_text())["data"]
    assert "every 3-th training patient at 256x256" in json.loads((out / "cards" / "lesion_segmenter.json").read_text())["data"]
    score = backend.infer("body_part_regressor", {"image": np.zeros((2, 1, 64, 64), np.float32)})["score"]
    assert score.shape == (2, 1) and np.isfinite(score).all()
    # Each model is seeded afresh: trained alone, a model gets the weights `train all` gave it.
    alone = tmp_path / "alone"
    assert main(["train", "ssbr", "--patients", "4", "--val-patients", "1", "--scale", "0.05", "--ssbr-steps", "200",
                 "--threads", "1", "--out", str(alone)]) == 0
    assert OnnxBackend(alone).model_versions()["body_part_regressor"] == versions["body_part_regressor"]


def test_train_rejects_unknown_models(capsys) -> None:
    assert main(["train", "lesion_classifier"]) == 1
    assert "lesion_classifier" in capsys.readouterr().err


def test_training_the_embedder_alone_needs_the_body_part_regressor_in_the_repository(tmp_path: Path, capsys) -> None:
    # The embedder's z cue comes from the SSBR read from --out: a fresh folder says so and how to
    # fix it before any cohort is drawn, rather than "model_dir ... is not a folder" minutes later.
    assert main(["train", "embedder", "--out", str(tmp_path / "scratch")]) == 1
    err = capsys.readouterr().err
    assert "body_part_regressor.onnx" in err and "ainode train ssbr,embedder" in err and "cp -r triton_models" in err
    assert not (tmp_path / "scratch").exists()


def test_train_all_runs_two_lanes_and_each_model_keeps_its_committed_recipe() -> None:
    # The embedder reads the body-part regressor's ONNX, so the two share a lane, in that order.
    assert commands._lanes(commands.MODELS, 2) == [
        ("body_part_regressor", "lesion_embedder", "lesion_detector"), ("lesion_segmenter",)]
    assert commands._lanes(("lesion_detector", "lesion_embedder"), 2) == [("lesion_embedder", "lesion_detector")]
    assert commands._lanes(commands.MODELS, 1) == [commands.MODELS]
    args = commands.argparse.Namespace(seed=None, patients=None, cohort_version=None, segmenter_mask_cut=None)
    assert commands._recipe(args, "seed", "body_part_regressor") == 1 and commands._recipe(args, "seed", "lesion_detector") == 0
    assert commands._recipe(args, "patients", "lesion_segmenter") == 240 and commands._recipe(args, "patients", "lesion_embedder") == 160
    assert commands._recipe(args, "cohort_version", "lesion_segmenter") == 1 and commands._recipe(args, "cohort_version", "lesion_detector") == 3
    assert commands._recipe(args, "segmenter_mask_cut", "lesion_segmenter") == 0.35
    given = commands.argparse.Namespace(seed=7, patients=20, cohort_version=2, segmenter_mask_cut=0.4)  # given: for every model
    assert [commands._recipe(given, o, "lesion_segmenter") for o in ("seed", "patients", "cohort_version", "segmenter_mask_cut")] == [7, 20, 2, 0.4]


def test_a_run_says_how_its_weights_compare_with_the_committed_ones(tmp_path: Path) -> None:
    # Across CPUs the same command gives other weights (the kernels round differently): each run
    # says whether it got the committed weights, and if not, both sets' validation figures.
    committed, new = tmp_path / "committed", tmp_path / "new"
    for repo, ssbr, segmenter in ((committed, "20261128-seed1-925d4f03", "20261127-seed0-88d94157"),
                                  (new, "20261129-seed1-925d4f03", "20261129-seed0-50514862")):
        (repo / "cards").mkdir(parents=True)
        (repo / "cards" / "body_part_regressor.json").write_text(json.dumps({"version": ssbr, "figures": {"median_r_slice_index": 0.99}}))
        dice = 0.808 if repo is committed else 0.827
        (repo / "cards" / "lesion_segmenter.json").write_text(json.dumps({"version": segmenter, "figures": {"val_key_slice_dice_mean": dice}}))
    lines = commands.compare_with_committed(new, ("body_part_regressor", "lesion_segmenter", "lesion_detector"), committed)
    assert lines[1] == "  body_part_regressor: the same weights (925d4f03)"
    assert lines[2].startswith("  lesion_segmenter: other weights (88d94157 -> 50514862); validation val_key_slice_dice_mean 0.808 -> 0.827")
    assert lines[3] == "  lesion_detector: no card to compare with"
    assert commands.compare_with_committed(committed, ("body_part_regressor",), committed) == []  # retrained in place: nothing to compare
    assert export.version_digest("20261126-seed0-1d4a90a1+flip") == "1d4a90a1"


def test_a_lane_reports_each_model_once_not_its_progress_bars(tmp_path: Path) -> None:
    log = tmp_path / "lane2.log"
    log.write_text("lesion_segmenter: synthetic cohort:  99%|#| 239/240\rlesion_segmenter: synthetic cohort: 100%|#| 240/240\n"
                   "segmenter:  63%|######| 3678/5860\nlesion_segmenter: 1863 s, final_loss=0.168, val_key_slice_dice_mean=0.827\n")
    assert commands._model_lines(log) == ["lesion_segmenter: 1863 s, final_loss=0.168, val_key_slice_dice_mean=0.827"]
