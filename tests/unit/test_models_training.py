"""Losses, samplers, targets and the ONNX export of the training code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from node.inference import preprocess as pp
from node.training import datasets, export, train
from node.training.models import SPECS, build


def test_ssbr_loss_prefers_ordered_equidistant_scores() -> None:
    ordered = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    uneven = torch.tensor([[0.0, 0.2, 2.0, 2.1, 4.0]])
    reversed_ = ordered.flip(1)
    assert train.ssbr_loss(ordered) < train.ssbr_loss(uneven) < train.ssbr_loss(reversed_)


def test_sequence_loss_margins() -> None:
    # Squared distances to A: 0.0, 0.1+, 0.3+, 0.7+ satisfy margins 0.1 / 0.2 / 0.4.
    a = torch.zeros(3)
    good = torch.stack([a, torch.tensor([0.0, 0, 0]), torch.tensor([0.35, 0, 0]), torch.tensor([0.6, 0, 0]), torch.tensor([0.9, 0, 0])])
    assert float(train.sequence_loss(good[None])) == 0.0
    bad = good.clone()
    bad[4] = bad[3]  # D and E equally far: the ADE margin 0.4 is violated
    assert float(train.sequence_loss(bad[None])) == pytest.approx(0.4 / 2)


def test_sequential_sampling_orders_type_location_size() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 10)
    location = rng.random((30, 3))
    size = rng.random((30, 2))
    for anchor in range(20):
        a, b, c, d, e = train.sequential_sample(anchor, labels, location, size, rng)
        assert a == anchor and labels[b] == labels[c] == labels[d] == 0 and labels[e] == 1
        dl = np.linalg.norm(location - location[anchor], axis=1)
        assert dl[b] <= dl[d] and dl[c] <= dl[d]
    assert train.sequential_sample(25, np.array([0] * 26), location[:26], size[:26], rng) is None


def _track_data(studies: list[str], tracks: list[str]) -> train.EmbedderData:
    n = len(studies)
    return train.EmbedderData(
        images=np.zeros((n, 3, 4, 4), np.float16), cues=np.zeros((n, 4), np.float32), types=np.zeros(n, int),
        location=np.zeros((n, 3)), size=np.zeros((n, 2)), patients=np.array([t.split("/")[0] or "p" for t in tracks]),
        studies=np.array(studies), tracks=np.array(tracks),
    )


def test_track_triplets_pair_one_lesion_across_studies() -> None:
    # Patient p: lesions a, b at T0 and T1; c only at T1. Patient q: one lesion, one study. One unknown track.
    data = _track_data(
        ["p0", "p0", "p1", "p1", "p1", "q0", "p0"],
        ["p/a", "p/b", "p/a", "p/b", "p/c", "q/a", ""],
    )
    t = train.track_triplets(data)
    pairs = {(int(a), int(p)): sorted(int(x) for x in n) for a, p, n in zip(t.anchor, t.positive, t.negatives, strict=True)}
    assert pairs == {
        (0, 2): [3, 4], (2, 0): [1, 6], (1, 3): [2, 4], (3, 1): [0, 6],
    }


def test_track_loss_is_zero_when_the_own_lesion_is_nearest_by_the_margin() -> None:
    a = torch.tensor([[0.0, 0.0]])
    p = torch.tensor([[0.1, 0.0]])
    far = [torch.tensor([[0.0, 1.0], [1.0, 0.0]])]
    assert float(train.track_loss(a, p, far)) == 0.0
    near = [torch.tensor([[0.0, 0.3], [1.0, 0.0]])]  # 0.01 - 0.09 + 0.2
    assert float(train.track_loss(a, p, near)) == pytest.approx(0.12)


def test_detector_targets_mark_the_centre() -> None:
    mask = np.zeros((128, 128), bool)
    mask[40:60, 70:80] = True
    t = train.detector_targets([(3, mask)], 128)
    i, j = np.unravel_index(np.argmax(t["heat"][3]), t["heat"][3].shape)
    assert t["heat"][3, i, j] == 1.0 and t["reg"][i, j] == 1.0
    assert (i, j) == (25, 37)
    np.testing.assert_allclose(t["wh"][:, i, j], (20 * pp.CANVAS_MM, 10 * pp.CANVAS_MM))
    centre = ((i + t["off"][0, i, j]) * pp.HEATMAP_STRIDE, (j + t["off"][1, i, j]) * pp.HEATMAP_STRIDE)
    np.testing.assert_allclose(centre, (50.0, 75.0))
    assert t["heat"][[0, 1, 2, 4, 5, 6, 7]].max() == 0.0
    # Size is also learnt on the 3x3 cells around the centre (half weight).
    assert t["wh_mask"][i, j] == 1.0 and t["wh_mask"][i - 1 : i + 2, j - 1 : j + 2].sum() == 5.0
    np.testing.assert_allclose(t["wh"][:, i + 1, j - 1], (20 * pp.CANVAS_MM, 10 * pp.CANVAS_MM))


def test_decoded_targets_give_the_box_back() -> None:
    """Targets read back through decode_detections: the mask's box in pixel-centre coordinates."""
    from node.inference.analyzer import decode_detections

    mask = np.zeros((128, 128), bool)
    mask[41:52, 70:77] = True  # rows 41..51, cols 70..76: centre (46, 73), 22 x 14 mm
    t = train.detector_targets([(5, mask)], 128)
    (d,) = decode_detections(4, t["heat"][None], t["wh"][None], t["off"][None], 0.5)
    assert (d.k, d.type_index, d.score) == (4, 5, 1.0)
    np.testing.assert_allclose((d.row, d.col), (46.0, 73.0), atol=1e-5)
    np.testing.assert_allclose((d.height_mm, d.width_mm), (11 * pp.CANVAS_MM, 7 * pp.CANVAS_MM))


@pytest.mark.parametrize(
    ("name", "options"),
    [("lesion_segmenter", {}), ("lesion_embedder", {}), ("lesion_detector", {"head": "typed"}), ("lesion_detector", {"head": "objectness"}),
     ("lesion_detector", {"fine_stem": True})],
)
def test_onnx_export_matches_torch(tmp_path: Path, name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = build(name, **options).eval()
    path = export.export_onnx(model, name, tmp_path / f"{name}.onnx", metadata={"version": "t1"})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    flip = "+flip" if name in export.FLIP_AVERAGED else ""
    assert session.get_modelmeta().custom_metadata_map["version"] == f"t1-{export.weights_digest(onnx.load(str(path)))}{flip}"
    feeds = {t.name: (np.random.default_rng(1).random((3, *t.dims)) * 100).astype(np.float32) for t in SPECS[name].inputs}
    got = session.run(None, feeds)
    want = _torch_answer(model, name, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4)


def _torch_answer(model: torch.nn.Module, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """What the exported graph must answer: the torch model, averaged with its answer on the
    left-right mirror for the flip-averaged models (written out here, apart from the export)."""
    def run(image_flip: bool) -> list[np.ndarray]:
        args = [torch.from_numpy(v).flip(-1) if image_flip and k == "image" else torch.from_numpy(v) for k, v in feeds.items()]
        with torch.no_grad():
            out = model(*args)
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    direct = run(False)
    if name not in export.FLIP_AVERAGED:
        return direct
    mirror = run(True)
    if name == "lesion_embedder":
        total = direct[0] + mirror[0]
        return [total / np.linalg.norm(total, axis=1, keepdims=True), (direct[1] + mirror[1]) / 2]
    return [(d + b) / 2 for d, b in zip(direct, _mirrored_back(mirror, name), strict=True)]


def _mirrored_back(outputs: list[np.ndarray], name: str) -> list[np.ndarray]:
    """Spatial answers to a mirrored image, mapped back onto the image (the detector's column
    offset within a cell: c -> 1 - c)."""
    back = [o[..., ::-1].copy() for o in outputs]
    if name == "lesion_detector":
        back[2][:, 1] = 1.0 - back[2][:, 1]
    return back


@pytest.mark.parametrize("name", ["lesion_detector", "lesion_segmenter"])
def test_flip_averaged_graph_answers_a_mirrored_image_with_the_mirrored_answer(name: str) -> None:
    # Averaging over the mirror makes the model exactly left-right equivariant, so a lesion and
    # its mirror image get the same score, size and mask (mirrored).
    torch.manual_seed(0)
    proto = export.flip_average(export.onnx_proto(build(name), name), name)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    image = (np.random.default_rng(2).random((2, *SPECS[name].inputs[0].dims)) * 255).astype(np.float32)
    direct = session.run(None, {"image": image})
    mirror = session.run(None, {"image": np.ascontiguousarray(image[..., ::-1])})
    for d, m in zip(direct, _mirrored_back(mirror, name), strict=True):
        np.testing.assert_allclose(d, m, atol=1e-5)


def test_flip_average_keeps_the_weights_and_refuses_a_second_pass() -> None:
    torch.manual_seed(0)
    proto = export.onnx_proto(build("lesion_segmenter"), "lesion_segmenter")
    digest, weights = export.weights_digest(proto), len(proto.graph.initializer)
    averaged = export.flip_average(proto, "lesion_segmenter")
    assert export.is_flip_averaged(averaged)
    assert export.weights_digest(averaged) == digest and len(averaged.graph.initializer) == weights
    with pytest.raises(ValueError, match="already flip-averaged"):
        export.flip_average(averaged, "lesion_segmenter")
    with pytest.raises(ValueError, match="flip averaging"):
        export.flip_average(averaged, "body_part_regressor")


def test_fix_onnx_file_flip_averages_an_earlier_export_once(tmp_path: Path) -> None:
    # How the committed detector and embedder (exported before flip averaging) were brought up to
    # date: the same weights and digest, the version marked +flip, a second run changes nothing.
    torch.manual_seed(0)
    proto = export.onnx_proto(build("lesion_detector"), "lesion_detector")
    entry = proto.metadata_props.add()
    entry.key, entry.value = "version", "t1"
    path = tmp_path / "lesion_detector.onnx"
    onnx.save(proto, str(path))
    export.fix_onnx_file(path, "lesion_detector")
    once = path.read_bytes()
    export.fix_onnx_file(path, "lesion_detector")
    assert path.read_bytes() == once
    fixed = onnx.load(str(path))
    assert export.is_flip_averaged(fixed)
    assert {e.key: e.value for e in fixed.metadata_props}["version"] == f"t1-{export.weights_digest(proto)}+flip"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_committed_model_is_flip_averaged_as_its_export_would_be(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "triton_models" / "onnx" / f"{name}.onnx"
    proto = onnx.load(str(path))
    assert export.is_flip_averaged(proto) == (name in export.FLIP_AVERAGED)
    version = {e.key: e.value for e in proto.metadata_props}["version"]
    assert version.endswith(f"{export.weights_digest(proto)}{'+flip' if name in export.FLIP_AVERAGED else ''}")


def test_objectness_head_scores_a_peak_by_objectness_and_types_it_by_the_classifier() -> None:
    # The same eight-channel heatmap as the typed head: its largest channel is the type-blind
    # objectness and that channel's index the classifier's type, so decode_detections is unchanged.
    torch.manual_seed(0)
    model = build("lesion_detector", head="objectness").eval()
    with torch.no_grad():
        model.type_logits.bias.copy_(torch.arange(8.0) * 0.3)
        x = torch.rand(2, pp.DETECTOR_CHANNELS, 64, 64) * 255
        heat, types, _, _ = model.forward_logits(x)
        out, _, _ = model(x)
    assert heat.shape[1] == 1 and out.shape[1] == 8
    np.testing.assert_allclose(out.amax(dim=1), torch.sigmoid(heat[:, 0]), rtol=1e-6)
    assert torch.equal(out.argmax(dim=1), types.argmax(dim=1))
    assert build("lesion_detector").forward_logits(x)[1] is None  # the typed head: eight heatmaps, no classifier
    with pytest.raises(ValueError, match="head"):
        build("lesion_detector", head="anchors")


def test_objectness_detector_learns_from_typed_targets() -> None:

    studies = list(datasets.synthetic_studies(range(2), medium_every=0))
    result = train.train_lesion_detector(studies, rng=np.random.default_rng(0), epochs=2, progress=False, head="objectness")
    assert result.model.head == "objectness" and np.isfinite(result.figures["final_loss"])
    heat, _, _ = result.model(torch.from_numpy(pp.detector_inputs(pp.make_canvas(studies[0].pixels, studies[0].spacing), np.array([5]))))
    assert heat.shape == (1, 8, pp.CANVAS_SIZE // pp.HEATMAP_STRIDE, pp.CANVAS_SIZE // pp.HEATMAP_STRIDE)


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="name"):
        build("lesion_classifier")
    with pytest.raises(ValueError, match="variant"):
        export.triton_config(SPECS["lesion_segmenter"], variant="tpu")


def test_segmenter_samples_can_weigh_large_lesions() -> None:
    # `--segmenter-large-lesions N`: N times the crops for a lesion of 30 mm or more, the same
    # number for the others, so the few large lesions of the cohort are seen more often.

    studies = list(datasets.synthetic_studies(range(6), medium_every=0))
    large = sum(
        1 for s in studies for les in s.lesions
        if train.lesion_mask_2d(s, les, les.key_slice).any()
        and train.SliceMask.of(train.lesion_mask_2d(s, les, les.key_slice)).extent_mm(s.spacing) >= datasets.LARGE_LESION_MM
    )
    assert large > 0
    one = train.segmenter_samples(studies, rng=np.random.default_rng(0), per_lesion=2)
    three = train.segmenter_samples(studies, rng=np.random.default_rng(0), per_lesion=2, large_lesions=3)
    assert len(three) == len(one) + 2 * 2 * large


def test_detector_samples_can_weigh_small_and_large_lesions() -> None:
    # `--detector-small-lesions N`: N times the windows for a lesion under 12 mm, the same number
    # for the others and the same negatives.

    studies = list(datasets.synthetic_studies(range(3), medium_every=0))
    small = sum(1 for s in studies for les in s.lesions if les.long_axis_mm < datasets.SMALL_LESION_MM)
    assert 0 < small < sum(len(s.lesions) for s in studies)
    one = train.detector_samples(studies, rng=np.random.default_rng(0), per_lesion=2, negatives=1)
    three = train.detector_samples(studies, rng=np.random.default_rng(0), per_lesion=2, negatives=1, small_lesions=3)
    assert len(three) == len(one) + 2 * 2 * small
    # `--detector-large-lesions N` likewise for a lesion of 30 mm or more.
    large = sum(1 for s in studies for les in s.lesions if les.long_axis_mm >= datasets.LARGE_LESION_MM)
    assert large > 0
    both = train.detector_samples(
        studies, rng=np.random.default_rng(0), per_lesion=2, negatives=1, small_lesions=3, large_lesions=2
    )
    assert len(both) == len(three) + 2 * 1 * large


def test_segmenter_crop_jitter_sets_how_much_of_the_crop_a_lesion_fills() -> None:
    # `--segmenter-size-jitter LOW,HIGH`: a detector box half the lesion's size gives a crop the
    # lesion fills; the training crops can be drawn that way too (default: 0.8..1.25).

    studies = list(datasets.synthetic_studies(range(3), medium_every=0))

    def filled(size: tuple[float, float]) -> float:
        jitter = train.CropJitter(size=size, centre=0.0)
        samples = train.segmenter_samples(studies, rng=np.random.default_rng(0), per_lesion=1, jitter=jitter)
        return float(np.median([mask.mean() for _, mask in samples]))

    # 4x the fill where the crop is 2x the box; less for lesions under 16 mm (crops are >= 32 mm).
    assert filled((0.5, 0.5)) > 1.5 * filled((1.0, 1.0)) > 0.0
    assert train.CropJitter() == train.CropJitter(size=(0.8, 1.25), centre=0.08)


def test_train_command_reads_the_size_jitter() -> None:
    import argparse

    from node.training.commands import _pair

    assert _pair("0.5,1.3") == (0.5, 1.3)
    for bad in ("0.5", "1.3,0.5", "0,1", "a,b"):
        with pytest.raises(argparse.ArgumentTypeError, match="LOW"):
            _pair(bad)


def test_ssbr_consistency_loss_is_zero_when_both_views_score_alike() -> None:
    scores = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    assert float(train.ssbr_consistency_loss(scores, scores.clone())) == 0.0
    assert float(train.ssbr_consistency_loss(scores, scores + 2.0)) == pytest.approx(4.0)  # an offset is what it removes


def test_the_node_shows_the_regressor_the_middle_of_its_training_crops() -> None:
    """``pp.centre_view`` is training's crop (torch bilinear, pixel centres) at the middle of the slice."""
    stack = np.random.default_rng(0).uniform(0, 255, (4, pp.SSBR_SIZE, pp.SSBR_SIZE)).astype(np.float32)
    side = round(pp.SSBR_SIZE * pp.SSBR_VIEW)
    lo = (pp.SSBR_SIZE - side) // 2
    crop = torch.from_numpy(np.ascontiguousarray(stack[:, None, lo : lo + side, lo : lo + side]))
    want = torch.nn.functional.interpolate(crop, size=(pp.SSBR_SIZE,) * 2, mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(pp.centre_view(stack, pp.SSBR_VIEW), want.numpy(), atol=1e-3)
    assert pp.centre_view(stack, 1.0) is stack
    with pytest.raises(ValueError, match="view"):
        pp.centre_view(stack, 0.0)


def test_the_consistency_term_gives_a_zoomed_slice_the_score_of_the_whole_slice() -> None:
    from node.training.datasets import synthetic_studies

    studies = list(synthetic_studies(range(3), medium_every=0))
    stacks = [train._ssbr_stack(s) for s in studies]

    def zoom_shift(weight: float) -> float:
        torch.manual_seed(0)
        model = train.train_body_part_regressor(
            studies, rng=np.random.default_rng(0), steps=80, consistency_weight=weight, progress=False
        ).model
        with torch.no_grad():
            return float(np.mean([
                np.abs(model(torch.from_numpy(pp.centre_view(s, 0.65)[:, None])).numpy() - model(torch.from_numpy(s[:, None])).numpy()).mean()
                for s in stacks
            ]))

    with_term, without = zoom_shift(train.SSBR_CONSISTENCY), zoom_shift(0.0)
    assert with_term < 0.25 * without  # 0.1 against 3.0 when written
    with pytest.raises(ValueError, match="consistency_weight"):
        train.train_body_part_regressor(studies, rng=np.random.default_rng(0), consistency_weight=-1.0)
