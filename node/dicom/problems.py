"""What can be wrong with a set of DICOM instances, as records the worker and `inspect` report."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    """ERROR: the stack (or study) is unusable; WARNING: it is used, with a remark."""

    ERROR = "error"
    WARNING = "warning"


#: Every problem code ingest reports, with what it means.
CODES: dict[str, str] = {
    "not-dicom": "a file is not DICOM",
    "unreadable": "a DICOM file could not be parsed",
    "no-ct-series": "the study holds no CT image series",
    "non-ct-ignored": "objects other than CT images were ignored",
    "no-pixel-data": "a CT object without pixel data was ignored",
    "localizer": "localizer (scout) images were ignored",
    "stray-image": "a single image off the main stack of its series was ignored",
    "single-slice": "a stack has only one slice",
    "missing-geometry": "images lack position, orientation or pixel spacing",
    "inconsistent-geometry": "images of a stack differ in size or pixel spacing",
    "duplicate-slices": "identical images at the same position were dropped",
    "conflicting-slices": "different images share one position",
    "missing-slices": "slices are missing from a stack",
    "irregular-spacing": "slice spacing varies along a stack",
    "gantry-tilt": "the stack is sheared by gantry tilt (kept in the affine)",
    "non-axial": "the stack is not axial",
    "decode-failed": "pixel data could not be decoded",
    "assembly-failed": "an unexpected error while assembling a stack",
}


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing found wrong, in one line a person can act on.

    Parameters
    ----------
    series_instance_uid:
        the series concerned; empty for a file or the study as a whole.
    severity:
        ``"error"`` (the stack, or the study, yields no volume) or ``"warning"``.
    code:
        a short slug from ``CODES``, e.g. ``"missing-slices"``.
    message:
        the human text, e.g. ``"series 1.2.3: 3 slices missing between z=-120.0 and z=-112.5"``.
    """

    series_instance_uid: str
    severity: Severity
    code: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))
        if self.code not in CODES:
            raise ValueError(f"code must be one of {', '.join(CODES)}, got {self.code!r}")
        if not self.message or "\n" in self.message:
            raise ValueError("message must be one non-empty line")

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_json(self) -> dict[str, str]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "severity": str(self.severity),
            "code": self.code,
            "message": self.message,
        }

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"
