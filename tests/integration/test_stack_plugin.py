"""The Orthanc plugin's logic with a strict fake `orthanc` module and a real Postgres."""

from __future__ import annotations

import json

import pytest

from node.orthanc_plugin import register
from node.store.db import Database
from node.store.jobs import JobState, JobStore

pytestmark = pytest.mark.integration


class ChangeType:
    STABLE_STUDY = 11
    ORTHANC_STARTED = 1
    ORTHANC_STOPPED = 2


class FakeOutput:
    def __init__(self) -> None:
        self.status = None
        self.body = b""
        self.headers = {}

    def AnswerBuffer(self, body, mime):  # noqa: N802 - Orthanc's API
        self.status, self.body, self.headers["Content-Type"] = 200, body, mime

    def SendHttpStatus(self, status, body):  # noqa: N802
        self.status, self.body = status, body

    def SetHttpHeader(self, key, value):  # noqa: N802
        self.headers[key] = value


class FakeOrthanc:
    """Only the functions the plugin may call; anything else raises AttributeError."""

    ChangeType = ChangeType

    def __init__(self, studies: dict[str, dict]) -> None:
        self.studies = studies
        self.on_change = None
        self.rest = {}
        self.logs: list[tuple[str, str]] = []
        self.explorer_js = ""

    def RegisterOnChangeCallback(self, cb):  # noqa: N802
        self.on_change = cb

    def RegisterRestCallback(self, pattern, cb):  # noqa: N802
        self.rest[pattern] = cb

    def ExtendOrthancExplorer(self, js):  # noqa: N802
        self.explorer_js = js

    def RestApiGet(self, uri):  # noqa: N802
        if uri.startswith("/studies?"):
            return json.dumps([dict(v, ID=k) for k, v in self.studies.items()]).encode()
        study_id = uri.split("/")[2]
        if study_id not in self.studies:
            raise RuntimeError("Unknown resource")
        return json.dumps(self.studies[study_id]).encode()

    def LogInfo(self, m):  # noqa: N802
        self.logs.append(("info", m))

    def LogWarning(self, m):  # noqa: N802
        self.logs.append(("warning", m))

    def LogError(self, m):  # noqa: N802
        self.logs.append(("error", m))

    def get(self, uri, method="GET", **query):
        out = FakeOutput()
        self.rest["/ainode/.*"](out, uri, method=method, get=query, body=b"")
        return out.status, json.loads(out.body)


def study(uid: str, last_update: str) -> dict:
    return {"MainDicomTags": {"StudyInstanceUID": uid}, "LastUpdate": last_update}


def test_stable_study_is_queued_and_listed(fresh_database_url: str) -> None:
    orthanc = FakeOrthanc({"s1": study("1.2.1", "20260101T000000")})
    register(orthanc, {"DatabaseUrl": fresh_database_url, "MaxAttempts": 2})
    orthanc.on_change(ChangeType.STABLE_STUDY, 0, "s1")
    status, body = orthanc.get("/ainode/jobs")
    assert status == 200 and body["counts"]["queued"] == 1
    job = body["jobs"][0]
    assert job["study_instance_uid"] == "1.2.1" and job["max_attempts"] == 2
    assert orthanc.explorer_js and "ainode" in orthanc.explorer_js

    status, body = orthanc.get(f"/ainode/jobs/{job['id']}")
    assert status == 200 and body["events"][0]["state"] == "queued"
    assert orthanc.get("/ainode/jobs/99999")[0] == 404
    assert orthanc.get("/ainode/jobs", state="bogus")[0] == 400
    assert orthanc.get("/ainode/jobs", method="DELETE")[0] == 405
    assert orthanc.get("/ainode/nothing")[0] == 404

    status, body = orthanc.get("/ainode/studies/1.2.1/rerun", method="POST")
    assert status == 202 and body["generation"] == 2


def test_database_down_keeps_study_pending_and_never_raises(fresh_database_url: str) -> None:
    orthanc = FakeOrthanc({"s2": study("1.2.2", "x")})
    app = register(orthanc, {"DatabaseUrl": "postgresql://nobody@127.0.0.1:1/none", "MaxAttempts": 3})
    orthanc.on_change(ChangeType.STABLE_STUDY, 0, "s2")
    assert any(level == "error" and "stays in Orthanc" in m for level, m in orthanc.logs)
    assert "1.2.2" not in " ".join(m for _, m in orthanc.logs if "PatientName" in m)
    status, body = orthanc.get("/ainode/jobs")
    assert status == 503 and "database unreachable" in body["error"]
    assert app._pending == {"s2"}


def test_startup_sweep_queues_studies_without_job(fresh_database_url: str) -> None:
    orthanc = FakeOrthanc({"a": study("1.2.3", "x"), "b": study("1.2.4", "y")})
    app = register(orthanc, {"DatabaseUrl": fresh_database_url})
    orthanc.on_change(ChangeType.STABLE_STUDY, 0, "a")
    assert app.sweep() == 1
    assert app.sweep() == 0
    db = Database(fresh_database_url)
    jobs = JobStore(db)
    assert jobs.counts()[str(JobState.QUEUED)] == 2
    db.close()
