"""The node's HTTP API under /ainode/ on Orthanc's port: routes as plain functions.

The Orthanc plugin registers these; tests call them directly. Errors become an HTTP status
with a JSON body here, once.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from node.store.jobs import JobState, JobStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


class ApiError(Exception):
    """A request the API refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Sequence[str], Mapping[str, str], bytes], Response]


@dataclass(frozen=True, kw_only=True)
class Route:
    method: str
    pattern: str  # regular expression on the path, anchored, groups are handler arguments
    handler: Handler


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(payload, indent=1, default=str).encode())


def dispatch(routes: Sequence[Route], method: str, path: str, query: Mapping[str, str], body: bytes) -> Response:
    """Run the route for ``method path``; any failure becomes a JSON error with its status."""
    allowed = []
    for route in routes:
        match = re.fullmatch(route.pattern, path)
        if match is None:
            continue
        allowed.append(route.method)
        if route.method == method:
            try:
                return route.handler(match.groups(), query, body)
            except ApiError as exc:
                return json_response({"error": str(exc)}, exc.status)
            except Exception as exc:  # the API boundary: log, answer 500, keep Orthanc running
                logger.exception("ainode API %s %s failed", method, path)
                return json_response({"error": f"{type(exc).__name__}: {exc}"}, 500)
    if allowed:
        return json_response({"error": f"method {method} not allowed; use {', '.join(sorted(set(allowed)))}"}, 405)
    return json_response({"error": f"no such resource: {path}"}, 404)


def job_routes(jobs: JobStore, *, enqueue_study: Callable[[str], Mapping[str, Any]] | None = None) -> list[Route]:
    """Routes for the job queue: list, show, re-run."""

    def list_jobs(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        state = query.get("state")
        if state is not None and state not in {str(s) for s in JobState}:
            raise ApiError(400, f"state must be one of {', '.join(str(s) for s in JobState)}")
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            raise ApiError(400, "limit must be an integer") from None
        items = jobs.list(state=JobState(state) if state else None, limit=limit)
        return json_response({"counts": jobs.counts(), "jobs": [j.to_json() for j in items]})

    def show_job(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        job = jobs.get(int(groups[0]))
        if job is None:
            raise ApiError(404, f"no job {groups[0]}")
        return json_response(dict(job.to_json(), events=jobs.events(job.id)))

    def rerun_job(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        job_id = int(groups[0])
        if not jobs.requeue(job_id):
            raise ApiError(404, f"no job {job_id}")
        return json_response(jobs.get(job_id).to_json(), 202)

    def study_job(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        job = jobs.get_by_study(groups[0])
        if job is None:
            raise ApiError(404, f"no job for study {groups[0]}")
        return json_response(dict(job.to_json(), events=jobs.events(job.id)))

    def rerun_study(groups: Sequence[str], query: Mapping[str, str], body: bytes) -> Response:
        job = jobs.get_by_study(groups[0])
        if job is not None:
            jobs.requeue(job.id)
            return json_response(jobs.get(job.id).to_json(), 202)
        if enqueue_study is None:
            raise ApiError(404, f"no job for study {groups[0]}")
        return json_response(enqueue_study(groups[0]), 202)

    return [
        Route(method="GET", pattern=r"/ainode/jobs", handler=list_jobs),
        Route(method="GET", pattern=r"/ainode/jobs/(\d+)", handler=show_job),
        Route(method="POST", pattern=r"/ainode/jobs/(\d+)/rerun", handler=rerun_job),
        Route(method="GET", pattern=r"/ainode/studies/([\w.\-]+)/job", handler=study_job),
        Route(method="POST", pattern=r"/ainode/studies/([\w.\-]+)/rerun", handler=rerun_study),
    ]
