"""The four lesion models, small enough to train on two CPU cores.

Each model takes pixels windowed to 0..255 (node.inference.preprocess) and normalises them in
its own graph, so the ONNX files and Triton configs carry the whole contract. ``SPECS`` lists
tensor names, dtypes and shapes (batch dimension excluded); the Triton configs repeat it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from node.inference.preprocess import (
    CANVAS_SIZE,
    CROP_SIZE,
    DETECTOR_GROUPS,
    HEATMAP_STRIDE,
    SSBR_SIZE,
)

NUM_TYPES = 8
EMBEDDING_DIM = 32
CUES = 4  # x, y (relative to the body), z (body-part score), crop side / 256 mm

HEATMAP_SIZE = CANVAS_SIZE // HEATMAP_STRIDE


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]
    dtype: str = "TYPE_FP32"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int


SPECS: dict[str, ModelSpec] = {
    "body_part_regressor": ModelSpec(
        name="body_part_regressor",
        inputs=(TensorSpec(name="image", dims=(1, SSBR_SIZE, SSBR_SIZE)),),
        outputs=(TensorSpec(name="score", dims=(1,)),),
        max_batch_size=256,
    ),
    "lesion_detector": ModelSpec(
        name="lesion_detector",
        inputs=(TensorSpec(name="image", dims=(3 * DETECTOR_GROUPS, CANVAS_SIZE, CANVAS_SIZE)),),
        outputs=(
            TensorSpec(name="heatmap", dims=(NUM_TYPES, HEATMAP_SIZE, HEATMAP_SIZE)),
            TensorSpec(name="size", dims=(2, HEATMAP_SIZE, HEATMAP_SIZE)),
            TensorSpec(name="offset", dims=(2, HEATMAP_SIZE, HEATMAP_SIZE)),
        ),
        max_batch_size=32,
    ),
    "lesion_segmenter": ModelSpec(
        name="lesion_segmenter",
        inputs=(TensorSpec(name="image", dims=(3, CROP_SIZE, CROP_SIZE)),),
        outputs=(TensorSpec(name="mask", dims=(1, CROP_SIZE, CROP_SIZE)),),
        max_batch_size=64,
    ),
    "lesion_embedder": ModelSpec(
        name="lesion_embedder",
        inputs=(
            TensorSpec(name="image", dims=(3, CROP_SIZE, CROP_SIZE)),
            TensorSpec(name="cues", dims=(CUES,)),
        ),
        outputs=(
            TensorSpec(name="embedding", dims=(EMBEDDING_DIM,)),
            TensorSpec(name="type_logits", dims=(NUM_TYPES,)),
        ),
        max_batch_size=64,
    ),
}
MODEL_NAMES = tuple(SPECS)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    # 0..255 window: air 0, water ~64, dense bone > 100.
    return x / 64.0 - 1.0


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BodyPartRegressor(nn.Module):
    """SSBR: one score per axial slice, increasing from head to feet."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(1, 8, 2), _conv(8, 16, 2), _conv(16, 32, 2), _conv(32, 32, 2), _conv(32, 32)
        )
        self.head = nn.Linear(32, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.features(_normalise(image))
        return self.head(f.mean(dim=(2, 3)))


class LesionDetector(nn.Module):
    """3DCE-style detector: a shared trunk per 3-slice group, fused features, CenterNet heads."""

    def __init__(self) -> None:
        super().__init__()
        self.s1 = nn.Sequential(_conv(3, 8, 2), _conv(8, 8))  # 1/2
        self.s2 = nn.Sequential(_conv(8, 16, 2), _conv(16, 16))  # 1/4
        self.s3 = nn.Sequential(_conv(16, 32, 2), _conv(32, 32))  # 1/8
        g = DETECTOR_GROUPS
        self.fuse = _conv(32 * g, 32)
        self.up2 = _conv(32 + 16 * g, 24)
        self.up1 = _conv(24 + 8, 16)
        self.heatmap = nn.Conv2d(16, NUM_TYPES, 1)
        self.size = nn.Conv2d(16, 2, 1)
        self.offset = nn.Conv2d(16, 2, 1)
        nn.init.constant_(self.heatmap.bias, -4.0)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, offset = self.forward_logits(image)
        size_mm = torch.exp(torch.clamp(size, -3.0, 3.0)) * 16.0
        return torch.sigmoid(heat), size_mm, torch.sigmoid(offset)

    def forward_logits(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training entry: heatmap logits, log-size, offset logits."""
        b, c, h, w = image.shape
        g = c // 3
        x = _normalise(image).reshape(b * g, 3, h, w)
        f1 = self.s1(x)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        f3 = f3.reshape(b, g * f3.shape[1], f3.shape[2], f3.shape[3])
        f2 = f2.reshape(b, g * f2.shape[1], f2.shape[2], f2.shape[3])
        f1 = f1.reshape(b, g, f1.shape[1], f1.shape[2], f1.shape[3])[:, g // 2]
        y = self.fuse(f3)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = self.up2(torch.cat([y, f2], dim=1))
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = self.up1(torch.cat([y, f1], dim=1))
        return self.heatmap(y), self.size(y), self.offset(y)


class LesionSegmenter(nn.Module):
    """A small U-Net on lesion-centred 3-slice crops; outputs the key slice's mask probability."""

    def __init__(self) -> None:
        super().__init__()
        self.e1 = nn.Sequential(_conv(3, 16), _conv(16, 16))
        self.e2 = nn.Sequential(_conv(16, 32, 2), _conv(32, 32))
        self.e3 = nn.Sequential(_conv(32, 48, 2), _conv(48, 48))
        self.d2 = nn.Sequential(_conv(48 + 32, 32))
        self.d1 = nn.Sequential(_conv(32 + 16, 16))
        self.out = nn.Conv2d(16, 1, 1)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        x = _normalise(image)
        f1 = self.e1(x)
        f2 = self.e2(f1)
        f3 = self.e3(f2)
        y = self.d2(torch.cat([F.interpolate(f3, scale_factor=2.0, mode="nearest"), f2], dim=1))
        y = self.d1(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), f1], dim=1))
        return self.out(y)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image))


class LesionEmbedder(nn.Module):
    """Triplet-trained embedding of a lesion crop plus its location and size cues."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, 16, 2), _conv(16, 32, 2), _conv(32, 48, 2), _conv(48, 64, 2), _conv(64, 64)
        )
        self.cue = nn.Sequential(nn.Linear(CUES, 32), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Linear(64 * 2 + 32, 64), nn.ReLU(inplace=True), nn.Linear(64, EMBEDDING_DIM))
        self.classifier = nn.Linear(EMBEDDING_DIM, NUM_TYPES)

    def forward(self, image: torch.Tensor, cues: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(_normalise(image))
        centre = f[:, :, 1:3, 1:3].mean(dim=(2, 3))  # the lesion itself
        context = f.mean(dim=(2, 3))
        e = self.project(torch.cat([centre, context, self.cue(cues)], dim=1))
        e = F.normalize(e, dim=1)
        return e, self.classifier(e)


def build(name: str) -> nn.Module:
    """A fresh model by its Triton name."""
    factories = {
        "body_part_regressor": BodyPartRegressor,
        "lesion_detector": LesionDetector,
        "lesion_segmenter": LesionSegmenter,
        "lesion_embedder": LesionEmbedder,
    }
    if name not in factories:
        raise ValueError(f"name: unknown model {name!r}; expected one of {sorted(factories)}")
    return factories[name]()
