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


# A soft-tissue window (-160..240 HU) in the wire's 0..255 units. In the seed's single wide
# window a lesion 30 HU brighter than liver differs by 2 of 255 levels; the models derive this
# window in their own graph, so the wire format (and both Triton variants) stays the seed's.
SOFT_TISSUE_LOW = (-160.0 + 1024.0) * 255.0 / 4095.0
SOFT_TISSUE_WIDTH = 400.0 * 255.0 / 4095.0
# A lung window (-1000..-200 HU): ground-glass nodules (-650..-450 HU) against aerated lung
# (about -850 HU) differ by 19 of 255 levels in the wide window and vanish in the soft-tissue one.
LUNG_LOW = (-1000.0 + 1024.0) * 255.0 / 4095.0
LUNG_WIDTH = 800.0 * 255.0 / 4095.0


def _windows(x: torch.Tensor, *, lung: bool = False) -> torch.Tensor:
    """(B, C, H, W) 0..255 pixels -> the wide and soft-tissue windows, and the lung window if ``lung``:
    (B, 2C or 3C, H, W)."""
    windows = [_normalise(x), _band(x, SOFT_TISSUE_LOW, SOFT_TISSUE_WIDTH)]
    if lung:
        windows.append(_band(x, LUNG_LOW, LUNG_WIDTH))
    return torch.cat(windows, dim=1)


def _band(x: torch.Tensor, low: float, width: float) -> torch.Tensor:
    """Pixels ``low`` .. ``low + width`` (0..255 units) stretched to -1..1, clipped outside."""
    return torch.clamp((x - low) / width, 0.0, 1.0) * 2.0 - 1.0


def _up(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling by 2 (the decoders' step)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


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
    """3DCE-style detector: a shared trunk per 3-slice group, fused features, CenterNet heads.

    ``head`` picks how lesion type enters the heatmap. ``"typed"``: CenterNet's own, one heatmap
    per type, so a lesion that looks like another type's scores low in both. ``"objectness"``: one
    type-blind lesion heatmap plus a type classifier; the output keeps the eight channels (the
    objectness times the type posterior relative to its largest), so a peak's score is the
    objectness and its type the classifier's, on the same wire as ``"typed"``.
    """

    HEADS = ("typed", "objectness")

    def __init__(self, head: str = "typed", fine_stem: bool = False) -> None:
        super().__init__()
        if head not in self.HEADS:
            raise ValueError(f"head: expected one of {self.HEADS}, got {head!r}")
        self.head = head
        # 3 slices x 2 windows in; ``fine_stem``: one convolution at the canvas's own 2 mm pixels
        # first, so a 3-10 mm lesion is seen before the first downsampling.
        stem = [_conv(6, 8), _conv(8, 8, 2)] if fine_stem else [_conv(6, 8, 2)]
        self.s1 = nn.Sequential(*stem, _conv(8, 8))  # 1/2
        self.s2 = nn.Sequential(_conv(8, 16, 2), _conv(16, 16))  # 1/4
        self.s3 = nn.Sequential(_conv(16, 32, 2), _conv(32, 32))  # 1/8
        g = DETECTOR_GROUPS
        self.fuse = _conv(32 * g, 32)
        self.up2 = _conv(32 + 16 * g, 24)
        self.up1 = _conv(24 + 8, 16)
        self.heatmap = nn.Conv2d(16, NUM_TYPES if head == "typed" else 1, 1)
        self.type_logits = nn.Conv2d(16, NUM_TYPES, 1) if head == "objectness" else None
        self.size = nn.Conv2d(16, 2, 1)
        self.offset = nn.Conv2d(16, 2, 1)
        nn.init.constant_(self.heatmap.bias, -4.0)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, types, size, offset = self.forward_logits(image)
        size_mm = torch.exp(torch.clamp(size, -3.0, 3.0)) * 16.0
        if types is None:
            return torch.sigmoid(heat), size_mm, torch.sigmoid(offset)
        relative = torch.exp(types - types.max(dim=1, keepdim=True).values)  # 1 for the likeliest type
        return torch.sigmoid(heat) * relative, size_mm, torch.sigmoid(offset)

    def forward_logits(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Training entry: heatmap logits (8 typed or 1 type-blind), type logits (None for the
        typed head), log-size, offset logits."""
        b, c, h, w = image.shape
        g = c // 3
        x = _windows(image.reshape(b * g, 3, h, w))
        f1 = self.s1(x)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        f3 = f3.reshape(b, g * f3.shape[1], f3.shape[2], f3.shape[3])
        f2 = f2.reshape(b, g * f2.shape[1], f2.shape[2], f2.shape[3])
        f1 = f1.reshape(b, g, f1.shape[1], f1.shape[2], f1.shape[3])[:, g // 2]
        y = self.fuse(f3)
        y = self.up2(torch.cat([_up(y), f2], dim=1))
        y = self.up1(torch.cat([_up(y), f1], dim=1))
        types = None if self.type_logits is None else self.type_logits(y)
        return self.heatmap(y), types, self.size(y), self.offset(y)


class LesionSegmenter(nn.Module):
    """A four-level U-Net on lesion-centred 3-slice crops; outputs the key slice's mask probability."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.e1 = nn.Sequential(_conv(6, w), _conv(w, w))  # 3 slices x 2 windows
        self.e2 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.e3 = nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w))
        self.e4 = nn.Sequential(_conv(3 * w, 4 * w, 2), _conv(4 * w, 4 * w))
        self.d3 = _conv(4 * w + 3 * w, 3 * w)
        self.d2 = _conv(3 * w + 2 * w, 2 * w)
        self.d1 = _conv(2 * w + w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        f1 = self.e1(_windows(image))
        f2 = self.e2(f1)
        f3 = self.e3(f2)
        f4 = self.e4(f3)
        y = self.d3(torch.cat([_up(f4), f3], dim=1))
        y = self.d2(torch.cat([_up(y), f2], dim=1))
        y = self.d1(torch.cat([_up(y), f1], dim=1))
        return self.out(y)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(image))


class LesionEmbedder(nn.Module):
    """Triplet-trained embedding of a lesion crop plus its location and size cues.

    The crop is seen in the wide, soft-tissue and lung windows (``_windows``); the detector and the
    segmenter see the first two (with the lung window they did no better on the held-out cohort:
    their model cards).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv(9, 16, 2), _conv(16, 32, 2), _conv(32, 48, 2), _conv(48, 64, 2), _conv(64, 64)  # 3 slices x 3 windows
        )
        self.cue = nn.Sequential(nn.Linear(CUES, 32), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Linear(64 * 2 + 32, 64), nn.ReLU(inplace=True), nn.Linear(64, EMBEDDING_DIM))
        self.classifier = nn.Linear(EMBEDDING_DIM, NUM_TYPES)

    def forward(self, image: torch.Tensor, cues: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(_windows(image, lung=True))
        centre = f[:, :, 1:3, 1:3].mean(dim=(2, 3))  # the lesion itself
        context = f.mean(dim=(2, 3))
        e = self.project(torch.cat([centre, context, self.cue(cues)], dim=1))
        e = F.normalize(e, dim=1)
        return e, self.classifier(e)


def build(name: str, **options: object) -> nn.Module:
    """A fresh model by its Triton name; ``options`` go to its constructor (the detector's ``head``)."""
    factories = {
        "body_part_regressor": BodyPartRegressor,
        "lesion_detector": LesionDetector,
        "lesion_segmenter": LesionSegmenter,
        "lesion_embedder": LesionEmbedder,
    }
    if name not in factories:
        raise ValueError(f"name: unknown model {name!r}; expected one of {sorted(factories)}")
    return factories[name](**options)
