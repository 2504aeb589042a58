"""The Analyzer on the committed ONNX models, in-process: answers, refusals and lesion records."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from node.config import Settings
from node.inference import analyzer as an
from node.inference import preprocess as pp
from node.inference.analyzer import Analyzer, Detection, check_volume, group_detections
from node.inference.backend import (
    MODEL_NAMES,
    ModelNotFoundError,
    OnnxBackend,
    TritonBackend,
    open_backend,
)
from node.synth.phantom import synthesize_study

REPO = Path(__file__).resolve().parents[2] / "triton_models"


@pytest.fixture(scope="module")
def backend() -> OnnxBackend:
    return OnnxBackend(REPO, threads=1)


@pytest.fixture(scope="module")
def study():
    return synthesize_study(10001, 0, small=True)  # a validation patient (training uses 0..159)


@pytest.fixture(scope="module")
def analysis(backend, study):
    return Analyzer(backend).analyze(study.to_volume())


def test_analysis_of_a_synthetic_study(analysis, study) -> None:
    volume = study.to_volume()
    assert analysis.not_analysed is None
    assert analysis.body_part_scores.shape == (volume.shape[0],)
    assert set(analysis.model_versions) == set(MODEL_NAMES)
    assert {"preprocess", "body_part", "detect", "segment", "embed", "total"} <= set(analysis.timings)
    for lesion in analysis.lesions:
        assert 0 <= lesion.key_slice < volume.shape[0]
        assert lesion.embedding is not None and abs(np.linalg.norm(lesion.embedding) - 1) < 1e-3
        assert lesion.site == lesion.lesion_type.value
        if lesion.mask is not None:
            end = np.add(lesion.mask_offset, lesion.mask.shape)
            assert all(0 <= o for o in lesion.mask_offset) and all(end <= volume.shape)
            assert lesion.mask.any() and lesion.recist is not None and lesion.volume_mm3 > 0
            assert lesion.recist.short_axis_mm <= lesion.recist.long_axis_mm


def test_body_part_scores_follow_the_slice_order(analysis) -> None:
    s = analysis.body_part_scores
    r = np.corrcoef(s, np.arange(len(s)))[0, 1]
    assert r > 0.95, f"body-part scores do not follow slice order (r={r:.2f})"


def _volume(study, **changes):
    return replace(study.to_volume(), **changes)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda v: {"pixels": v.pixels[:, :40, :40]}, "too small"),
        (lambda v: {"pixels": v.pixels[:2]}, "too thin"),
        (lambda v: {"spacing": (8.0, *v.spacing[1:])}, "slice spacing"),
        (lambda v: {"spacing": (v.spacing[0], 6.0, 6.0)}, "outside the trained range"),
        (lambda v: {"pixels": np.zeros_like(v.pixels)}, "do not look like CT"),
        (lambda v: {"spacing": (v.spacing[0], 0.1, 0.1)}, "too small"),
    ],
)
def test_volumes_outside_the_trained_range_are_not_analysed(backend, study, change, reason) -> None:
    volume = study.to_volume()
    bad = replace(volume, **change(volume))
    assert reason in check_volume(bad)
    result = Analyzer(backend).analyze(bad)
    assert result.lesions == [] and reason in result.not_analysed


def test_missing_model_names_model_and_path(tmp_path: Path) -> None:
    (tmp_path / "onnx").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"lesion_detector.*onnx/lesion_detector\.onnx"):
        OnnxBackend(tmp_path).infer("lesion_detector", {"image": np.zeros((1, 9, 256, 256), np.float32)})


def test_open_backend_follows_settings() -> None:
    local = open_backend(Settings(model_repository=REPO))
    assert isinstance(local, OnnxBackend)
    remote = open_backend(Settings(model_repository=REPO, triton_url="127.0.0.1:1"))
    assert isinstance(remote, TritonBackend) and remote.repository.endswith("triton_models/cpu")
    remote.close()
    with pytest.raises(ValueError, match="inference_backend"):
        open_backend(Settings(inference_backend="gpu"))


def test_grouping_merges_neighbouring_slices() -> None:
    def det(k, row, col, score):
        return Detection(k=k, row=row, col=col, height_mm=20, width_mm=20, score=score, type_index=0)

    groups = group_detections([det(10, 100, 100, 0.9), det(11, 101, 99, 0.8), det(12, 100, 100, 0.7), det(11, 160, 40, 0.6), det(30, 100, 100, 0.95)])
    assert [len(g) for g in groups] == [1, 3, 1]
    assert groups[1][0].score == 0.9


def test_the_zoomed_pass_adds_only_what_the_canvas_pass_has_not_found() -> None:
    def det(k, row, col, mm, score):
        return Detection(k=k, row=row, col=col, height_mm=mm, width_mm=mm, score=score, type_index=0)

    plain = [det(10, 100, 100, 8, 0.9)]
    same = det(10, 100.5, 99.5, 7, 0.4)  # the same lesion seen again: dropped
    other_slice = det(11, 100, 100, 7, 0.4)
    beside = det(10, 100, 106, 6, 0.3)  # 12 mm away on the same slice
    shifted = det(10, 100, 102, 8, 0.3)  # half its box on the canvas peak's (IoU 1/3): another box
    assert an.merge_zoomed(plain, [same, other_slice, beside, shifted]) == [*plain, other_slice, beside, shifted]
    assert an.merge_zoomed([], [same]) == [same]


class _Counting:
    """The real backend, with the detector's input shapes written down."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.detector_inputs: list[tuple[int, ...]] = []

    def infer(self, model, inputs):
        if model == "lesion_detector":
            self.detector_inputs.append(inputs["image"].shape)
        return self.backend.infer(model, inputs)

    def model_versions(self):
        return self.backend.model_versions()

    def model_parameters(self, model):
        return self.backend.model_parameters(model)


class _BlindSegmenter(_Counting):
    """The real backend, but a segmenter that finds nothing anywhere."""

    def infer(self, model, inputs):
        out = self.backend.infer(model, inputs)
        if model == "lesion_segmenter":
            out = {name: np.zeros_like(value) for name, value in out.items()}
        return out


def test_detections_the_segmenter_finds_nothing_in_are_ranked_down(backend, study, analysis) -> None:
    assert analysis.lesions  # the committed segmenter finds this study's lesions
    volume = study.to_volume()
    blind = _BlindSegmenter(backend)
    # At the node's threshold such a detection cannot be a lesion ...
    assert Analyzer(blind).analyze(volume).lesions == []
    # ... under a lower one it is reported at the lower score, and says why.
    low = Analyzer(blind, detection_threshold=0.1, detector_zoom=1.0).analyze(volume).lesions
    assert low and all(les.mask is None and les.recist is None for les in low)
    assert all(les.notes == ("segmenter gave no mask on the key slice",) for les in low)
    assert all(0.1 <= les.score <= an.NO_MASK_SCORE for les in low)
    assert an.verified_score(0.8, (0.0, 0.0, 2.0, 2.0)) == 0.8
    assert an.verified_score(0.8, None) == pytest.approx(0.8 * an.NO_MASK_SCORE)


def test_the_zoomed_pass_runs_only_where_its_scores_can_give_a_lesion(backend) -> None:
    from node.synth.phantom import ScanParams

    scan = ScanParams(rows=128, columns=128, pixel_spacing=3.3, slice_thickness=5.0, num_slices=14, coverage="chest")
    volume = synthesize_study(10001, 0, scan=scan).to_volume()
    canvas = pp.make_canvas(volume.pixels, volume.spacing)
    batches = -(-canvas.pixels.shape[0] // 8)
    zoomed = pp.zoomed_canvas(volume.pixels, volume.spacing, canvas, an.DETECTOR_ZOOM)
    tiles = len(pp.tile_starts(zoomed.pixels.shape[1])) * len(pp.tile_starts(zoomed.pixels.shape[2]))

    counting = _Counting(backend)
    Analyzer(counting).analyze(volume)  # the node's threshold, 0.5: zoomed scores stay under it
    assert len(counting.detector_inputs) == batches

    counting = _Counting(backend)
    Analyzer(counting, detection_threshold=0.3).analyze(volume)
    assert len(counting.detector_inputs) == batches * (1 + tiles)
    assert set(counting.detector_inputs) <= {(b, 9, pp.CANVAS_SIZE, pp.CANVAS_SIZE) for b in range(1, 9)}
    counting = _Counting(backend)
    Analyzer(counting, detection_threshold=0.3, detector_zoom=1.0).analyze(volume)
    assert len(counting.detector_inputs) == batches

    keys = np.arange(canvas.pixels.shape[0])
    plain = an.detect_on(backend, canvas, keys, threshold=0.05)
    both = an.detect_on(backend, canvas, keys, threshold=0.05, zoomed=zoomed)
    added = both[len(plain) :]
    assert both[: len(plain)] == plain and added  # the zoomed pass finds peaks of its own on this study
    assert all(d.score <= an.ZOOM_SCORE and max(d.height_mm, d.width_mm) < an.ZOOM_MAX_MM for d in added)
    # In canvas coordinates: on the canvas, inside its field of view.
    assert all(0 <= d.row <= pp.CANVAS_SIZE - 1 and 0 <= d.col <= pp.CANVAS_SIZE - 1 for d in added)
    with pytest.raises(ValueError, match="detector_zoom"):
        Analyzer(backend, detector_zoom=0.5)


def test_refined_boxes_follow_the_lesion_not_the_detector_size(backend, study) -> None:
    from node.eval.metrics import iou
    from node.inference import preprocess as pp
    from node.inference.analyzer import refine_boxes

    volume = study.to_volume()
    canvas = pp.make_canvas(volume.pixels, volume.spacing)
    lesion = max(study.lesions, key=lambda les: les.long_axis_mm)
    col0, row0, col1, row1 = lesion.box
    k, r, c = canvas.from_volume(lesion.key_slice, (row0 + row1) / 2, (col0 + col1) / 2)
    # A detection at the lesion's centre whose size is wrong by half: the box comes from the mask.
    wrong = Detection(k=int(round(k)), row=r, col=c, height_mm=lesion.long_axis_mm * 1.5, width_mm=lesion.long_axis_mm * 0.5, score=0.9, type_index=0)
    far = Detection(k=int(round(k)), row=2.0, col=2.0, height_mm=10.0, width_mm=10.0, score=0.9, type_index=0)  # air
    boxes = refine_boxes(backend, volume, canvas, [wrong, far])
    assert boxes[0] is not None
    assert iou(boxes[0], np.array([lesion.box]))[0] >= 0.5
    assert boxes[1] is None
    assert refine_boxes(backend, volume, canvas, []) == []


def test_a_lesion_the_detector_boxes_short_is_outlined_whole(backend, monkeypatch) -> None:
    # The detector boxes large lesions short; on a crop twice that box the segmenter outlines the
    # part of the lesion that fills it. The fit grows the crop while the mask grows with it.
    from node.eval.metrics import iou
    from node.inference.analyzer import Fit, fit_lesions

    study = synthesize_study(10002, 0, small=True)  # a validation patient with two large liver lesions
    volume = study.to_volume()
    large = sorted(study.lesions, key=lambda les: -les.long_axis_mm)[:2]
    assert min(les.long_axis_mm for les in large) > 50.0

    def overlaps() -> list[float]:
        places = [
            Fit(key_slice=les.key_slice, center_rc=((les.box[1] + les.box[3]) / 2, (les.box[0] + les.box[2]) / 2), size_mm=0.55 * les.long_axis_mm, box=None)
            for les in large
        ]
        return [0.0 if fit.box is None else float(iou(fit.box, np.array([les.box]))[0]) for fit, les in zip(fit_lesions(backend, volume, places), large, strict=True)]

    assert min(overlaps()) >= 0.8
    monkeypatch.setattr(an, "FIT_GAIN", float("inf"))  # no growth: the crop twice the short box
    assert min(overlaps()) < 0.5


def test_lesion_boxes_use_the_truth_convention(analysis, study) -> None:
    # A box's edges lie half a pixel beyond its outer pixel centres, as the synthetic truth's do:
    # a half-pixel shift would cost a 5-pixel lesion a third of its IoU.
    from node.inference.analyzer import _pixel_box

    assert _pixel_box(np.array([3, 7]), np.array([10, 12])) == (9.5, 2.5, 12.5, 7.5)
    truth = study.lesions[0]
    mask = study.lesion_labels[truth.key_slice] == truth.label
    rows, cols = np.nonzero(mask)
    assert _pixel_box(rows, cols) == pytest.approx(truth.box)
    for lesion in analysis.lesions:
        if lesion.mask is None:
            continue
        key = lesion.mask[lesion.key_slice - lesion.mask_offset[0]]
        rows, cols = np.nonzero(key)
        assert lesion.box == pytest.approx(_pixel_box(rows + lesion.mask_offset[1], cols + lesion.mask_offset[2]))


def test_a_lesion_found_near_its_end_is_measured_at_its_widest_slice(backend) -> None:
    # The detector often fires most strongly where a lesion is small (one of its ends); the slice
    # walk must follow the lesion through its widest slices, as a crop sized for that end cannot.
    from node.inference.analyzer import Fit, SliceMask, walk_masks
    from node.synth.phantom import ScanParams

    # A validation patient at 2 mm slices, so that its largest lesion spans many slices.
    study = synthesize_study(10002, 0, scan=ScanParams(rows=192, columns=192, pixel_spacing=2.1, slice_thickness=2.0))
    volume = study.to_volume()
    lesion = max(study.lesions, key=lambda les: les.long_axis_mm)
    label = study.lesion_labels == lesion.label
    present = np.nonzero(label.any(axis=(1, 2)))[0]
    end = int(present.max())
    assert end - lesion.key_slice >= 3, "the test needs a lesion several slices deep"
    rows, cols = np.nonzero(label[end])
    place = Fit(key_slice=end, center_rc=(rows.mean(), cols.mean()), size_mm=SliceMask.of(label[end]).extent_mm(volume.spacing), box=None)
    walked = walk_masks(backend, volume, [place])[0]
    assert abs(walked["key_slice"] - lesion.key_slice) <= 2
    key = np.zeros(label.shape[1:], dtype=bool)
    off = walked["offset"]
    key_mask = walked["mask"][walked["key_m"]]
    key[off[1] : off[1] + key_mask.shape[0], off[2] : off[2] + key_mask.shape[1]] = key_mask
    truth = label[lesion.key_slice]
    dice = 2 * (key & truth).sum() / (key.sum() + truth.sum())
    assert dice >= 0.7, f"widest-slice Dice {dice:.2f}"


class _ThresholdSegmenter:
    """A segmenter that marks every pixel of the crop's middle slice denser than 0 HU: it follows
    whatever touches a lesion, as a real one may into a vessel or bowel loop of the same density."""

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from node.inference import preprocess as pp

        assert model == "lesion_segmenter"
        return {"mask": (inputs["image"][:, 1:2] > pp.window(np.array(0.0))).astype(np.float32) * self.probability}

    def __init__(self, probability: float = 1.0, parameters: dict[str, str] | None = None) -> None:
        self.probability = probability
        self.parameters = parameters or {}

    def model_parameters(self, model: str) -> dict[str, str]:
        return dict(self.parameters)


def test_the_segmenter_is_cut_where_its_own_files_say() -> None:
    # The same probabilities (0.5 on the lesion) cut at the segmenter's own mask_threshold: below
    # 0.5 the lesion is found, above it nothing is; no threshold uses the default; a broken one
    # is a clear error, not a silent default.
    from node.imaging.volume import Volume
    from node.inference.analyzer import Fit, fit_lesions
    from node.inference.backend import DEFAULT_MASK_THRESHOLD, InferenceError

    n, size = 10, 96
    z, r, c = np.meshgrid(np.arange(n) * 2.0, np.arange(size) * 1.0, np.arange(size) * 1.0, indexing="ij")
    pixels = np.where((r - 48.0) ** 2 + (c - 48.0) ** 2 <= 8.0**2, 40.0, -100.0).astype(np.float32)
    volume = Volume(
        pixels=pixels, affine=np.diag([1.0, 1.0, 2.0, 1.0]), spacing=(2.0, 1.0, 1.0),
        study_instance_uid="1.2", series_instance_uid="1.2.3", frame_of_reference_uid="1.2.4",
        sop_instance_uids=tuple(f"1.2.3.{i}" for i in range(n)), sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    )  # fmt: skip
    place = [Fit(key_slice=5, center_rc=(48.0, 48.0), size_mm=16.0, box=None)]

    def box(parameters):
        return fit_lesions(_ThresholdSegmenter(0.5, parameters), volume, place)[0].box

    assert box({"mask_threshold": "0.4"}) is not None
    assert box({"mask_threshold": "0.6"}) is None
    assert DEFAULT_MASK_THRESHOLD < 0.5 and box({}) is not None
    with pytest.raises(InferenceError, match="mask_threshold 'high'"):
        box({"mask_threshold": "high"})


def test_a_slice_walk_stops_where_the_mask_runs_into_a_neighbouring_structure() -> None:
    # A 16 mm node whose lower pole touches a cone of the same density that widens downwards (a
    # vessel's branching, a bowel loop): past the node's widest slice the mask shrinks, then swells
    # into the cone. The walk stops there, so the key slice and RECIST stay on the node.
    from node.imaging.volume import Volume
    from node.inference.analyzer import Fit, walk_masks

    n, size = 60, 128
    z, r, c = np.meshgrid(np.arange(n) * 2.0, np.arange(size) * 1.0, np.arange(size) * 1.0, indexing="ij")
    node_ = (z - 60.0) ** 2 + (r - 64.0) ** 2 + (c - 50.0) ** 2 <= 8.0**2  # slices 26..34, widest 30
    cone = (z <= 54.0) & ((r - 64.0) ** 2 + (c - 50.0) ** 2 <= (1.0 + 0.9 * (54.0 - z)) ** 2)
    pixels = np.where(node_ | cone, 40.0, -100.0).astype(np.float32)
    volume = Volume(
        pixels=pixels, affine=np.diag([1.0, 1.0, 2.0, 1.0]), spacing=(2.0, 1.0, 1.0),
        study_instance_uid="1.2", series_instance_uid="1.2.3", frame_of_reference_uid="1.2.4",
        sop_instance_uids=tuple(f"1.2.3.{i}" for i in range(n)), sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    )
    for start in (30, 33):  # at the node's widest slice, and near its upper end
        walked = walk_masks(_ThresholdSegmenter(), volume, [Fit(key_slice=start, center_rc=(64.0, 50.0), size_mm=12.0, box=None)])[0]
        first, last = walked["offset"][0], walked["offset"][0] + walked["mask"].shape[0] - 1
        assert first >= 25, f"from slice {start} the walk followed the cone down to slice {first}"
        assert last >= 33 and first <= 27, f"from slice {start} the node's slices {first}..{last} were cut"
        assert walked["key_slice"] == 30
