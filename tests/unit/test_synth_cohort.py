"""`ainode synth` and `ainode inspect` end to end on a tiny cohort; DICOM validity of every option."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synth_helpers import dciodvfy_errors

from node.cli import main
from node.synth.phantom import ScanParams, synthesize_study
from node.synth.truth import ORGAN_LABELS
from node.synth.writer import write_ct_series


def test_synth_then_inspect(tmp_path: Path, capsys):
    out = tmp_path / "cohort"
    assert main(["--data-dir", str(tmp_path / "state"), "synth", "--patients", "1", "--timepoints", "2", "--seed", "4", "--small", "--out", str(out)]) == 0
    studies = sorted(out.glob("SYN0001/T*"))
    assert len(studies) == 2
    truths = [json.loads((s / "truth.json").read_text()) for s in studies]
    assert truths[0]["study_date"] < truths[1]["study_date"]
    assert {lesion["track_id"] for lesion in truths[0]["lesions"]} & {lesion["track_id"] for lesion in truths[1]["lesions"]}
    assert set(truths[0]["regions"]) <= {"chest", "abdomen", "pelvis"}
    masks = np.load(studies[0] / "masks.npz")
    assert masks["lesion_labels"].max() == len(truths[0]["lesions"])
    capsys.readouterr()
    assert main(["--data-dir", str(tmp_path / "state"), "inspect", "--json", str(studies[0] / "CT")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == []
    (volume,) = report["volumes"]
    assert volume["shape"] == truths[0]["shape"]
    assert np.allclose(volume["affine"], truths[0]["affine"], atol=1e-3)


def test_inspect_explains_a_skipped_study(tmp_path: Path, capsys):
    (tmp_path / "readme.txt").write_text("not an image")
    assert main(["--data-dir", str(tmp_path / "state"), "inspect", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "not-dicom" in text and "would skip this study" in text
    assert main(["--data-dir", str(tmp_path / "state"), "inspect", str(tmp_path / "nowhere")]) == 1


@pytest.mark.parametrize(("syntax", "enhanced"), [("jpeg-ls", False), ("rle", False), ("jpeg2000", True), ("explicit", True)])
def test_every_writer_option_passes_dciodvfy(tmp_path: Path, syntax: str, enhanced: bool):
    study = synthesize_study(2, 0, scan=ScanParams.small(num_slices=3))
    paths = write_ct_series(study, tmp_path, transfer_syntax=syntax, enhanced=enhanced)
    assert dciodvfy_errors(paths[0]) == []


def test_patients_differ_and_lesions_cover_all_types():
    seen = set()
    widths = []
    for p in range(1, 9):
        s = synthesize_study(p, 0, scan=ScanParams.small())
        seen |= {lesion.lesion_type for lesion in s.lesions}
        mid = s.organ_labels[s.hu.shape[0] // 2]
        body = (mid > 0) & (mid != ORGAN_LABELS["table"])
        widths.append(int(body.any(axis=0).sum()))
    assert len(seen) >= 6
    assert max(widths) - min(widths) >= 5
