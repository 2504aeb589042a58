"""Time to build SEG + SR + presentation state, as a share of the study's processing time.

"Total processing time" is reading the CT files + assembling the volume (the node's ingest) +
the node's Analyzer (all four models, ONNX Runtime in-process on CPU, when the model repository
holds them) + building the outputs for 10 lesions. The synthetic study is a water cylinder, so
the models find little in it; the outputs are built for synthetic lesions with masks. The share
against read + assemble + outputs alone (no models) is printed too.
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from node.config import Settings
from node.dicom.provenance import Provenance
from node.dicom.results import build_result_objects
from node.imaging.volume import Volume
from node.lesions.records import Lesion, LesionType, RecistAxes

logger = logging.getLogger(__name__)


def synthetic_ct_series(
    *,
    n_slices: int = 20,
    rows: int = 64,
    columns: int = 64,
    pixel_spacing: float = 0.8,
    slice_thickness: float = 2.5,
    study_instance_uid: str | None = None,
    patient_id: str = "SYN0001",
    seed: int = 0,
    body_part: str | None = "CHEST",
) -> list[FileDataset]:
    """A valid single-frame CT Image series of a water cylinder in air, slices shuffled.

    Every instance carries the Patient, General Study, CT Image and Image Plane modules, so
    that derived objects copy a complete patient module.
    """
    if n_slices < 1 or rows < 8 or columns < 8:
        raise ValueError("n_slices, rows, columns: need at least 1 slice of 8x8 pixels")
    rng = np.random.default_rng(seed)
    study_uid = study_instance_uid or str(hd.UID())
    series_uid, frame_uid = str(hd.UID()), str(hd.UID())
    yy, xx = np.mgrid[0:rows, 0:columns]
    body = (yy - rows / 2) ** 2 + (xx - columns / 2) ** 2 < (0.42 * min(rows, columns)) ** 2
    datasets: list[FileDataset] = []
    for i in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = str(hd.UID())
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = "SYN0001"
        ds.Modality = "CT"
        if body_part:
            ds.BodyPartExamined = body_part
        ds.Manufacturer = "ainode synthetic"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic CT"
        ds.SeriesDescription = "Synthetic axial"
        ds.PatientName = "Synthetic^Patient"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-columns * pixel_spacing / 2, -rows * pixel_spacing / 2, -i * slice_thickness]
        ds.SliceLocation = -i * slice_thickness
        ds.SliceThickness = slice_thickness
        ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        hu = np.where(body, 0.0, -1000.0) + rng.normal(0, 10, (rows, columns))
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        datasets.append(ds)
    order = rng.permutation(n_slices)
    return [datasets[i] for i in order]


def assemble_volume(datasets: list[pydicom.Dataset]) -> Volume:
    """A plain axial-stack assembler for the benchmark and tests (sorted along the normal)."""
    first = datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    ordered = sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64))))
    pixels = np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in ordered])
    origin = np.asarray(ordered[0].ImagePositionPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    if len(ordered) > 1:
        step = (np.asarray(ordered[-1].ImagePositionPatient, dtype=np.float64) - origin) / (len(ordered) - 1)
    else:
        step = normal * float(getattr(first, "SliceThickness", 1.0))
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return Volume(
        pixels=pixels,
        affine=affine,
        spacing=(float(np.linalg.norm(step)), row_spacing, col_spacing),
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in ordered),
        sop_class_uid=str(first.SOPClassUID),
    )


def synthetic_lesions(volume: Volume, count: int, *, seed: int = 0, radius_px: float | None = None) -> list[Lesion]:
    """Ellipsoid lesions spread through the volume, each with a mask and RECIST axes."""
    rng = np.random.default_rng(seed)
    n_slices, rows, columns = volume.shape
    types = list(LesionType)
    lesions: list[Lesion] = []
    radius = radius_px or max(2.0, min(rows, columns) / 16)
    for index in range(count):
        key = int((index + 0.5) * n_slices / max(count, 1)) % n_slices
        cr = float(rng.uniform(0.3, 0.7) * rows)
        cc = float(rng.uniform(0.3, 0.7) * columns)
        a, b = radius, radius * 0.6
        half_depth = max(1, int(round(radius * volume.spacing[1] / volume.spacing[0])))
        s0, s1 = max(0, key - half_depth), min(n_slices, key + half_depth + 1)
        r0, r1 = int(cr - a) - 1, int(cr + a) + 2
        c0, c1 = int(cc - a) - 1, int(cc + a) + 2
        zz, yy, xx = np.mgrid[s0:s1, r0:r1, c0:c1]
        mask = ((xx - cc) / a) ** 2 + ((yy - cr) / b) ** 2 + ((zz - key) / (half_depth + 0.5)) ** 2 <= 1.0
        col_mm, row_mm = volume.spacing[2], volume.spacing[1]
        recist = RecistAxes(
            long_axis_mm=2 * a * col_mm,
            short_axis_mm=2 * b * row_mm,
            long_axis_endpoints=((cc - a, cr), (cc + a, cr)),
            short_axis_endpoints=((cc, cr - b), (cc, cr + b)),
        )
        lesions.append(
            Lesion(
                index=index,
                key_slice=key,
                box=(cc - a, cr - b, cc + a, cr + b),
                score=float(rng.uniform(0.6, 0.99)),
                lesion_type=types[index % len(types)],
                recist=recist,
                volume_mm3=None,
                mask=mask,
                mask_offset=(s0, r0, c0),
            )
        )
    return lesions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, default=300, help="slices in the synthetic study (default 300)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument("--lesions", type=int, default=10, help="lesions (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions; the median is reported")
    parser.add_argument("--limit", type=float, default=0.10, help="largest acceptable share (default 0.10)")


def _analyzer(settings: Settings):  # -> node.inference.analyzer.Analyzer | None
    try:
        from node.inference.analyzer import Analyzer
        from node.inference.backend import OnnxBackend
    except ImportError:
        return None
    if not (Path(settings.model_repository) / "onnx" / "lesion_detector.onnx").is_file():
        return None
    return Analyzer(OnnxBackend(Path(settings.model_repository)), detection_threshold=settings.detection_threshold, detector_zoom=settings.detector_zoom)


def _assemble(datasets: list[pydicom.Dataset]) -> Volume:
    try:
        from node.dicom.ingest import assemble_volumes
        from node.pipeline import choose_volume
    except ImportError:
        return assemble_volume(datasets)
    return choose_volume(assemble_volumes(datasets).volumes)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Write a synthetic study; time read, assemble, the models and the outputs of 10 lesions."""
    # highdicom logs every copied module at INFO; the node's own lines are enough here.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    provenance = Provenance(model_versions={"detector": "bench", "segmenter": "bench"})
    analyzer = _analyzer(settings)
    # One-time costs (highdicom loads its copy of the standard on first use) are not per study.
    warm = synthetic_ct_series(n_slices=4, rows=32, columns=32)
    build_result_objects(warm, assemble_volume(warm), synthetic_lesions(assemble_volume(warm), 1), provenance=provenance)
    stages: dict[str, list[float]] = {"read": [], "assemble": [], "models": [], "outputs": []}
    with tempfile.TemporaryDirectory(prefix="ainode-bench-outputs-") as tmp:
        series = synthetic_ct_series(n_slices=args.slices, rows=args.size, columns=args.size)
        paths = []
        for i, ds in enumerate(series):
            path = Path(tmp) / f"{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        del series
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            datasets = [pydicom.dcmread(p) for p in paths]
            t1 = time.perf_counter()
            volume = _assemble(datasets)
            t2 = time.perf_counter()
            if analyzer is not None:
                analyzer.analyze(volume)
            t3 = time.perf_counter()
            lesions = synthetic_lesions(volume, args.lesions, radius_px=args.size / 24)
            t4 = time.perf_counter()
            objects = build_result_objects(datasets, volume, lesions, provenance=provenance, time_point="baseline")
            t5 = time.perf_counter()
            for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t5 - t4), strict=True):
                stages[name].append(seconds)
            excluded = len(objects.excluded)
            seg_frames = int(objects.seg.NumberOfFrames) if objects.seg else 0
            # A worker holds one study at a time: drop this one before reading the next.
            del datasets, volume, lesions, objects
            gc.collect()
        if analyzer is not None:
            analyzer.backend.close()
    # Each stage's fastest run is the estimate of its cost on a shared machine (as timeit does);
    # the medians are printed too.
    best = {name: float(np.min(values)) for name, values in stages.items()}
    median = {name: float(np.median(values)) for name, values in stages.items()}

    def shares(times: dict[str, float]) -> tuple[float, float]:
        total = sum(times.values())
        return times["outputs"] / total, times["outputs"] / (total - times["models"])

    share, share_no_models = shares(best)
    median_share, _ = shares(median)
    runs = max(1, args.repeat)
    print(f"study: {args.slices} slices {args.size}x{args.size}, {args.lesions} lesions "
          f"({excluded} left out), SEG frames {seg_frames}; "
          f"fastest (median) of {runs} runs")
    print(f"read files:          {best['read']:.3f} s ({median['read']:.3f})")
    print(f"assemble volume:     {best['assemble']:.3f} s ({median['assemble']:.3f})")
    if analyzer is not None:
        print(f"models:              {best['models']:.3f} s ({median['models']:.3f})  "
              "Analyzer, four models, ONNX Runtime on CPU in-process")
    else:
        print("models: not available (no model repository); total = read + assemble + outputs")
    print(f"build SEG + SR + PR: {best['outputs']:.3f} s ({median['outputs']:.3f})")
    print(f"ratio outputs / (read + assemble + outputs): {share_no_models:.3f}")
    print(f"ratio outputs / total processing time: {share:.3f} (median runs: {median_share:.3f}; "
          f"limit {args.limit:.2f}) -> {'PASS' if share < args.limit else 'FAIL'}")
    return 0 if share < args.limit else 1
