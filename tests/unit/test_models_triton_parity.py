"""CPU and GPU Triton variants share names, tensor names, dtypes and shapes, and match the ONNX files."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from node.inference.backend import MODEL_NAMES, RUNTIME_PARAMETERS, OnnxBackend
from node.training.export import triton_config
from node.training.models import SPECS

REPO = Path(__file__).resolve().parents[2] / "triton_models"
ONNX_TYPES = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}


def _config(variant: str, name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((REPO / variant / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _tensors(items) -> list[tuple[str, int, tuple[int, ...]]]:
    return [(t.name, t.data_type, tuple(t.dims)) for t in items]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cpu_and_gpu_configs_agree(name: str) -> None:
    cpu, gpu = _config("cpu", name), _config("gpu", name)
    assert cpu.name == gpu.name == name
    assert cpu.backend == "python" and gpu.platform == "tensorrt_plan"
    assert cpu.max_batch_size == gpu.max_batch_size > 0
    assert _tensors(cpu.input) == _tensors(gpu.input)
    assert _tensors(cpu.output) == _tensors(gpu.output)
    assert cpu.HasField("dynamic_batching") and gpu.HasField("dynamic_batching")
    assert cpu.parameters["ainode_version"].string_value == gpu.parameters["ainode_version"].string_value
    assert (REPO / "cpu" / name / "1" / "model.py").is_file()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_configs_match_the_onnx_graph(name: str) -> None:
    cpu = _config("cpu", name)
    path = (REPO / "cpu" / name / cpu.parameters["onnx_file"].string_value).resolve()
    graph = onnx.load(str(path)).graph

    def described(values):
        out = []
        for v in values:
            dims = v.type.tensor_type.shape.dim
            assert dims[0].dim_param, f"{name}.{v.name}: batch dimension must be dynamic"
            out.append((v.name, ONNX_TYPES[v.type.tensor_type.elem_type], tuple(d.dim_value for d in dims[1:])))
        return out

    assert described(graph.input) == _tensors(cpu.input)
    assert described(graph.output) == _tensors(cpu.output)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["version"] == cpu.parameters["ainode_version"].string_value
    # Runtime parameters travel in both: the ONNX file (in-process backend) and the configs (Triton).
    for key in RUNTIME_PARAMETERS:
        for variant in ("cpu", "gpu"):
            config = _config(variant, name).parameters
            assert (f"ainode_{key}" in config) == (key in meta), f"{name}: {key} in one of ONNX metadata / {variant} config only"
            if key in meta:
                assert config[f"ainode_{key}"].string_value == meta[key]


def test_the_segmenter_carries_its_mask_cut() -> None:
    assert OnnxBackend(REPO).model_parameters("lesion_segmenter") == {"mask_threshold": "0.35"}


def test_generated_configs_are_the_committed_ones() -> None:
    backend = OnnxBackend(REPO)
    for name, spec in SPECS.items():
        version = _config("cpu", name).parameters["ainode_version"].string_value
        parameters = backend.model_parameters(name)
        for variant in ("cpu", "gpu"):
            expected = triton_config(spec, variant=variant, version=version, parameters=parameters)
            assert (REPO / variant / name / "config.pbtxt").read_text() == expected


def test_onnx_weights_are_small() -> None:
    assert sum(p.stat().st_size for p in (REPO / "onnx").glob("*.onnx")) < 50 * 1024 * 1024


def test_a_cut_can_be_overridden_to_screen_it() -> None:
    from node.inference.backend import ParameterOverride

    backend = ParameterOverride(OnnxBackend(REPO), {"lesion_segmenter": {"mask_threshold": "0.45"}})
    assert backend.model_parameters("lesion_segmenter") == {"mask_threshold": "0.45"}
    assert backend.model_parameters("lesion_detector") == {}
    assert backend.model_versions() == OnnxBackend(REPO).model_versions()
    with pytest.raises(ValueError, match="unknown runtime parameters"):
        ParameterOverride(OnnxBackend(REPO), {"lesion_detector": {"colour": "red"}})
