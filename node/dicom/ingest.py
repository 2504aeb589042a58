"""Find CT stacks in any set of DICOM instances and assemble each into a ``Volume``.

Slices are sorted by their position along the slice normal (never by InstanceNumber);
spacing comes from the positions. Everything that is wrong becomes a ``Problem``; a stack
with an error yields no volume, and nothing here raises on bad input.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from node.dicom.problems import Problem, Severity
from node.imaging.volume import Volume

logger = logging.getLogger(__name__)

CT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)
_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
_SOP_NAMES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",
    "1.2.840.10008.5.1.4.1.1.88.11": "SR",
    "1.2.840.10008.5.1.4.1.1.11.1": "PR",
    "1.2.840.10008.1.3.10": "DICOMDIR",
}
GAP_FACTOR = 1.5
_DEFER = 64 * 1024
SPACING_TOLERANCE = 0.05  # relative
TILT_TOLERANCE_DEG = 0.5


@dataclass(frozen=True, kw_only=True)
class StackInfo:
    """What was found for one stack, used or not (for ``ainode inspect``)."""

    series_instance_uid: str
    series_description: str
    num_slices: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    coverage: tuple[float, float] | None
    orientation: str
    usable: bool

    def to_json(self) -> dict[str, object]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_description": self.series_description,
            "num_slices": self.num_slices,
            "shape": list(self.shape),
            "spacing": None if self.spacing is None else [round(v, 4) for v in self.spacing],
            "coverage": None if self.coverage is None else [round(v, 2) for v in self.coverage],
            "orientation": self.orientation,
            "usable": self.usable,
        }


@dataclass(frozen=True, kw_only=True)
class IngestResult:
    """Volumes that can be used, and every problem found on the way."""

    volumes: list[Volume]
    problems: list[Problem]
    stacks: list[StackInfo] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    def reason(self) -> str:
        """One line saying why no volume came out (empty when there is one)."""
        if self.volumes:
            return ""
        errors = self.errors or self.problems
        return "; ".join(p.message for p in errors) or "no DICOM instances"


def read_datasets(
    paths: Iterable[Path], *, defer_pixels: bool = True
) -> tuple[list[Dataset], list[Problem]]:
    """Read every DICOM file under ``paths`` (files or folders, recursively).

    Files that are not DICOM or cannot be parsed are skipped and reported; nothing raises.
    With ``defer_pixels`` pixel data stays on disk until used (pydicom reads it on access;
    ``assemble_volumes`` reads uncompressed frames straight into the volume).
    """
    datasets: list[Dataset] = []
    problems: list[Problem] = []
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path, defer_size=_DEFER if defer_pixels else None))
        except InvalidDicomError:
            problems.append(
                Problem(
                    series_instance_uid="",
                    severity=Severity.WARNING,
                    code="not-dicom",
                    message=f"{path}: not a DICOM file, skipped",
                )
            )
        except Exception as exc:  # any malformed file is skipped, never fatal
            problems.append(
                Problem(
                    series_instance_uid="",
                    severity=Severity.WARNING,
                    code="unreadable",
                    message=f"{path}: unreadable DICOM ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}), skipped",
                )
            )
    return datasets, problems


@dataclass
class _Slice:
    ds: Dataset
    frame: int  # 0-based frame of a multi-frame instance; -1 for single-frame
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    rows: int
    columns: int
    thickness: float | None
    sop_instance_uid: str


def _floats(value, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _first(ds: Dataset, seq: str) -> Dataset | None:
    items = ds.get(seq)
    return items[0] if items else None


def _functional(ds: Dataset, frame_groups: Dataset | None, seq: str) -> Dataset | None:
    item = _first(frame_groups, seq) if frame_groups is not None else None
    if item is None:
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        item = _first(shared, seq) if shared is not None else None
    return item


def _slices_of(ds: Dataset) -> list[_Slice] | None:
    """The slices of one image instance, or None when its geometry is missing."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    sop = str(ds.get("SOPInstanceUID", ""))
    if "PerFrameFunctionalGroupsSequence" in ds:
        out = []
        for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
            pos = _functional(ds, fg, "PlanePositionSequence")
            ori = _functional(ds, fg, "PlaneOrientationSequence")
            meas = _functional(ds, fg, "PixelMeasuresSequence")
            trans = _functional(ds, fg, "PixelValueTransformationSequence")
            p = _floats(pos.get("ImagePositionPatient"), 3) if pos is not None else None
            o = _floats(ori.get("ImageOrientationPatient"), 6) if ori is not None else None
            s = _floats(meas.get("PixelSpacing"), 2) if meas is not None else None
            if p is None or o is None or s is None:
                return None
            thick = meas.get("SliceThickness")
            out.append(
                _Slice(
                    ds=ds,
                    frame=i,
                    position=p,
                    orientation=o,
                    pixel_spacing=(float(s[0]), float(s[1])),
                    slope=float(trans.get("RescaleSlope", 1.0)) if trans is not None else 1.0,
                    intercept=float(trans.get("RescaleIntercept", 0.0))
                    if trans is not None
                    else 0.0,
                    rows=rows,
                    columns=cols,
                    thickness=float(thick) if thick not in (None, "") else None,
                    sop_instance_uid=sop,
                )
            )
        return out
    p = _floats(ds.get("ImagePositionPatient"), 3)
    o = _floats(ds.get("ImageOrientationPatient"), 6)
    s = _floats(ds.get("PixelSpacing"), 2)
    if p is None or o is None or s is None:
        return None
    thick = ds.get("SliceThickness")
    slope = ds.get("RescaleSlope", 1.0)
    intercept = ds.get("RescaleIntercept", 0.0)
    return [
        _Slice(
            ds=ds,
            frame=-1,
            position=p,
            orientation=o,
            pixel_spacing=(float(s[0]), float(s[1])),
            slope=float(slope) if slope not in (None, "") else 1.0,
            intercept=float(intercept) if intercept not in (None, "") else 0.0,
            rows=rows,
            columns=cols,
            thickness=float(thick) if thick not in (None, "") else None,
            sop_instance_uid=sop,
        )
    ]


def _is_localizer(ds: Dataset) -> bool:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return "LOCALIZER" in image_type


def _kind(ds: Dataset) -> str:
    sop = str(ds.get("SOPClassUID", ""))
    if sop in _SOP_NAMES:
        return _SOP_NAMES[sop]
    return str(ds.get("Modality", "") or "") or (UID(sop).name if sop else "unknown")


def _plane_name(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.95:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _native_pixels(ds: Dataset, frame: int) -> np.ndarray | None:
    """Fast path for uncompressed little-endian 16-bit data; None when it does not apply."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _NATIVE or ds.get("BitsAllocated") != 16 or ds.get("SamplesPerPixel", 1) != 1:
        return None
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = int(ds.get("BitsStored", 16))
    if signed and stored != 16:
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    n = rows * cols
    raw = ds.PixelData
    offset = max(frame, 0) * n * 2
    if len(raw) < offset + n * 2:
        raise ValueError(f"pixel data holds {len(raw)} bytes, frame needs {offset + n * 2}")
    arr = np.frombuffer(raw, dtype="<i2" if signed else "<u2", count=n, offset=offset).reshape(
        rows, cols
    )
    if not signed and stored < 16:
        arr = arr & np.uint16((1 << stored) - 1)
    return arr


def _read_deferred(ds: Dataset, frame: int, out: np.ndarray) -> bool:
    """Read deferred uncompressed 16-bit pixels from the file straight into ``out``."""
    if frame > 0 or ds.get("BitsAllocated") != 16 or int(ds.get("BitsStored", 16)) != 16:
        return False
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) not in _NATIVE or not ds.filename:
        return False
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    if elem is None or getattr(elem, "value", b"") is not None or elem.length != out.nbytes:
        return False
    with open(ds.filename, "rb") as fh:
        fh.seek(elem.value_tell)
        return fh.readinto(memoryview(out).cast("B")) == out.nbytes


class _PixelCache:
    """Decoded multi-frame arrays, so a multi-frame instance is decoded once."""

    def __init__(self) -> None:
        self._frames: dict[int, np.ndarray] = {}

    def get(self, s: _Slice, out: np.ndarray | None = None) -> np.ndarray:
        if out is not None and _read_deferred(s.ds, s.frame, out):
            return out
        fast = _native_pixels(s.ds, s.frame)
        if fast is not None:
            return fast
        if s.frame < 0:
            return s.ds.pixel_array
        key = id(s.ds)
        if key not in self._frames:
            arr = s.ds.pixel_array
            self._frames[key] = arr if arr.ndim == 3 else arr[None]
        return self._frames[key][s.frame]


def _err(uid: str, code: str, message: str) -> Problem:
    return Problem(series_instance_uid=uid, severity=Severity.ERROR, code=code, message=message)


def _warn(uid: str, code: str, message: str) -> Problem:
    return Problem(series_instance_uid=uid, severity=Severity.WARNING, code=code, message=message)


def _fmt_z(v: float) -> str:
    return f"{v:.1f}"


def assemble_volumes(datasets: Sequence[Dataset]) -> IngestResult:
    """Find the CT stacks among ``datasets`` and assemble each into a ``Volume`` in HU.

    Stacks are keyed by series, frame of reference and orientation; localizers and non-image
    objects are dropped. Each stack is checked for missing, duplicate and conflicting slices,
    irregular spacing, gantry tilt and non-axial orientation.
    """
    problems: list[Problem] = []
    others: Counter[str] = Counter()
    groups: dict[tuple, list[_Slice]] = defaultdict(list)
    localizers: Counter[str] = Counter()
    no_pixels: Counter[str] = Counter()
    missing_geometry: Counter[str] = Counter()
    for ds in datasets:
        sop_class = str(ds.get("SOPClassUID", ""))
        uid = str(ds.get("SeriesInstanceUID", ""))
        if sop_class not in CT_SOP_CLASSES and ds.get("Modality") != "CT":
            others[_kind(ds)] += 1
            continue
        if sop_class and sop_class not in CT_SOP_CLASSES:
            others[f"CT {UID(sop_class).name}"] += 1
            continue
        if "PixelData" not in ds:
            no_pixels[uid] += 1
            continue
        if _is_localizer(ds):
            localizers[uid] += 1
            continue
        slices = _slices_of(ds)
        if slices is None:
            missing_geometry[uid] += 1
            continue
        for s in slices:
            key = (uid, str(ds.get("FrameOfReferenceUID", "")), tuple(np.round(s.orientation, 3)))
            groups[key].append(s)
    for uid, n in localizers.items():
        problems.append(
            _warn(uid, "localizer", f"series {uid}: {n} localizer image{'s' * (n > 1)} ignored")
        )
    for uid, n in no_pixels.items():
        problems.append(
            _warn(
                uid,
                "no-pixel-data",
                f"series {uid}: {n} CT object{'s' * (n > 1)} without pixel data ignored",
            )
        )
    for uid, n in missing_geometry.items():
        problems.append(
            _err(
                uid,
                "missing-geometry",
                f"series {uid}: {n} image{'s' * (n > 1)} without position, orientation or pixel spacing",
            )
        )

    largest: dict[str, int] = defaultdict(int)
    for (uid, _, _), slices in groups.items():
        largest[uid] = max(largest[uid], len(slices))

    volumes: list[Volume] = []
    stacks: list[StackInfo] = []
    cache = _PixelCache()
    for (uid, for_uid, _), slices in groups.items():
        if len(slices) == 1 and largest[uid] > 1:
            problems.append(
                _warn(
                    uid,
                    "stray-image",
                    f"series {uid}: 1 image off the main stack (other orientation) ignored",
                )
            )
            continue
        try:
            volume, found, info = _assemble_stack(uid, for_uid, slices, cache)
        except Exception as exc:  # the boundary: one bad stack never stops the others
            logger.exception("series %s: assembly failed", uid)
            found = [
                _err(
                    uid,
                    "assembly-failed",
                    f"series {uid}: could not be assembled ({type(exc).__name__}: {exc})",
                )
            ]
            volume, info = None, None
        problems.extend(found)
        if info is not None:
            stacks.append(info)
        if volume is not None:
            volumes.append(volume)

    if others:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(others.items()))
        if not groups and not localizers and not no_pixels and not missing_geometry:
            problems.append(_err("", "no-ct-series", f"no CT image series: found {summary}"))
        else:
            problems.append(
                _warn("", "non-ct-ignored", f"ignored objects that are not CT images: {summary}")
            )
    if not volumes and not any(p.is_error for p in problems):
        found = "found no DICOM objects" if not datasets else "no usable CT stack"
        problems.append(_err("", "no-ct-series", f"no CT image series: {found}"))
    for p in problems:
        logger.debug("%s", p)
    return IngestResult(volumes=volumes, problems=problems, stacks=stacks)


def _assemble_stack(
    uid: str, for_uid: str, slices: list[_Slice], cache: _PixelCache
) -> tuple[Volume | None, list[Problem], StackInfo]:
    problems: list[Problem] = []
    first = slices[0]
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_cos, col_cos)
    norm = np.linalg.norm(normal)
    plane = _plane_name(normal / norm if norm > 0 else normal)
    description = str(first.ds.get("SeriesDescription", ""))
    shape = (len(slices), first.rows, first.columns)

    def info(spacing=None, coverage=None, usable=False, n=None) -> StackInfo:
        n = len(slices) if n is None else n
        return StackInfo(
            series_instance_uid=uid,
            series_description=description,
            num_slices=n,
            shape=(n, first.rows, first.columns),
            spacing=spacing,
            coverage=coverage,
            orientation=plane,
            usable=usable,
        )

    if norm < 0.5:
        problems.append(
            _err(uid, "missing-geometry", f"series {uid}: ImageOrientationPatient is degenerate")
        )
        return None, problems, info()
    normal = normal / norm
    sizes = {(s.rows, s.columns) for s in slices}
    spacings = {(round(s.pixel_spacing[0], 4), round(s.pixel_spacing[1], 4)) for s in slices}
    if len(sizes) > 1 or len(spacings) > 1:
        what = f"sizes {sorted(sizes)}" if len(sizes) > 1 else f"pixel spacings {sorted(spacings)}"
        problems.append(
            _err(uid, "inconsistent-geometry", f"series {uid}: images differ in {what}")
        )
        return None, problems, info()

    d = np.array([s.position @ normal for s in slices])
    order = np.argsort(d, kind="stable")
    slices = [slices[i] for i in order]
    d = d[order]
    axis = "z" if plane == "axial" else "position"

    # Duplicates: identical images dropped; different images at one position are an error.
    keep = [0]
    dup = 0
    conflicts: list[float] = []
    for i in range(1, len(slices)):
        if abs(d[i] - d[keep[-1]]) < 1e-3:
            a, b = slices[keep[-1]], slices[i]
            same = a.sop_instance_uid == b.sop_instance_uid and a.frame == b.frame
            if not same:
                try:
                    same = np.array_equal(cache.get(a), cache.get(b))
                except Exception:
                    same = False
            if same:
                dup += 1
            else:
                conflicts.append(float(d[i]))
            continue
        keep.append(i)
    if dup:
        problems.append(
            _warn(
                uid,
                "duplicate-slices",
                f"series {uid}: {dup} duplicate slice{'s' * (dup > 1)} dropped",
            )
        )
    if conflicts:
        where = ", ".join(f"{axis}={_fmt_z(v)}" for v in conflicts[:3]) + (
            " ..." if len(conflicts) > 3 else ""
        )
        problems.append(
            _err(
                uid,
                "conflicting-slices",
                f"series {uid}: {len(conflicts)} position{'s' * (len(conflicts) > 1)} hold different images ({where})",
            )
        )
    slices = [slices[i] for i in keep]
    d = d[keep]
    n = len(slices)
    ps = slices[0].pixel_spacing
    if n < 2:
        problems.append(_err(uid, "single-slice", f"series {uid}: only one slice, no volume"))
        return None, problems, info(n=n)

    steps = np.diff(d)
    step = float(np.median(steps))
    coverage = (float(d[0]), float(d[-1]))
    spacing = (step, ps[0], ps[1])
    gaps = np.nonzero(steps > GAP_FACTOR * step)[0]
    for g in gaps:
        missing = int(round(steps[g] / step)) - 1
        problems.append(
            _err(
                uid,
                "missing-slices",
                f"series {uid}: {max(missing, 1)} slice{'s' * (missing != 1)} missing between {axis}={_fmt_z(d[g])} and {axis}={_fmt_z(d[g + 1])}",
            )
        )
    if not len(gaps):
        dev = np.abs(steps - step)
        if float(dev.max()) > max(SPACING_TOLERANCE * step, 0.02):
            problems.append(
                _err(
                    uid,
                    "irregular-spacing",
                    f"series {uid}: slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm along the stack",
                )
            )
    if conflicts or len(gaps) or any(p.code == "irregular-spacing" for p in problems):
        return None, problems, info(spacing, coverage, n=n)

    # Gantry tilt: consecutive positions move sideways, not only along the normal.
    span = slices[-1].position - slices[0].position
    along = float(span @ normal)
    lateral = float(np.linalg.norm(span - along * normal))
    tilt = float(np.degrees(np.arctan2(lateral, abs(along))))
    warnings: list[Problem] = []
    if tilt > TILT_TOLERANCE_DEG:
        warnings.append(
            _warn(
                uid,
                "gantry-tilt",
                f"series {uid}: slices sheared by gantry tilt of {tilt:.1f} degrees (kept in the affine)",
            )
        )
    if plane != "axial":
        warnings.append(_warn(uid, "non-axial", f"series {uid}: {plane} stack, not axial"))

    try:
        pixels = np.empty((n, first.rows, first.columns), dtype=np.float32)
        buffers = {
            0: np.empty((first.rows, first.columns), "<u2"),
            1: np.empty((first.rows, first.columns), "<i2"),
        }
        for k, s in enumerate(slices):
            raw = cache.get(s, buffers[int(s.ds.get("PixelRepresentation", 0))])
            if s.slope == 1.0:
                np.add(raw, np.float32(s.intercept), out=pixels[k], casting="unsafe")
            else:
                np.multiply(raw, np.float32(s.slope), out=pixels[k], casting="unsafe")
                pixels[k] += np.float32(s.intercept)
    except Exception as exc:
        ts = getattr(getattr(first.ds, "file_meta", None), "TransferSyntaxUID", None)
        name = UID(str(ts)).name if ts else "unknown transfer syntax"
        problems.append(
            _err(
                uid,
                "decode-failed",
                f"series {uid}: pixel data could not be decoded ({name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            )
        )
        return None, problems, info(spacing, coverage, n=n)

    affine = np.eye(4)
    affine[:3, 0] = row_cos * ps[1]
    affine[:3, 1] = col_cos * ps[0]
    affine[:3, 2] = span / (n - 1)
    affine[:3, 3] = slices[0].position
    problems.extend(warnings)
    volume = Volume(
        pixels=pixels,
        affine=affine,
        spacing=spacing,
        study_instance_uid=str(first.ds.get("StudyInstanceUID", "")),
        series_instance_uid=uid,
        frame_of_reference_uid=for_uid,
        sop_instance_uids=tuple(s.sop_instance_uid for s in slices),
        sop_class_uid=str(first.ds.get("SOPClassUID", "")),
        frame_numbers=tuple(s.frame + 1 for s in slices) if first.frame >= 0 else (),
        series_description=description,
        warnings=tuple(p.message for p in warnings),
    )
    logger.debug("series %s: %d slices %s spacing %s", uid, n, shape, spacing)
    return volume, problems, info(spacing, coverage, usable=True, n=n)
