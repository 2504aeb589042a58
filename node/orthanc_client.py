"""The worker's REST client for Orthanc: fetch a study's instances, store results."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pydicom
import requests
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)


class OrthancUnavailable(RuntimeError):
    """Orthanc cannot be reached or answered with a server error (worth retrying)."""


class OrthancRefused(RuntimeError):
    """Orthanc answered with a client error (e.g. the study was deleted)."""


class OrthancClient:
    def __init__(self, url: str, *, auth: tuple[str, str] | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        if auth is not None:
            self._session.auth = auth
        self._timeout = timeout

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self._session.request(method, self.url + path, timeout=self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise OrthancUnavailable(f"Orthanc at {self.url} is unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise OrthancUnavailable(f"Orthanc {method} {path}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise OrthancRefused(f"Orthanc {method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    def get_json(self, path: str) -> Any:
        return self._request("GET", path).json()

    def study(self, orthanc_study_id: str) -> dict[str, Any]:
        return self.get_json(f"/studies/{orthanc_study_id}")

    def study_instance_ids(self, orthanc_study_id: str) -> list[str]:
        return [item["ID"] for item in self.get_json(f"/studies/{orthanc_study_id}/instances")]

    def instance_bytes(self, instance_id: str) -> bytes:
        return self._request("GET", f"/instances/{instance_id}/file").content

    def iter_study_datasets(self, orthanc_study_id: str) -> Iterator[Dataset]:
        """Every instance of a study, parsed; an unreadable instance is logged and skipped."""
        for instance_id in self.study_instance_ids(orthanc_study_id):
            data = self.instance_bytes(instance_id)
            try:
                yield pydicom.dcmread(io.BytesIO(data))
            except Exception as exc:  # a malformed file must not stop the study
                logger.warning("instance %s could not be parsed (%s); skipped", instance_id, exc)

    def store(self, dataset: Dataset) -> str:
        """Store one DICOM object; returns its Orthanc instance id."""
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        answer = self._request("POST", "/instances", data=buffer.getvalue(),
                               headers={"Content-Type": "application/dicom"}).json()
        return answer["ID"]

    def delete_instance(self, instance_id: str) -> bool:
        """Delete one instance; False when it was already gone."""
        try:
            self._request("DELETE", f"/instances/{instance_id}")
        except OrthancRefused:
            return False
        return True

    def system(self) -> dict[str, Any]:
        return self.get_json("/system")
