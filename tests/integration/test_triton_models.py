"""The CPU Triton (python backend + ONNX Runtime) serves the four models like in-process ONNX Runtime."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from node.inference.analyzer import Analyzer
from node.inference.backend import MODEL_NAMES, ModelNotFoundError, OnnxBackend, TritonBackend
from node.stack.process import free_port
from node.stack.triton import EmbeddedTriton, TritonPorts
from node.training.models import SPECS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2] / "triton_models"


@pytest.fixture(scope="module")
def triton(make_service_dir) -> Iterator[EmbeddedTriton]:
    root = make_service_dir("triton-models")
    server = EmbeddedTriton(
        root, ports=TritonPorts(grpc=free_port(), http=free_port(), metrics=free_port()), repository=REPO / "cpu"
    )
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def small_volume():
    from node.synth.phantom import synthesize_study

    return synthesize_study(3, 0, small=True).to_volume()


def _inputs(name: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {t.name: (rng.random((batch, *t.dims)) * 120).astype(np.float32) for t in SPECS[name].inputs}


@pytest.mark.parametrize("use_shm", [True, False])
def test_triton_matches_onnx_runtime(triton: EmbeddedTriton, use_shm: bool) -> None:
    rng = np.random.default_rng(0)
    local = OnnxBackend(REPO, threads=1)
    remote = TritonBackend(triton.grpc_url, use_shared_memory=use_shm)
    try:
        assert remote.model_versions() == local.model_versions()
        assert remote.model_parameters("lesion_segmenter") == local.model_parameters("lesion_segmenter") == {"mask_threshold": "0.35"}
        for name in MODEL_NAMES:
            batch = 3 if name != "lesion_detector" else 2
            feeds = _inputs(name, batch, rng)
            want = local.infer(name, feeds)
            got = remote.infer(name, feeds)
            assert set(got) == set(want)
            for key in want:
                assert got[key].shape == want[key].shape
                np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4)
        # More than max_batch_size in one call is split and joined back.
        feeds = _inputs("body_part_regressor", 300, rng)
        np.testing.assert_allclose(
            remote.infer("body_part_regressor", feeds)["score"], local.infer("body_part_regressor", feeds)["score"], atol=1e-4
        )
    finally:
        remote.close()


def test_missing_model_names_model_and_repository(triton: EmbeddedTriton) -> None:
    remote = TritonBackend(triton.grpc_url, repository="/srv/models/cpu")
    try:
        with pytest.raises(ModelNotFoundError, match=r"lesion_classifier.*/srv/models/cpu/lesion_classifier"):
            remote.infer("lesion_classifier", {"image": np.zeros((1, 3), np.float32)})
    finally:
        remote.close()


def test_analyzer_through_triton(triton: EmbeddedTriton, small_volume) -> None:
    remote = TritonBackend(triton.grpc_url)
    try:
        via_triton = Analyzer(remote).analyze(small_volume)
        local = Analyzer(OnnxBackend(REPO)).analyze(small_volume)
    finally:
        remote.close()
    assert via_triton.not_analysed is None
    np.testing.assert_allclose(via_triton.body_part_scores, local.body_part_scores, atol=1e-4)
    assert len(via_triton.lesions) == len(local.lesions)


def test_shared_memory_regions_grow_with_the_batch(triton: EmbeddedTriton) -> None:
    # The analyzer's slice walk sends the segmenter batches of every size, small and large in
    # turn: each larger batch re-registers its regions with the server (once failed with
    # "shared memory region ... already in manager").
    rng = np.random.default_rng(1)
    local = OnnxBackend(REPO, threads=1)
    remote = TritonBackend(triton.grpc_url, use_shared_memory=True)
    try:
        for batch in (1, 4, 2, 9, 1, 30, 3, 64):
            feeds = _inputs("lesion_segmenter", batch, rng)
            np.testing.assert_allclose(remote.infer("lesion_segmenter", feeds)["mask"], local.infer("lesion_segmenter", feeds)["mask"], atol=1e-4)
    finally:
        remote.close()
