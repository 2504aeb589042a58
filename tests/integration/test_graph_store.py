"""The lesion graph in a real Postgres (pgvector): tracks, re-sends, late priors, concurrency."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from node.config import Settings
from node.lesions.records import Lesion, LesionType, RecistAxes, ResponseCategory
from node.store.db import Database, migrate
from node.store.lesions import EMBEDDING_DIM, LesionStore, StudyPatientConflict

pytestmark = pytest.mark.integration

SETTINGS = Settings()
RNG = np.random.default_rng(7)
CENTRES = RNG.normal(size=(6, EMBEDDING_DIM))
CENTRES /= np.linalg.norm(CENTRES, axis=1, keepdims=True)


def lesion(index: int, centre: int | None, long_mm: float, *, kind: LesionType = LesionType.LIVER, seed: int = 0) -> Lesion:
    emb = None
    if centre is not None:
        emb = CENTRES[centre] + 0.05 * np.random.default_rng(seed * 100 + index).normal(size=EMBEDDING_DIM) / 8
    return Lesion(
        index=index, key_slice=10, box=(1.0, 2.0, 30.0, 40.0), score=0.9, lesion_type=kind,
        recist=RecistAxes(long_axis_mm=long_mm, short_axis_mm=long_mm / 2,
                          long_axis_endpoints=((1.0, 2.0), (20.0, 2.0)), short_axis_endpoints=((10.0, 0.0), (10.0, 5.0))),
        volume_mm3=1000.0, site=kind.value, embedding=emb,
    )


@pytest.fixture()
def store(fresh_database_url: str) -> Iterator[LesionStore]:
    db = Database(fresh_database_url, max_size=4)
    yield LesionStore(db)
    db.close()


def record(store: LesionStore, key: str, study: str, day: int, lesions: list[Lesion]):
    return store.record_study(
        patient_key=key, study_instance_uid=study, study_date=dt.date(2020, 1, 1) + dt.timedelta(days=day),
        series_instance_uid=study + ".1", lesions=lesions, model_versions={"embedder": "e1", "detector": "d1"},
        settings=SETTINGS,
    )


def test_tracks_follow_lesions_new_and_vanished_and_response(store: LesionStore) -> None:
    base = record(store, "p1", "1.2.3.1", 0, [lesion(0, 0, 40), lesion(1, 1, 20, kind=LesionType.LUNG)])
    assert base.time_point == "baseline" and base.response.category is ResponseCategory.BASELINE
    assert [x.tracking_id for x in base.lesions] == ["L1", "L2"]
    follow = record(store, "p1", "1.2.3.2", 90, [lesion(0, 1, 10, kind=LesionType.LUNG, seed=1), lesion(1, 0, 25, seed=1)])
    assert follow.time_point == "follow-up 1"
    assert [x.tracking_uid for x in follow.lesions] == [base.lesions[1].tracking_uid, base.lesions[0].tracking_uid]
    assert follow.response.category is ResponseCategory.PR  # 35 of 60 mm
    third = record(store, "p1", "1.2.3.3", 180, [lesion(0, 0, 24, seed=2), lesion(1, 2, 12, kind=LesionType.BONE, seed=2)])
    assert third.response.category is ResponseCategory.PD and third.response.new_lesions
    assert third.lesions[1].tracking_id == "L3" and third.lesions[0].tracking_uid == base.lesions[0].tracking_uid
    tracks = store.patient_tracks("p1")
    assert [len(t["lesions"]) for t in tracks["tracks"]] == [3, 2, 1]
    assert [r["category"] for r in tracks["responses"]] == ["baseline", "PR", "PD"]
    assert store.study_lesions("1.2.3.2")["response"]["category"] == "PR"


def test_resent_study_replaces_lesions_and_keeps_uids(store: LesionStore, fresh_database_url: str) -> None:
    first = record(store, "p2", "2.1", 0, [lesion(0, 0, 30), lesion(1, 1, 20)])
    again = record(store, "p2", "2.1", 0, [lesion(0, 0, 30), lesion(1, 1, 20)])
    assert [x.tracking_uid for x in again.lesions] == [x.tracking_uid for x in first.lesions]
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("select count(*) from lesions").fetchone()[0] == 2
        assert conn.execute("select count(*) from embeddings").fetchone()[0] == 2
        assert conn.execute("select count(*) from tracks where retired_at is null").fetchone()[0] == 2


def test_late_prior_rederives_tracks_and_keeps_existing_uids(store: LesionStore) -> None:
    follow = record(store, "p3", "3.2", 100, [lesion(0, 0, 30), lesion(1, 1, 20)])
    assert follow.time_point == "baseline"
    prior = record(store, "p3", "3.1", 0, [lesion(0, 0, 45, seed=5), lesion(1, 2, 20, seed=5)])
    assert prior.time_point == "baseline"
    assert prior.lesions[0].tracking_uid == follow.lesions[0].tracking_uid
    assert prior.lesions[1].tracking_uid not in {x.tracking_uid for x in follow.lesions}
    study = store.study_lesions("3.2")
    assert study["time_point"] == "follow-up 1"
    assert {x["tracking_uid"] for x in study["lesions"]} == {x.tracking_uid for x in follow.lesions}
    assert study["response"]["category"] == "PD"  # centre 1 first seen at follow-up: new lesion


def test_lesion_without_embedding_is_stored_flagged_and_not_matched(store: LesionStore) -> None:
    record(store, "p4", "4.1", 0, [lesion(0, 0, 30)])
    out = record(store, "p4", "4.2", 30, [lesion(0, 0, 30, seed=3), lesion(1, None, 30)])
    assert out.lesions[1].tracking_uid is not None
    assert out.lesions[1].tracking_uid != out.lesions[0].tracking_uid
    assert not out.response.new_lesions and out.response.category is ResponseCategory.SD
    rows = store.study_lesions("4.2")["lesions"]
    assert [r["flags"] for r in rows] == [[], ["no_embedding"]]


def test_changed_patient_id_is_not_guessed(store: LesionStore) -> None:
    record(store, "p5", "5.1", 0, [lesion(0, 0, 30)])
    with pytest.raises(StudyPatientConflict):
        record(store, "p5-other", "5.1", 0, [lesion(0, 0, 30)])
    with pytest.raises(ValueError, match="lesions"):
        store.record_study(patient_key="p5", study_instance_uid="5.9", study_date=None, series_instance_uid="5.9.1",
                           lesions=[lesion(0, None, 10).__class__(**{**lesion(0, 0, 10).__dict__, "embedding": np.zeros(8)})],
                           model_versions={}, settings=SETTINGS)


def test_concurrent_workers_on_one_patient_do_not_corrupt_tracks(store: LesionStore, fresh_database_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(study: str, day: int, seed: int) -> None:
        try:
            barrier.wait()
            record(store, "p6", study, day, [lesion(0, 0, 30, seed=seed), lesion(1, 1, 20, seed=seed)])
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"6.{i}", i * 30, i)) for i in range(1, 5)]
    for t in threads[:2]:
        t.start()
    for t in threads[:2]:
        t.join()
    barrier.reset()
    for t in threads[2:]:
        t.start()
    for t in threads[2:]:
        t.join()
    assert not errors
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("select count(*) from tracks where retired_at is null").fetchone()[0] == 2
        per_track = conn.execute("select count(*) from lesions group by track_id").fetchall()
        assert sorted(r[0] for r in per_track) == [4, 4]


def test_similar_lesions_from_other_patients_with_filters(store: LesionStore) -> None:
    record(store, "q1", "7.1", 0, [lesion(0, 0, 30), lesion(1, 3, 12, kind=LesionType.LUNG)])
    record(store, "q2", "7.2", 0, [lesion(0, 0, 35, seed=9), lesion(1, 4, 50, seed=9, kind=LesionType.LUNG)])
    record(store, "q3", "7.3", 0, [lesion(0, 0, 8, seed=8, kind=LesionType.KIDNEY)])
    query = store.study_lesions("7.1")["lesions"][0]["lesion_id"]
    hits = store.similar(lesion_id=query, k=3)
    assert len(hits) == 3 and all(h["study_instance_uid"] != "7.1" for h in hits)
    assert hits[0]["distance"] <= hits[1]["distance"] <= hits[2]["distance"]
    assert {h["study_instance_uid"] for h in hits[:2]} == {"7.2", "7.3"}
    only_liver = store.similar(lesion_id=query, k=5, lesion_type="liver", min_mm=20)
    assert [h["study_instance_uid"] for h in only_liver] == ["7.2"]
    assert store.similar(lesion_id=query, k=2, exact=True, details=False)[0]["lesion_id"] == hits[0]["lesion_id"]


def test_migrations_are_idempotent_and_keep_data(store: LesionStore, fresh_database_url: str) -> None:
    record(store, "p7", "8.1", 0, [lesion(0, 0, 30)])
    assert migrate(fresh_database_url) == []
    assert store.patient_tracks("p7")["tracks"][0]["tracking_id"] == "L1"


def test_similar_query_can_use_the_hnsw_index(store: LesionStore, fresh_database_url: str) -> None:
    from node.store.db import load_queries
    from node.store.lesions import vector_text

    record(store, "q9", "9.9", 0, [lesion(0, 0, 30)])
    params = {"query": vector_text(CENTRES[0]), "exclude_patient_id": None, "lesion_type": "liver", "site": None,
              "min_mm": 10.0, "max_mm": None, "k": 10}
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("set enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute("explain " + load_queries("lesions")["similar_hnsw"], params))
        assert "embeddings_hnsw" in plan
        exact = "\n".join(r[0] for r in conn.execute("explain " + load_queries("lesions")["similar_exact"], params))
        assert "embeddings_hnsw" not in exact
