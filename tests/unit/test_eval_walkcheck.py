"""`ainode eval --walk-check`: the segmenter's slice walk from truth-placed starts, on the committed models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from node.cli import main
from node.eval import cohort as cohort_mod
from node.eval.walkcheck import LOST_DICE, STARTS, format_walk_check, summarize, walk_check
from node.inference.backend import OnnxBackend

REPO = Path(__file__).resolve().parents[2] / "triton_models"


def test_walks_from_the_key_slice_find_large_lesions_with_the_committed_segmenter():
    studies = list(cohort_mod.synthetic_cohort(patients=6, timepoints=1, seed=0, first_patient=10000))
    large = sum(les.long_axis_mm >= 25 for s in studies for les in s.lesions)
    assert large >= 5, "the test needs several large lesions"
    rows = walk_check(studies, OnnxBackend(REPO, threads=1), min_mm=25)
    assert sorted({r["start"] for r in rows}) == sorted(STARTS)
    assert sum(r["start"] == "key" for r in rows) == large
    key = [r for r in rows if r["start"] == "key"]
    # From its own key slice the committed segmenter follows every large lesion of these
    # validation patients; a segmenter whose mask runs into the organ around fails this.
    assert np.mean([r["dice"] for r in key]) >= 0.8
    assert all(r["dice"] >= LOST_DICE for r in key)
    errors = [abs(r["long_axis_error_mm"]) for r in key]
    assert np.median(errors) <= 3.0
    summary = summarize(rows)
    assert summary["key"]["all"]["lesions"] == large and summary["key"]["all"]["lost"] == 0
    assert "liver hypodense" in summary["key"]["by_kind"]
    text = format_walk_check(summary, 25)
    assert "not clinical" in text and "liver hypodense" in text


def test_summary_counts_lost_walks_and_gross_errors():
    rows = [
        {"type": "liver", "appearance": "hypodense", "start": "key", "dice": 0.9, "long_axis_error_mm": 1.0},
        {"type": "liver", "appearance": "hypodense", "start": "key", "dice": 0.5, "long_axis_error_mm": 30.0},
        {"type": "lung", "appearance": "ground_glass", "start": "key", "dice": 0.0, "long_axis_error_mm": None},
        {"type": "lung", "appearance": "ground_glass", "start": "end", "dice": 0.8, "long_axis_error_mm": -2.0},
    ]
    s = summarize(rows)
    assert s["key"]["all"] == {"lesions": 3, "dice": (0.9 + 0.5) / 3, "long_axis_mae_mm": 15.5, "lost": 1, "gross_errors": 2}
    assert s["end"]["all"]["lost"] == 0 and s["end"]["all"]["long_axis_mae_mm"] == 2.0
    assert s["key"]["by_kind"]["lung ground_glass"]["long_axis_mae_mm"] is None


def test_eval_walk_check_command_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "walk.json"
    rc = main(["--data-dir", str(tmp_path / "state"), "eval", "--walk-check", "--seed", "0", "--first-patient", "10002",
               "--patients", "1", "--timepoints", "1", "--walk-min-mm", "20", "--json", str(out),
               "--walk-png", str(tmp_path / "walks.png")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "synthetic-cohort figures, not clinical" in printed and "validation patients" in printed
    result = json.loads(out.read_text())
    assert result["min_mm"] == 20 and result["walks"]
    assert all(r["long_axis_mm"] >= 20 for r in result["walks"])
    assert set(result["summary"]) == set(STARTS)
    from PIL import Image

    with Image.open(tmp_path / "walks.png") as image:  # one tile per walk (up to 12), 4 to a row
        walks = min(12, len(result["walks"]))
        assert image.size == (min(4, walks) * 180, ((walks + 3) // 4) * 210)


def test_eval_walk_check_on_the_held_out_cohort_warns_against_choosing_by_it(tmp_path, capsys):
    rc = main(["--data-dir", str(tmp_path / "state"), "eval", "--walk-check", "--patients", "1", "--timepoints", "1",
               "--walk-min-mm", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "warning: this is the held-out cohort" in printed and "--first-patient 10000" in printed
