"""Write a synthetic study as DICOM CT Image Storage instances (or one Enhanced CT instance)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from node.synth.truth import SynthStudy

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Transfer syntaxes the writer can produce (JPEG Lossless through DCMTK's ``dcmcjpeg``).
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg-lossless": JPEGLosslessSV1,
}
IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.10.1455.1")


def _fmt(v: float) -> str:
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _common(study: SynthStudy, sop_class: UID) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.ContentDate = study.study_date
    ds.AcquisitionDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = study.study_time
    ds.ContentTime = study.study_time
    ds.AcquisitionTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = "AINODE"
    ds.ManufacturerModelName = "Synthetic phantom"
    ds.InstitutionName = "Synthetic cohort"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"CT {study.coverage.replace('_', ' ')}"
    ds.SeriesDescription = f"Synthetic CT {study.slice_thickness:g} mm"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.BodyPartExamined = {"chest": "CHEST", "abdomen": "ABDOMEN"}.get(
        study.coverage,
        "CHESTABDPELVIS"
        if "pelvis" in study.coverage and "chest" in study.coverage
        else "ABDOMENPELVIS"
        if "pelvis" in study.coverage
        else "CHESTABDOMEN",
    )
    ds.SliceThickness = _fmt(study.slice_thickness)
    ds.KVP = _fmt(study.kvp)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = study.series_instance_uid
    ds.StudyID = study.accession_number[-6:]
    ds.SeriesNumber = 2
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = study.hu.shape[1], study.hu.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    return ds


def _stored(study: SynthStudy, intercept: int) -> np.ndarray:
    return (study.hu.astype(np.int32) - intercept).clip(0, 65535).astype(np.uint16)


def write_ct_series(
    study: SynthStudy,
    out_dir: Path,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    enhanced: bool = False,
    rescale_intercept: int = -1024,
    series_number: int = 2,
) -> list[Path]:
    """Write ``study`` as DICOM files into ``out_dir`` and return their paths.

    Parameters
    ----------
    transfer_syntax:
        a UID of ``TRANSFER_SYNTAXES`` (or its short name there, e.g. ``"jpeg-ls"``).
    enhanced:
        write one Enhanced CT Image (multi-frame) instance instead of one file per slice.
    rescale_intercept:
        stored value = HU - intercept (unsigned 16 bit).
    """
    ts = UID(TRANSFER_SYNTAXES.get(transfer_syntax, transfer_syntax))
    if ts not in TRANSFER_SYNTAXES.values():
        raise ValueError(
            f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if enhanced:
        paths = [_write_enhanced(study, out_dir, ts, rescale_intercept, series_number)]
    else:
        paths = _write_single_frames(study, out_dir, ts, rescale_intercept, series_number)
    if ts == JPEGLosslessSV1:
        _dcmtk_compress(paths)
    return paths


def _file_meta(sop_class: UID, sop_uid: str, ts: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts == JPEGLosslessSV1 else ts
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "AINODE_SYNTH"
    return meta


def _encode(ds: Dataset, arr: np.ndarray, ts: UID) -> None:
    if ts in NATIVE_SYNTAXES or ts == JPEGLosslessSV1:
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        return
    ds.compress(ts, arr, generate_instance_uid=False)


def _write_single_frames(
    study: SynthStudy, out_dir: Path, ts: UID, intercept: int, series_number: int
) -> list[Path]:
    common = _common(study, CT_IMAGE_STORAGE)
    common.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    common.SeriesNumber = series_number
    common.AcquisitionNumber = 1
    ps = _fmt(study.spacing[1]), _fmt(study.spacing[2])
    common.PixelSpacing = list(ps)
    common.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    common.RescaleIntercept = str(intercept)
    common.RescaleSlope = "1"
    common.RescaleType = "HU"
    common.WindowCenter = "40"
    common.WindowWidth = "400"
    common.ConvolutionKernel = "STANDARD"
    stored = _stored(study, intercept)
    n = stored.shape[0]
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.update(common)
        sop_uid = generate_uid(entropy_srcs=[study.series_instance_uid, str(k)])
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = n - k  # scanners number head to feet; ingest never trusts it
        pos = study.affine @ np.array([0.0, 0.0, float(k), 1.0])
        ds.ImagePositionPatient = [_fmt(v) for v in pos[:3]]
        ds.SliceLocation = _fmt(pos[2])
        ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid, ts)
        _encode(ds, stored[k], ts)
        path = out_dir / f"CT{k + 1:04d}.dcm"
        ds.save_as(
            path,
            enforce_file_format=True,
            implicit_vr=ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian,
            little_endian=True,
        )
        paths.append(path)
    return paths


def _write_enhanced(
    study: SynthStudy, out_dir: Path, ts: UID, intercept: int, series_number: int
) -> Path:
    ds = _common(study, ENHANCED_CT_IMAGE_STORAGE)
    sop_uid = generate_uid(entropy_srcs=[study.series_instance_uid, "enhanced"])
    ds.SOPInstanceUID = sop_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = study.study_date + study.study_time
    ds.ContentQualification = "RESEARCH"
    ds.ImageComments = "synthetic phantom"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.PixelPresentation = "MONOCHROME"
    ds.SoftwareVersions = "ainode"
    ds.DeviceSerialNumber = "0"
    n = study.hu.shape[0]
    ds.NumberOfFrames = n
    ds.BitsStored = 16
    ds.AcquisitionDuration = 0.5 * n
    ds.AcquisitionContextSequence = Sequence([])

    dim_uid = generate_uid(entropy_srcs=[study.series_instance_uid, "dimension"])
    dim_org = Dataset()
    dim_org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = Sequence([dim_org])
    dim = Dataset()
    dim.DimensionOrganizationUID = dim_uid
    dim.DimensionIndexPointer = 0x00200032
    dim.FunctionalGroupPointer = 0x00209113
    dim.DimensionDescriptionLabel = "Image Position"
    ds.DimensionIndexSequence = Sequence([dim])

    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    shared.PlaneOrientationSequence = Sequence([orient])
    measures = Dataset()
    measures.PixelSpacing = [_fmt(study.spacing[1]), _fmt(study.spacing[2])]
    measures.SliceThickness = _fmt(study.slice_thickness)
    measures.SpacingBetweenSlices = _fmt(study.spacing[0])
    shared.PixelMeasuresSequence = Sequence([measures])
    rescale = Dataset()
    rescale.RescaleIntercept = str(intercept)
    rescale.RescaleSlope = "1"
    rescale.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([rescale])
    voi = Dataset()
    voi.WindowCenter = "40"
    voi.WindowWidth = "400"
    shared.FrameVOILUTSequence = Sequence([voi])
    ftype = Dataset()
    ftype.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ftype.PixelPresentation = "MONOCHROME"
    ftype.VolumetricProperties = "VOLUME"
    ftype.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = Sequence([ftype])
    acq = Dataset()
    acq.AcquisitionType = "SPIRAL"
    acq.ConstantVolumeFlag = "NO"
    acq.FluoroscopyFlag = "NO"
    shared.CTAcquisitionTypeSequence = Sequence([acq])
    fov = float(study.hu.shape[2] * study.spacing[2])
    details = Dataset()
    details.DataCollectionDiameter = _fmt(fov)
    details.GantryDetectorTilt = "0"
    details.TableHeight = _fmt(study.table_height_mm)
    details.RotationDirection = "CW"
    details.RevolutionTime = 0.5
    details.SingleCollimationWidth = 0.625
    details.TotalCollimationWidth = 40.0
    details.SpiralPitchFactor = 0.984
    shared.CTAcquisitionDetailsSequence = Sequence([details])
    table = Dataset()
    table.TableSpeed = 78.7
    table.TableFeedPerRotation = 39.4
    table.SpiralPitchFactor = 0.984
    shared.CTTableDynamicsSequence = Sequence([table])
    recon = Dataset()
    recon.ReconstructionAlgorithm = "FILTER_BACK_PROJ"
    recon.ConvolutionKernel = "STANDARD"
    recon.ConvolutionKernelGroup = "SOFT_TISSUE"
    recon.ReconstructionDiameter = _fmt(fov)
    recon.ReconstructionPixelSpacing = [float(study.spacing[1]), float(study.spacing[2])]
    recon.ReconstructionAngle = 360.0
    recon.ImageFilter = "NONE"
    shared.CTReconstructionSequence = Sequence([recon])
    expo = Dataset()
    expo.KVP = _fmt(study.kvp)
    expo.FocalSpots = ["1.2"]
    expo.FilterType = "BODY"
    expo.FilterMaterial = "ALUMINUM"
    shared.CTXRayDetailsSequence = Sequence([expo])
    exposure = Dataset()
    exposure.ExposureTimeInms = 500.0
    exposure.XRayTubeCurrentInmA = 200.0
    exposure.ExposureInmAs = 100.0
    exposure.CTDIvol = 8.0
    exposure.ExposureModulationType = "NONE"
    shared.CTExposureSequence = Sequence([exposure])
    geom = Dataset()
    geom.DistanceSourceToIsocenter = 541.0
    geom.DistanceSourceToDataCollectionCenter = 949.0
    geom.DistanceSourceToDetector = 949.0
    shared.CTGeometrySequence = Sequence([geom])
    anatomy = Dataset()
    region = Dataset()
    region.CodeValue = (
        "818981001"
        if study.coverage == "abdomen"
        else "43799004"
        if study.coverage == "chest"
        else "416775004"
    )
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = {"818981001": "Abdomen", "43799004": "Chest"}.get(
        region.CodeValue, "Chest, Abdomen and Pelvis"
    )
    anatomy.AnatomicRegionSequence = Sequence([region])
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = Sequence([anatomy])
    irradiation = Dataset()
    irradiation.IrradiationEventUID = generate_uid(
        entropy_srcs=[study.series_instance_uid, "irradiation"]
    )
    shared.IrradiationEventIdentificationSequence = Sequence([irradiation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    del ds.KVP
    del ds.SliceThickness

    frames = []
    for k in range(n):
        fg = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [
            _fmt(v) for v in (study.affine @ np.array([0.0, 0.0, float(k), 1.0]))[:3]
        ]
        fg.PlanePositionSequence = Sequence([pos])
        ctpos = Dataset()
        ctpos.TablePosition = float(pos.ImagePositionPatient[2])
        ctpos.ReconstructionTargetCenterPatient = [0.0, 0.0, float(pos.ImagePositionPatient[2])]
        ctpos.DataCollectionCenterPatient = [0.0, 0.0, float(pos.ImagePositionPatient[2])]
        fg.CTPositionSequence = Sequence([ctpos])
        content = Dataset()
        content.DimensionIndexValues = [k + 1]
        content.FrameAcquisitionDateTime = study.study_date + study.study_time
        content.FrameReferenceDateTime = study.study_date + study.study_time
        content.FrameAcquisitionDuration = 500.0
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        fg.FrameContentSequence = Sequence([content])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.file_meta = _file_meta(ENHANCED_CT_IMAGE_STORAGE, sop_uid, ts)
    _encode(ds, _stored(study, intercept), ts)
    path = out_dir / "CT_ENHANCED.dcm"
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian,
        little_endian=True,
    )
    return path


def _dcmtk_compress(paths: list[Path]) -> None:
    tool = shutil.which("dcmcjpeg")
    if tool is None:
        raise ValueError(
            "transfer_syntax JPEG Lossless needs DCMTK's dcmcjpeg (Debian package dcmtk)"
        )
    for path in paths:
        subprocess.run(
            [tool, "--encode-lossless-sv1", str(path), str(path)], check=True, capture_output=True
        )


def read_back(path: Path) -> Dataset:
    """Read one written file (for checks)."""
    return pydicom.dcmread(path)
