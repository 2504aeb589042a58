"""Exact search, recall@k and the track chart."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from node.lesions.plot import track_chart_png
from node.lesions.retrieval import exact_top_k, recall_at_k


def test_exact_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(5, 16)).astype(np.float32)
    got = exact_top_k(emb, queries, 7)
    for q, row in zip(queries, got, strict=True):
        assert row.tolist() == np.argsort(np.linalg.norm(emb - q, axis=1))[:7].tolist()
    with pytest.raises(ValueError, match="k"):
        exact_top_k(emb, queries, 0)


def test_recall_at_k() -> None:
    assert recall_at_k([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5, 9]]) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="approximate"):
        recall_at_k([[1]], [])


def test_chart_draws_each_track_and_the_response() -> None:
    lesion = {"study_instance_uid": "1", "study_date": "2020-01-01", "time_point": "baseline", "long_axis_mm": 30.0}
    follow = {"study_instance_uid": "2", "study_date": "2020-03-01", "time_point": "follow-up 1", "long_axis_mm": 12.0}
    patient = {
        "tracks": [{"tracking_id": "L1", "lesions": [lesion, follow]}],
        "responses": [{"study_instance_uid": "1", "time_point": "baseline", "category": "baseline"},
                      {"study_instance_uid": "2", "time_point": "follow-up 1", "category": "PR"}],
    }
    image = Image.open(io.BytesIO(track_chart_png(patient, width=400, height=300))).convert("RGB")
    assert image.size == (400, 300)
    colours = {c for _, c in image.getcolors(100000)}
    assert (31, 119, 180) in colours  # the first track's line
    blank = Image.open(io.BytesIO(track_chart_png({"tracks": [], "responses": []}))).convert("RGB")
    assert (31, 119, 180) not in {c for _, c in blank.getcolors(100000)}
    with pytest.raises(ValueError, match="width"):
        track_chart_png(patient, width=10)
