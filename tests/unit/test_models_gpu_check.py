"""deploy/gpu_check's torch interpreter gives ONNX Runtime's answers for every committed model.

The GPU check (FP16 on a CUDA host) is only as good as this interpreter; here it runs on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from node.inference.backend import MODEL_NAMES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "gpu_check"))

from onnx_torch import Runner  # noqa: E402


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_interpreter_matches_onnxruntime(name: str) -> None:
    path = ROOT / "triton_models" / "onnx" / f"{name}.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    feeds = {}
    for tensor in session.get_inputs():
        shape = [2, *tensor.shape[1:]]
        high = 1.0 if tensor.name == "cues" else 255.0
        feeds[tensor.name] = rng.uniform(0.0, high, shape).astype(np.float32)
    expected = session.run(None, feeds)
    with torch.no_grad():
        got = Runner(str(path))(**feeds)
    assert list(got) == [o.name for o in session.get_outputs()]
    for value, reference in zip(got.values(), expected, strict=True):
        assert value.shape == reference.shape
        np.testing.assert_allclose(value.numpy(), reference, rtol=1e-4, atol=1e-3)
