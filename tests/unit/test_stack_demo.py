"""`ainode demo` follows the job of the study it has just sent, also when that study was sent before."""

from __future__ import annotations

from dataclasses import dataclass, replace

from node.stack.demo import follow_job


@dataclass(frozen=True)
class _Job:
    id: int
    state: str
    generation: int


class _Jobs:
    """The job store as the demo reads it: the study's job turns over as the worker goes on."""

    def __init__(self, timeline: list[tuple[_Job | None, list[dict]]]) -> None:
        self.timeline, self.reads = timeline, 0

    def get_by_study(self, uid: str):
        self.reads += 1
        return self.timeline[min(self.reads - 1, len(self.timeline) - 1)][0]

    def events(self, job_id: int) -> list[dict]:
        return self.timeline[max(0, min(self.reads - 1, len(self.timeline) - 1))][1]


def _event(state: str) -> dict:
    return {"state": state, "message": ""}


def test_a_study_sent_again_is_followed_to_its_new_result_not_its_old_one(capsys, monkeypatch) -> None:
    monkeypatch.setattr("node.stack.demo.time.sleep", lambda s: None)
    old = _Job(1, "done", 1)
    first = [_event("queued"), _event("running"), _event("done")]
    jobs = _Jobs([
        (old, first),  # read before the send
        (old, first),  # Orthanc has not called the study stable yet: still the old result
        (replace(old, state="queued", generation=2), [*first, _event("queued")]),
        (replace(old, state="done", generation=2), [*first, _event("queued"), _event("running"), _event("done")]),
    ])
    before = jobs.get_by_study("1.2")
    job = follow_job(jobs, "1.2", timeout=10, before=before)
    assert job.generation == 2 and job.state == "done"
    out = capsys.readouterr().out
    assert "stable again" in out
    assert out.count(": done") == 1 and out.count(": queued") == 1  # the old events are not printed again


def test_a_new_study_is_followed_from_its_first_event(capsys, monkeypatch) -> None:
    monkeypatch.setattr("node.stack.demo.time.sleep", lambda s: None)
    jobs = _Jobs([(None, []), (_Job(4, "done", 1), [_event("queued"), _event("running"), _event("done")])])
    job = follow_job(jobs, "1.3", timeout=10)
    assert job.id == 4
    out = capsys.readouterr().out
    assert "waiting for Orthanc to call the study stable ..." in out and ": running" in out
