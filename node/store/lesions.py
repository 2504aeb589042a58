"""The lesion graph in Postgres: lesions, embeddings (pgvector), tracks and RECIST responses.

Every database call about lesions goes through :class:`LesionStore`; the SQL is in
``sql/queries/lesions.sql``. A patient's graph is re-derived as a whole (Algorithm 1 over all of
the patient's lesions) each time one of the patient's studies is recorded, under a per-patient
advisory lock, so that workers finishing two studies of one patient at once cannot interleave,
a prior that arrives after its follow-up reshapes the tracks, and a study sent again replaces
its own lesions. Existing tracks keep their tracking UIDs; new UIDs are minted only for groups
that inherit no track.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb
from pydicom.uid import generate_uid

from node.config import Settings
from node.lesions.matching import assign_tracks, match_lesions
from node.lesions.records import Lesion, LesionType, ResponseAssessment, ResponseCategory
from node.lesions.response import TrackMeasurement, assess_studies, is_lymph_node
from node.store.db import Database, load_queries

logger = logging.getLogger(__name__)

__all__ = ["EMBEDDING_DIM", "LesionStore", "StudyPatientConflict", "StudyTracking"]

EMBEDDING_DIM = 32  # the lesion embedder's output; sql/migrations/011 sets the column (tested)
NO_EMBEDDING = "no_embedding"
DEFAULT_EF_SEARCH = 500


class StudyPatientConflict(RuntimeError):
    """A study already recorded under another patient key (the Patient ID changed).

    The node does not guess that two Patient IDs are one person: the study is refused until
    the old record is removed or the IDs are reconciled in the PACS.
    """


@dataclass(frozen=True, kw_only=True)
class StudyTracking:
    """What recording a study gives back to the worker for the SEG and the SR."""

    lesions: list[Lesion]
    response: ResponseAssessment | None
    time_point: str


def _q() -> dict[str, str]:
    return load_queries("lesions")


def vector_text(embedding: np.ndarray) -> str:
    """pgvector's text form of an embedding."""
    return "[" + ",".join(repr(float(x)) for x in np.asarray(embedding, dtype=np.float32).ravel()) + "]"


def _usable_embedding(lesion: Lesion) -> np.ndarray | None:
    if lesion.embedding is None:
        return None
    emb = np.asarray(lesion.embedding, dtype=np.float64).ravel()
    if emb.size != EMBEDDING_DIM:
        raise ValueError(
            f"lesions: lesion {lesion.index} has a {emb.size}-d embedding; the lesion graph stores "
            f"{EMBEDDING_DIM}-d embeddings (add a migration to change the dimension)"
        )
    if not np.all(np.isfinite(emb)):
        return None
    return emb


def time_point_name(index: int) -> str:
    """'baseline' for the first study of a patient, 'follow-up N' for the N-th later one."""
    return "baseline" if index == 0 else f"follow-up {index}"


def _greedy_pairs(old: np.ndarray, new: np.ndarray, limit: float) -> list[tuple[int, int]]:
    if old.size == 0 or new.size == 0:
        return []
    d = np.linalg.norm(old[:, None, :] - new[None, :, :], axis=-1)
    pairs: list[tuple[int, int]] = []
    used_old: set[int] = set()
    used_new: set[int] = set()
    for flat in np.argsort(d, axis=None):
        i, j = divmod(int(flat), d.shape[1])
        if d[i, j] > limit:
            break
        if i in used_old or j in used_new:
            continue
        pairs.append((i, j))
        used_old.add(i)
        used_new.add(j)
    return pairs


class LesionStore:
    """The lesion graph's one connector to Postgres."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- writing -----------------------------------------------------------------------------

    def record_study(
        self,
        *,
        patient_key: str,
        study_instance_uid: str,
        study_date: dt.date | None,
        series_instance_uid: str,
        lesions: Sequence[Lesion],
        model_versions: Mapping[str, str],
        settings: Settings,
    ) -> StudyTracking:
        """Store a study's lesions and re-derive the patient's tracks and responses.

        Idempotent for a study sent again: its earlier lesions are replaced and the tracks
        they were in are kept. Lesions without a usable embedding are stored with the flag
        ``no_embedding`` and get a track of their own, never matched.

        Returns
        -------
        StudyTracking
            the lesions in the given order with ``tracking_id`` and ``tracking_uid`` set, the
            study's RECIST assessment and its time point.
        """
        if not patient_key:
            raise ValueError("patient_key: must not be empty")
        if not study_instance_uid:
            raise ValueError("study_instance_uid: must not be empty")
        if not series_instance_uid:
            raise ValueError("series_instance_uid: must not be empty")
        embeddings = [_usable_embedding(lesion) for lesion in lesions]
        q = _q()
        with self.db.connection() as conn, conn.transaction():
            conn.execute(q["lock_patient"], {"patient_key": patient_key})
            patient_id = conn.execute(q["upsert_patient"], {"patient_key": patient_key}).fetchone()["id"]
            study = conn.execute(
                q["upsert_study"],
                {"patient_id": patient_id, "study_instance_uid": study_instance_uid, "study_date": study_date},
            ).fetchone()
            if study["patient_id"] != patient_id:
                raise StudyPatientConflict(
                    f"study {study_instance_uid} is already recorded for another patient key; "
                    "the node does not merge patients whose Patient ID changed"
                )
            study_id = study["id"]
            series_id = conn.execute(
                q["upsert_series"],
                {"study_id": study_id, "series_instance_uid": series_instance_uid, "model_versions": Jsonb(dict(model_versions))},
            ).fetchone()["id"]

            old = conn.execute(q["study_lesions_before_replace"], {"study_id": study_id}).fetchall()
            conn.execute(q["delete_study_lesions"], {"study_id": study_id})
            lesion_ids = self._insert_lesions(conn, patient_id, study_id, series_id, lesions, embeddings, model_versions)
            carried = self._carry_tracks(old, lesion_ids, embeddings, settings.match_t2)

            track_of = self._rematch(conn, patient_id, carried, settings)
            time_points, assessments = self._derive_time_points_and_responses(conn, patient_id)

        tracks = {row_id: track_of[row_id] for row_id in lesion_ids}
        out = [
            replace(lesion, tracking_id=tracks[row_id][1], tracking_uid=tracks[row_id][0])
            for lesion, row_id in zip(lesions, lesion_ids, strict=True)
        ]
        logger.debug(
            "recorded study %s: %d lesions, %d without embedding, %s",
            study_instance_uid, len(out), sum(e is None for e in embeddings), time_points[study_id],
        )
        return StudyTracking(lesions=out, response=assessments.get(study_id), time_point=time_points[study_id])

    def _insert_lesions(
        self,
        conn: Any,
        patient_id: int,
        study_id: int,
        series_id: int,
        lesions: Sequence[Lesion],
        embeddings: Sequence[np.ndarray | None],
        model_versions: Mapping[str, str],
    ) -> list[int]:
        q = _q()
        rows = []
        for lesion, emb in zip(lesions, embeddings, strict=True):
            recist = lesion.recist
            rows.append(
                {
                    "patient_id": patient_id,
                    "study_id": study_id,
                    "series_id": series_id,
                    "lesion_index": lesion.index,
                    "key_slice": lesion.key_slice,
                    "box": [float(v) for v in lesion.box],
                    "long_axis_mm": recist.long_axis_mm if recist else None,
                    "short_axis_mm": recist.short_axis_mm if recist else None,
                    "long_axis_endpoints": [float(v) for p in recist.long_axis_endpoints for v in p] if recist else None,
                    "short_axis_endpoints": [float(v) for p in recist.short_axis_endpoints for v in p] if recist else None,
                    "volume_mm3": lesion.volume_mm3,
                    "lesion_type": LesionType(lesion.lesion_type).value,
                    "site": lesion.site,
                    "body_part_score": lesion.body_part_score,
                    "score": float(lesion.score),
                    "center_patient": list(lesion.center_patient) if lesion.center_patient else None,
                    "model_versions": Jsonb(dict(model_versions)),
                    "flags": [] if emb is not None else [NO_EMBEDDING],
                }
            )
        ids: list[int] = []
        if rows:
            with conn.cursor() as cur:
                cur.executemany(q["insert_lesion"], rows, returning=True)
                while True:
                    ids.append(cur.fetchone()["id"])
                    if not cur.nextset():
                        break
        emb_rows = [
            {
                "lesion_id": lesion_id,
                "patient_id": patient_id,
                "lesion_type": row["lesion_type"],
                "site": row["site"],
                "long_axis_mm": row["long_axis_mm"],
                "model_version": model_versions.get("embedder"),
                "embedding": vector_text(emb),
            }
            for lesion_id, row, emb in zip(ids, rows, embeddings, strict=True)
            if emb is not None
        ]
        if emb_rows:
            with conn.cursor() as cur:
                cur.executemany(q["insert_embedding"], emb_rows)
        return ids

    @staticmethod
    def _carry_tracks(
        old: Sequence[Mapping[str, Any]], new_ids: Sequence[int], embeddings: Sequence[np.ndarray | None], limit: float
    ) -> dict[int, int]:
        """Tracks of a re-sent study's earlier lesions, handed to the nearest new lesions."""
        old = [r for r in old if r["embedding"] is not None]
        new = [(lid, e) for lid, e in zip(new_ids, embeddings, strict=True) if e is not None]
        if not old or not new:
            return {}
        old_emb = np.array([r["embedding"] for r in old], dtype=np.float64)
        new_emb = np.array([e for _, e in new], dtype=np.float64)
        return {new[j][0]: old[i]["track_id"] for i, j in _greedy_pairs(old_emb, new_emb, limit)}

    def _rematch(self, conn: Any, patient_id: int, carried: Mapping[int, int], settings: Settings) -> dict[int, tuple[str, str]]:
        """Algorithm 1 over all the patient's lesions; returns lesion id -> (tracking UID, ID)."""
        q = _q()
        rows = conn.execute(q["patient_lesions"], {"patient_id": patient_id}).fetchall()
        studies = conn.execute(q["patient_studies"], {"patient_id": patient_id}).fetchall()
        study_rank = {s["id"]: i for i, s in enumerate(studies)}
        matched = [r for r in rows if r["embedding"] is not None]
        unmatched = [r for r in rows if r["embedding"] is None]
        labels = np.zeros(len(rows), dtype=np.int64)
        if matched:
            labels[: len(matched)] = match_lesions(
                np.array([r["embedding"] for r in matched], dtype=np.float64),
                np.array([r["study_id"] for r in matched]),
                t1=settings.match_t1,
                t2=settings.match_t2,
            )
        start = int(labels[: len(matched)].max()) + 1 if matched else 0
        labels[len(matched) :] = np.arange(start, start + len(unmatched))
        ordered = matched + unmatched
        previous = np.array(
            [carried.get(r["id"], r["track_id"] if r["track_id"] is not None else -1) for r in ordered], dtype=np.int64
        )
        existing = conn.execute(q["patient_tracks"], {"patient_id": patient_id}).fetchall()
        mapping = assign_tracks(labels, previous)
        by_id = {t["id"]: (t["tracking_uid"], t["tracking_id"]) for t in existing}
        used_names = {t["tracking_id"] for t in existing}
        next_number = len(existing) + 1
        # New tracks are numbered in order of first appearance.
        first_seen: dict[int, tuple[int, int]] = {}
        for label, r in zip(labels.tolist(), ordered, strict=True):
            key = (study_rank[r["study_id"]], r["id"])
            if label not in first_seen or key < first_seen[label]:
                first_seen[label] = key
        track_of_label: dict[int, int] = dict(mapping)
        for label in sorted(set(labels.tolist()) - set(mapping), key=lambda g: first_seen[g]):
            while f"L{next_number}" in used_names:
                next_number += 1
            name = f"L{next_number}"
            used_names.add(name)
            uid = generate_uid()
            track_id = conn.execute(
                q["insert_track"], {"patient_id": patient_id, "tracking_uid": uid, "tracking_id": name}
            ).fetchone()["id"]
            by_id[track_id] = (uid, name)
            track_of_label[label] = track_id
        lesion_ids = [r["id"] for r in ordered]
        track_ids = [track_of_label[label] for label in labels.tolist()]
        conn.execute(q["set_lesion_tracks"], {"lesion_ids": lesion_ids, "track_ids": track_ids})
        conn.execute(q["retire_empty_tracks"], {"patient_id": patient_id})
        return {lid: by_id[tid] for lid, tid in zip(lesion_ids, track_ids, strict=True)}

    def _derive_time_points_and_responses(
        self, conn: Any, patient_id: int
    ) -> tuple[dict[int, str], dict[int, ResponseAssessment]]:
        q = _q()
        studies = conn.execute(q["patient_studies"], {"patient_id": patient_id}).fetchall()
        names = {s["id"]: time_point_name(i) for i, s in enumerate(studies)}
        conn.execute(
            q["set_time_points"],
            {
                "study_ids": [s["id"] for s in studies],
                "time_points": [names[s["id"]] for s in studies],
                "time_indices": list(range(len(studies))),
            },
        )
        rows = conn.execute(
            q["lesion_rows"], {"patient_id": patient_id, "study_instance_uid": None, "lesion_id": None}
        ).fetchall()
        per_study: dict[str, list[TrackMeasurement]] = {s["study_instance_uid"]: [] for s in studies}
        for r in rows:
            if r["tracking_uid"] is None or r["long_axis_mm"] is None:
                continue
            per_study[r["study_instance_uid"]].append(
                TrackMeasurement(
                    tracking_uid=r["tracking_uid"],
                    long_axis_mm=float(r["long_axis_mm"]),
                    short_axis_mm=float(r["short_axis_mm"] or 0.0),
                    organ=r["site"] or r["lesion_type"],
                    lymph_node=is_lymph_node(lesion_type=r["lesion_type"], site=r["site"]),
                    flagged=NO_EMBEDDING in (r["flags"] or []),
                )
            )
        assessments = assess_studies([(s["study_instance_uid"], per_study[s["study_instance_uid"]]) for s in studies])
        result: dict[int, ResponseAssessment] = {}
        for s, a in zip(studies, assessments, strict=True):
            conn.execute(
                q["upsert_response"],
                {
                    "study_id": s["id"],
                    "category": a.category.value,
                    "sum_of_diameters_mm": a.sum_of_diameters_mm,
                    "baseline_sum_mm": a.baseline_sum_mm,
                    "nadir_sum_mm": a.nadir_sum_mm,
                    "change_from_baseline_pct": a.change_from_baseline_pct,
                    "change_from_nadir_pct": a.change_from_nadir_pct,
                    "new_lesions": a.new_lesions,
                    "target_tracking_uids": list(a.target_tracking_uids),
                    "baseline_study_uid": a.baseline_study_uid,
                },
            )
            result[s["id"]] = a
        return names, result

    def bulk_load_embeddings(
        self,
        *,
        patient_keys: Sequence[str],
        lesion_patient: np.ndarray,
        embeddings: np.ndarray,
        lesion_types: Sequence[str],
        long_axis_mm: np.ndarray,
    ) -> int:
        """Load many lesions with embeddings by COPY (one synthetic study per patient).

        For benchmarks and imports; tracks and responses are not derived. Returns the number
        of lesions loaded.
        """
        n = embeddings.shape[0]
        if embeddings.ndim != 2 or embeddings.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"embeddings: expected shape (n, {EMBEDDING_DIM}), got {embeddings.shape}")
        if lesion_patient.shape != (n,) or long_axis_mm.shape != (n,) or len(lesion_types) != n:
            raise ValueError("lesion_patient: lesion_patient, lesion_types and long_axis_mm need one entry per embedding")
        with self.db.connection() as conn, conn.transaction():
            ids = {}
            for key in patient_keys:
                pid = conn.execute(_q()["upsert_patient"], {"patient_key": key}).fetchone()["id"]
                sid = conn.execute(
                    _q()["upsert_study"],
                    {"patient_id": pid, "study_instance_uid": generate_uid(), "study_date": None},
                ).fetchone()["id"]
                seid = conn.execute(
                    _q()["upsert_series"],
                    {"study_id": sid, "series_instance_uid": generate_uid(), "model_versions": Jsonb({})},
                ).fetchone()["id"]
                ids[key] = (pid, sid, seid)
            first = conn.execute("select nextval('lesions_id_seq') as v").fetchone()["v"]
            conn.execute("select setval('lesions_id_seq', %s)", (first + n,))
            lesion_ids = np.arange(first, first + n)
            keys = [patient_keys[i] for i in lesion_patient.tolist()]
            buf = io.StringIO()
            for k, (lid, key, kind, size) in enumerate(zip(lesion_ids.tolist(), keys, lesion_types, long_axis_mm.tolist(), strict=True)):
                pid, sid, seid = ids[key]
                buf.write(f"{lid}\t{pid}\t{sid}\t{seid}\t{k}\t0\t{{0,0,1,1}}\t{size}\t{kind}\t0.9\n")
            with conn.cursor().copy(
                "copy lesions (id, patient_id, study_id, series_id, lesion_index, key_slice, box, long_axis_mm, lesion_type, score) from stdin"
            ) as copy:
                copy.write(buf.getvalue())
            buf = io.StringIO()
            for lid, key, kind, size, emb in zip(lesion_ids.tolist(), keys, lesion_types, long_axis_mm.tolist(), embeddings, strict=True):
                pid = ids[key][0]
                buf.write(f"{lid}\t{pid}\t{kind}\t{size}\t{vector_text(emb)}\n")
            with conn.cursor().copy("copy embeddings (lesion_id, patient_id, lesion_type, long_axis_mm, embedding) from stdin") as copy:
                copy.write(buf.getvalue())
        return n

    def rebuild_embedding_index(self, *, drop: bool, maintenance_work_mem: str = "1GB") -> None:
        """Drop the HNSW index before a bulk load (``drop=True``) and build it after (``drop=False``)."""
        with self.db.connection() as conn, conn.transaction():
            if drop:
                conn.execute(_q()["drop_embedding_index"])
                return
            conn.execute("select set_config('maintenance_work_mem', %s, true)", (maintenance_work_mem,))
            conn.execute(_q()["create_embedding_index"])
            conn.execute("analyze embeddings")

    # -- reading -----------------------------------------------------------------------------

    def patient_id(self, patient_key: str) -> int | None:
        with self.db.connection() as conn:
            row = conn.execute(_q()["patient_id_by_key"], {"patient_key": patient_key}).fetchone()
        return None if row is None else row["id"]

    def patient_tracks(self, patient_key: str) -> dict[str, Any] | None:
        """A patient's tracks, each with its lesions over time, and the responses; None if unknown."""
        q = _q()
        with self.db.connection() as conn:
            row = conn.execute(q["patient_id_by_key"], {"patient_key": patient_key}).fetchone()
            if row is None:
                return None
            rows = conn.execute(q["lesion_rows"], {"patient_id": row["id"], "study_instance_uid": None, "lesion_id": None}).fetchall()
            responses = conn.execute(q["patient_responses"], {"patient_id": row["id"]}).fetchall()
        tracks: dict[str, dict[str, Any]] = {}
        for r in rows:
            track = tracks.setdefault(
                r["tracking_uid"] or f"untracked-{r['id']}",
                {"tracking_uid": r["tracking_uid"], "tracking_id": r["tracking_id"], "lesions": []},
            )
            track["lesions"].append(_lesion_json(r))
        return {
            "patient_key": patient_key,
            "tracks": sorted(tracks.values(), key=lambda t: _track_order(t["tracking_id"])),
            "responses": [_response_json(r) for r in responses],
        }

    def study_lesions(self, study_instance_uid: str) -> dict[str, Any] | None:
        """A study's lesions with their tracks, and its response; None if unknown."""
        q = _q()
        with self.db.connection() as conn:
            response = conn.execute(q["study_response"], {"study_instance_uid": study_instance_uid}).fetchone()
            if response is None:
                return None
            rows = conn.execute(
                q["lesion_rows"], {"patient_id": None, "study_instance_uid": study_instance_uid, "lesion_id": None}
            ).fetchall()
        return {
            "study_instance_uid": study_instance_uid,
            "time_point": response["time_point"],
            "response": _response_json(response) if response["category"] else None,
            "lesions": [_lesion_json(r) for r in rows],
        }

    def lesion(self, lesion_id: int) -> dict[str, Any] | None:
        with self.db.connection() as conn:
            row = conn.execute(
                _q()["lesion_rows"], {"patient_id": None, "study_instance_uid": None, "lesion_id": lesion_id}
            ).fetchone()
        return None if row is None else _lesion_json(row) | {"patient_key": row["patient_key"]}

    def similar(
        self,
        *,
        lesion_id: int | None = None,
        embedding: np.ndarray | None = None,
        k: int = 10,
        lesion_type: str | None = None,
        site: str | None = None,
        min_mm: float | None = None,
        max_mm: float | None = None,
        exact: bool = False,
        ef_search: int = DEFAULT_EF_SEARCH,
        details: bool = True,
    ) -> list[dict[str, Any]]:
        """The k lesions of other patients nearest to a stored lesion (or to an embedding).

        Uses the HNSW index; when the filters leave fewer than k hits in the index's candidate
        list, falls back to exact search so that filtered queries still get k answers.
        """
        if k < 1 or k > 1000:
            raise ValueError(f"k: must be between 1 and 1000, got {k}")
        if (lesion_id is None) == (embedding is None):
            raise ValueError("lesion_id: give either lesion_id or embedding")
        if lesion_type is not None:
            lesion_type = LesionType(lesion_type).value
        q = _q()
        with self.db.connection() as conn, conn.transaction():
            exclude = None
            if lesion_id is not None:
                row = conn.execute(q["lesion_embedding"], {"lesion_id": lesion_id}).fetchone()
                if row is None:
                    raise LookupError(f"lesion {lesion_id} has no stored embedding")
                query, exclude = row["embedding"], row["patient_id"]
            else:
                query = vector_text(np.asarray(embedding))
            params = {
                "query": query,
                "exclude_patient_id": exclude,
                "lesion_type": lesion_type,
                "site": site,
                "min_mm": min_mm,
                "max_mm": max_mm,
                "k": k,
            }
            hits: list[dict[str, Any]] = []
            if not exact:
                conn.execute(q["set_ef_search"], {"ef_search": str(max(ef_search, k))})
                hits = conn.execute(q["similar_hnsw"], params).fetchall()
            if exact or len(hits) < k:
                hits = conn.execute(q["similar_exact"], params).fetchall()
            if not details:
                return [{"lesion_id": h["lesion_id"], "distance": float(h["distance"])} for h in hits]
            out = []
            for h in hits:
                r = conn.execute(
                    q["lesion_rows"], {"patient_id": None, "study_instance_uid": None, "lesion_id": h["lesion_id"]}
                ).fetchone()
                out.append(_lesion_json(r) | {"distance": float(h["distance"])})
        return out


def _track_order(tracking_id: str | None) -> tuple[int, str]:
    if tracking_id and tracking_id[1:].isdigit():
        return (int(tracking_id[1:]), tracking_id)
    return (1 << 30, tracking_id or "")


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _lesion_json(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "lesion_id": r["id"],
        "study_instance_uid": r["study_instance_uid"],
        "series_instance_uid": r["series_instance_uid"],
        "study_date": r["study_date"].isoformat() if r["study_date"] else None,
        "time_point": r["time_point"],
        "tracking_id": r["tracking_id"],
        "tracking_uid": r["tracking_uid"],
        "lesion_index": r["lesion_index"],
        "key_slice": r["key_slice"],
        "box": r["box"],
        "lesion_type": r["lesion_type"],
        "site": r["site"],
        "long_axis_mm": _num(r["long_axis_mm"]),
        "short_axis_mm": _num(r["short_axis_mm"]),
        "long_axis_endpoints": r["long_axis_endpoints"],
        "short_axis_endpoints": r["short_axis_endpoints"],
        "volume_mm3": _num(r["volume_mm3"]),
        "score": _num(r["score"]),
        "body_part_score": _num(r["body_part_score"]),
        "model_versions": r["model_versions"],
        "flags": list(r["flags"] or []),
    }


def _response_json(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "study_instance_uid": r.get("study_instance_uid"),
        "time_point": r.get("time_point"),
        "category": r["category"],
        "sum_of_diameters_mm": r["sum_of_diameters_mm"],
        "baseline_sum_mm": r["baseline_sum_mm"],
        "nadir_sum_mm": r["nadir_sum_mm"],
        "change_from_baseline_pct": r["change_from_baseline_pct"],
        "change_from_nadir_pct": r["change_from_nadir_pct"],
        "new_lesions": r["new_lesions"],
        "target_tracking_uids": list(r["target_tracking_uids"] or []),
        "baseline_study_uid": r["baseline_study_uid"],
    }


def response_from_json(data: Mapping[str, Any]) -> ResponseAssessment:
    """The stored response as the record the SR builder takes."""
    return ResponseAssessment(
        category=ResponseCategory(data["category"]),
        sum_of_diameters_mm=data["sum_of_diameters_mm"],
        baseline_sum_mm=data["baseline_sum_mm"],
        nadir_sum_mm=data["nadir_sum_mm"],
        change_from_baseline_pct=data["change_from_baseline_pct"],
        change_from_nadir_pct=data["change_from_nadir_pct"],
        new_lesions=data["new_lesions"],
        target_tracking_uids=tuple(data["target_tracking_uids"]),
        baseline_study_uid=data["baseline_study_uid"],
    )
