"""The lesion embedder: its tensor contract, its windows and cues, and a short training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from node.inference import preprocess as pp
from node.training import datasets, train
from node.training.models import CUES, EMBEDDING_DIM, NUM_TYPES, LesionEmbedder


def test_embedder_contract_and_unit_norm() -> None:
    torch.manual_seed(0)
    model = LesionEmbedder().eval()
    image = torch.rand(4, 3, pp.CROP_SIZE, pp.CROP_SIZE) * 255.0
    cues = torch.rand(4, CUES)
    with torch.no_grad():
        emb, logits = model(image, cues)
    assert emb.shape == (4, EMBEDDING_DIM) and logits.shape == (4, NUM_TYPES)
    np.testing.assert_allclose(emb.norm(dim=1).numpy(), 1.0, atol=1e-5)


def _first_layer_inputs(model: LesionEmbedder, images: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    hook = model.features[0][0].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    with torch.no_grad():
        model(images, cues)
    hook.remove()
    return seen[0]


def test_embedder_sees_the_lung_window() -> None:
    model = LesionEmbedder().eval()
    lung = float(pp.window(np.array(-850.0)))
    ground_glass = float(pp.window(np.array(-550.0)))
    a = torch.full((1, 3, pp.CROP_SIZE, pp.CROP_SIZE), lung)
    b = a.clone()
    b[:, :, 24:40, 24:40] = ground_glass
    x = _first_layer_inputs(model, torch.cat([a, b]), torch.full((2, CUES), 0.5))
    contrast = (x[0] - x[1]).abs().amax(dim=(1, 2))  # channels: 3 wide, 3 soft-tissue, 3 lung
    assert float(contrast[6:].min()) > 2.5 * float(contrast[:3].max())  # 300 HU: 0.29 wide, 0.75 lung
    assert float(contrast[3:6].max()) == 0.0  # both below the soft-tissue window


def test_embedder_sees_the_soft_tissue_window_and_the_cues() -> None:
    torch.manual_seed(0)
    model = LesionEmbedder().eval()
    first = model.features[0][0]
    assert first.in_channels == 9  # 3 slices x (wide, soft-tissue, lung) windows
    liver = float(pp.window(np.array(60.0)))
    lesion = float(pp.window(np.array(20.0)))  # 40 HU darker: under 3 levels of the wide window
    a = torch.full((1, 3, pp.CROP_SIZE, pp.CROP_SIZE), liver)
    b = a.clone()
    b[:, :, 24:40, 24:40] = lesion
    cues = torch.tensor([[0.5, 0.5, 0.5, 0.2]])
    x = _first_layer_inputs(model, torch.cat([a, b]), cues.repeat(2, 1))
    contrast = (x[0] - x[1]).abs().amax(dim=(1, 2))  # per input channel
    assert float(contrast[3:6].min()) > 4.0 * float(contrast[:3].max())  # the soft-tissue window spreads the 40 HU
    with torch.no_grad():
        ea, _ = model(a, cues)
        ec, _ = model(a, torch.tensor([[0.1, 0.9, 0.5, 0.2]]))
    assert float((ea - ec).norm()) > 1e-3


def test_short_training_run_keeps_the_seed_rule() -> None:
    studies = list(datasets.synthetic_studies(range(8), cohort_seed=3, medium_every=0))
    lesions = sum(len(s.lesions) for s in studies)

    def ssbr(study: datasets.TrainStudy) -> np.ndarray:
        return np.linspace(-5.0, 5.0, study.pixels.shape[0])

    result = train.train_lesion_embedder(
        studies, ssbr=ssbr, rng=train.seed_everything(0), steps=3, refine_steps=2, sequences_per_batch=4, progress=False
    )
    f = result.figures
    assert f["lesions"] == lesions
    assert f["seed_set"] == lesions // 4  # 25% labelled seed set, the rest only pseudo-labelled
    assert f["classifier_weight"] == 1.0
    for key in ("test_type_acc_pseudo_labels_initial", "test_type_acc_knn_on_embedding", "test_type_acc_classifier_head"):
        assert 0.0 <= f[key] <= 1.0
    with pytest.raises(ValueError, match="classifier_weight"):
        train.train_lesion_embedder(studies, ssbr=ssbr, rng=train.seed_everything(0), classifier_weight=-1.0)
