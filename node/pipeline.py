"""One study, end to end, without Orthanc: instances -> volume -> models -> tracks -> DICOM results.

The worker runs this on studies fetched from Orthanc; ``ainode analyze`` runs it on a folder.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from node.dicom.provenance import Provenance
from node.imaging.volume import Volume
from node.lesions.records import Lesion, ResponseAssessment

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Tracking:
    lesions: list[Lesion]
    response: ResponseAssessment | None
    time_point: str | None


# (volume, lesions, model_versions, first source dataset) -> Tracking
Tracker = Callable[[Volume, Sequence[Lesion], dict[str, str], Dataset], Tracking]


@dataclass(kw_only=True)
class StudyOutcome:
    """What happened to one study: done (objects built) or skipped (with the reason)."""

    state: str  # "done" | "skipped"
    reason: str | None = None
    objects: list[Dataset] = field(default_factory=list)
    lesions: list[Lesion] = field(default_factory=list)
    volume: Volume | None = None
    summary_lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    excluded: list[tuple[int, str]] = field(default_factory=list)
    response: ResponseAssessment | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model_versions: dict[str, str] = field(default_factory=dict)

    def result_json(self) -> dict[str, Any]:
        return {
            "lesions": len(self.lesions),
            "excluded": [{"lesion": i, "reason": r} for i, r in self.excluded],
            "objects": [{"modality": str(ds.Modality), "sop_instance_uid": str(ds.SOPInstanceUID)} for ds in self.objects],
            "series_instance_uid": self.volume.series_instance_uid if self.volume else None,
            "problems": self.problems,
            "response": str(self.response.category) if self.response else None,
            "model_versions": self.model_versions,
            "summary": self.summary_lines,
        }


def choose_volume(volumes: Sequence[Volume]) -> Volume:
    """The series the models run on: the most slices of the thinnest spacing (ties: first)."""
    return max(volumes, key=lambda v: (v.shape[0] * (1.0 / max(v.spacing[0], 0.1)), v.shape[1] * v.shape[2]))


def study_date(ds: Dataset) -> dt.date | None:
    raw = str(getattr(ds, "StudyDate", "") or "")
    try:
        return dt.datetime.strptime(raw, "%Y%m%d").date()
    except ValueError:
        return None


def analyze_datasets(
    datasets: Sequence[Dataset],
    *,
    analyzer: Any,
    tracker: Tracker | None = None,
    provenance: Provenance | None = None,
    omit_empty_frames: bool = True,
) -> StudyOutcome:
    """Run the whole pipeline on a study's instances (any order, any mix of objects)."""
    from node.dicom.ingest import assemble_volumes
    from node.dicom.results import build_result_objects

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ingest = assemble_volumes(datasets)
    timings["assemble"] = time.perf_counter() - t0
    problems = [p.message for p in ingest.problems]
    if not ingest.volumes:
        reason = "; ".join(p.message for p in ingest.problems if p.severity == "error") or "no usable CT series"
        return StudyOutcome(state="skipped", reason=reason, problems=problems, timings=timings)
    volume = choose_volume(ingest.volumes)

    t0 = time.perf_counter()
    analysis = analyzer.analyze(volume)
    timings["inference"] = time.perf_counter() - t0
    for stage, seconds in (analysis.timings or {}).items():
        timings[f"inference.{stage}"] = seconds
    model_versions = dict(analysis.model_versions or {})
    if analysis.not_analysed:
        return StudyOutcome(state="skipped", reason=f"not analysed: {analysis.not_analysed}", volume=volume,
                            problems=problems, timings=timings, model_versions=model_versions)

    sources = [ds for ds in datasets if str(getattr(ds, "SeriesInstanceUID", "")) == volume.series_instance_uid]
    lesions = list(analysis.lesions)
    response = None
    time_point = None
    if tracker is not None:
        t0 = time.perf_counter()
        tracking = tracker(volume, lesions, model_versions, sources[0])
        lesions, response, time_point = tracking.lesions, tracking.response, tracking.time_point
        timings["tracking"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    provenance = provenance or Provenance(model_versions=model_versions)
    results = build_result_objects(
        sources, volume, lesions, provenance=provenance, response=response, time_point=time_point,
        omit_empty_frames=omit_empty_frames,
    )
    timings["outputs"] = time.perf_counter() - t0
    return StudyOutcome(
        state="done",
        objects=results.datasets,
        lesions=lesions,
        volume=volume,
        summary_lines=list(results.summary_lines),
        problems=problems,
        excluded=list(results.excluded),
        response=response,
        timings=timings,
        model_versions=model_versions,
    )
