"""HTTP routes of the lesion graph under /ainode/ on Orthanc's port.

- ``GET /ainode/patients/{patient_key}/tracks``: the patient's tracks, each lesion's
  measurements over time, and the RECIST responses (JSON);
- ``GET /ainode/patients/{patient_key}/tracks.png``: the same as a chart;
- ``GET /ainode/studies/{study_uid}/lesions``: a study's lesions, tracks and response;
- ``GET /ainode/lesions/{id}``: one lesion;
- ``GET /ainode/lesions/{id}/similar?k=10&type=liver&site=liver&min_mm=10&max_mm=50``: the most
  similar lesions of other patients.

Patients are addressed by their pseudonymous key (``ainode tracks --key`` prints it), never by
Patient ID, so that no identifier travels in URLs or access logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from node.api import ApiError, Response, Route, json_response
from node.lesions.plot import track_chart_png
from node.lesions.records import LesionType
from node.lesions.retrieval import similar_lesions
from node.store.lesions import LesionStore

__all__ = ["lesion_routes"]

_KEY = r"([0-9A-Za-z_\-]{1,128})"
_UID = r"([0-9.]{1,64})"


def _float(query: Mapping[str, str], name: str) -> float | None:
    if name not in query or query[name] == "":
        return None
    try:
        return float(query[name])
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None


def lesion_routes(store: LesionStore) -> list[Route]:
    """The lesion graph's routes, for :func:`node.api.dispatch`."""

    def patient(key: str) -> dict:
        data = store.patient_tracks(key)
        if data is None:
            raise ApiError(404, "no patient with that key")
        return data

    def tracks(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        return json_response(patient(groups[0]))

    def chart(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        return Response(status=200, body=track_chart_png(patient(groups[0])), content_type="image/png")

    def study(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        data = store.study_lesions(groups[0])
        if data is None:
            raise ApiError(404, f"no lesions recorded for study {groups[0]}")
        return json_response(data)

    def lesion(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        data = store.lesion(int(groups[0]))
        if data is None:
            raise ApiError(404, f"no lesion {groups[0]}")
        return json_response(data)

    def similar(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        try:
            k = int(query.get("k", "10"))
        except ValueError:
            raise ApiError(400, "k must be an integer") from None
        kind = query.get("type") or None
        if kind is not None and kind not in {t.value for t in LesionType}:
            raise ApiError(400, f"type must be one of {', '.join(t.value for t in LesionType)}")
        try:
            hits = similar_lesions(
                store, int(groups[0]), k=k, lesion_type=kind, site=query.get("site") or None,
                min_mm=_float(query, "min_mm"), max_mm=_float(query, "max_mm"),
            )
        except LookupError as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return json_response({"lesion_id": int(groups[0]), "similar": hits})

    return [
        Route(method="GET", pattern=rf"/ainode/patients/{_KEY}/tracks", handler=tracks),
        Route(method="GET", pattern=rf"/ainode/patients/{_KEY}/tracks\.png", handler=chart),
        Route(method="GET", pattern=rf"/ainode/studies/{_UID}/lesions", handler=study),
        Route(method="GET", pattern=r"/ainode/lesions/(\d+)", handler=lesion),
        Route(method="GET", pattern=r"/ainode/lesions/(\d+)/similar", handler=similar),
    ]
