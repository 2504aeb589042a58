"""The lesion graph's HTTP routes and CLI commands against a real Postgres."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.api import dispatch
from node.cli import main
from node.config import Settings
from node.lesions.api import lesion_routes
from node.lesions.identity import load_secret, patient_key
from node.lesions.records import Lesion, LesionType, RecistAxes
from node.store.db import Database
from node.store.lesions import EMBEDDING_DIM, LesionStore

pytestmark = pytest.mark.integration


def _lesion(index: int, emb: np.ndarray, long_mm: float) -> Lesion:
    return Lesion(
        index=index, key_slice=3, box=(0.0, 0.0, 9.0, 9.0), score=0.8, lesion_type=LesionType.LIVER,
        recist=RecistAxes(long_axis_mm=long_mm, short_axis_mm=long_mm / 2,
                          long_axis_endpoints=((0.0, 0.0), (9.0, 0.0)), short_axis_endpoints=((4.0, 0.0), (4.0, 4.0))),
        volume_mm3=500.0, site="liver", embedding=emb,
    )


@pytest.fixture()
def populated(fresh_database_url: str, tmp_path: Path):
    settings = Settings(database_url=fresh_database_url, data_dir=tmp_path)
    key = patient_key(patient_id="PID-42", secret=load_secret(tmp_path))
    other = patient_key(patient_id="PID-43", secret=load_secret(tmp_path))
    rng = np.random.default_rng(1)
    centre = rng.normal(size=EMBEDDING_DIM)
    centre /= np.linalg.norm(centre)
    db = Database(fresh_database_url)
    store = LesionStore(db)
    for day, size in ((0, 40.0), (60, 20.0)):
        store.record_study(
            patient_key=key, study_instance_uid=f"9.{day}", study_date=dt.date(2021, 1, 1) + dt.timedelta(days=day),
            series_instance_uid=f"9.{day}.1", lesions=[_lesion(0, centre + 0.01 * rng.normal(size=EMBEDDING_DIM) / 8, size)],
            model_versions={"embedder": "e"}, settings=settings,
        )
    store.record_study(
        patient_key=other, study_instance_uid="9.500", study_date=None, series_instance_uid="9.500.1",
        lesions=[_lesion(0, centre + 0.02 * rng.normal(size=EMBEDDING_DIM) / 8, 33.0)], model_versions={}, settings=settings,
    )
    yield settings, store, key
    db.close()


def test_routes_answer_tracks_chart_study_lesion_and_similar(populated) -> None:
    settings, store, key = populated
    routes = lesion_routes(store)
    tracks = json.loads(dispatch(routes, "GET", f"/ainode/patients/{key}/tracks", {}, b"").body)
    assert [len(t["lesions"]) for t in tracks["tracks"]] == [2]
    assert [r["category"] for r in tracks["responses"]] == ["baseline", "PR"]
    png = dispatch(routes, "GET", f"/ainode/patients/{key}/tracks.png", {}, b"")
    assert png.content_type == "image/png" and Image.open(io.BytesIO(png.body)).size == (800, 480)
    study = json.loads(dispatch(routes, "GET", "/ainode/studies/9.60/lesions", {}, b"").body)
    assert study["time_point"] == "follow-up 1" and study["response"]["category"] == "PR"
    lesion_id = study["lesions"][0]["lesion_id"]
    one = json.loads(dispatch(routes, "GET", f"/ainode/lesions/{lesion_id}", {}, b"").body)
    assert one["tracking_id"] == "L1"
    similar = json.loads(dispatch(routes, "GET", f"/ainode/lesions/{lesion_id}/similar", {"k": "1"}, b"").body)
    assert [h["study_instance_uid"] for h in similar["similar"]] == ["9.500"]
    assert dispatch(routes, "GET", "/ainode/patients/nobody/tracks", {}, b"").status == 404
    assert dispatch(routes, "GET", f"/ainode/lesions/{lesion_id}/similar", {"k": "x"}, b"").status == 400
    assert dispatch(routes, "GET", f"/ainode/lesions/{lesion_id}/similar", {"type": "brain"}, b"").status == 400


def test_cli_tracks_and_similar(populated, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, store, key = populated
    monkeypatch.setenv("AINODE_DATABASE_URL", settings.database_url)
    chart = tmp_path / "chart.png"
    assert main(["--data-dir", str(settings.data_dir), "tracks", "PID-42", "--png", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "L1" in out and "PR" in out and "PID-42" not in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lesion_id = store.study_lesions("9.0")["lesions"][0]["lesion_id"]
    assert main(["similar", str(lesion_id), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["study_instance_uid"] == "9.500"
    assert main(["--data-dir", str(settings.data_dir), "tracks", "PID-unknown"]) == 1
