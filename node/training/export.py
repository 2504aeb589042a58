"""Export trained models to ONNX and write the matching Triton configs (CPU and GPU variants).

The ONNX files live once, in ``triton_models/onnx/<name>.onnx``. The CPU variant
(``triton_models/cpu/<name>``) is a python-backend model running ONNX Runtime on that file;
the GPU variant (``triton_models/gpu/<name>``) is a TensorRT plan built from the same file by
``deploy/build_tensorrt.sh``. Both configs come from ``node.training.models.SPECS``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import onnx
import onnx.numpy_helper
import torch

from node.training.models import SPECS, ModelSpec

logger = logging.getLogger(__name__)

OPSET = 17


def export_onnx(
    model: torch.nn.Module,
    name: str,
    path: Path,
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch dimension and the tensor names of ``SPECS``."""
    if name not in SPECS:
        raise ValueError(f"name: unknown model {name!r}")
    spec = SPECS[name]
    model = model.eval()
    dummy = tuple(torch.rand(2, *t.dims) * 100.0 for t in spec.inputs)
    in_names = [t.name for t in spec.inputs]
    out_names = [t.name for t in spec.outputs]
    axes = {n: {0: "batch"} for n in in_names + out_names}
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            dummy,
            buffer,
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    set_io_shapes(proto, spec)
    proto.doc_string = f"ainode {name}"
    for key, value in sorted((metadata or {}).items()):
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = str(value)
    _stamp(proto)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    logger.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1024)
    return path


def set_io_shapes(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """Write the contract's shapes (dynamic batch, fixed rest) on the graph's inputs and outputs.

    The exporter leaves some output dimensions unknown; TensorRT and the parity test need them.
    """
    tensors = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for value in (*proto.graph.input, *proto.graph.output):
        t = tensors[value.name]
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        shape.dim.add().dim_param = "batch"
        for d in t.dims:
            shape.dim.add().dim_value = d


def weights_digest(proto: onnx.ModelProto) -> str:
    """First 8 hex digits of a SHA-256 over the graph's weights: tells two trainings apart."""
    digest = hashlib.sha256()
    for init in sorted(proto.graph.initializer, key=lambda t: t.name):
        digest.update(init.name.encode())
        digest.update(onnx.numpy_helper.to_array(init).tobytes())
    return digest.hexdigest()[:8]


def _stamp(proto: onnx.ModelProto) -> None:
    """Suffix the ``version`` metadata with the weights' digest (once)."""
    for entry in proto.metadata_props:
        if entry.key == "version":
            digest = weights_digest(proto)
            if not entry.value.endswith(digest):
                entry.value = f"{entry.value}-{digest}"


def fix_onnx_file(path: Path, name: str) -> None:
    """Apply ``set_io_shapes`` (and the version's weights digest) to an ONNX file in place."""
    proto = onnx.load(str(path))
    set_io_shapes(proto, SPECS[name])
    _stamp(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _tensor_block(kind: str, tensors: tuple) -> str:
    parts = []
    for t in tensors:
        dims = ", ".join(str(d) for d in t.dims)
        parts.append(f'  {{\n    name: "{t.name}"\n    data_type: {t.dtype}\n    dims: [ {dims} ]\n  }}')
    return f"{kind} [\n" + ",\n".join(parts) + "\n]\n"


def triton_config(spec: ModelSpec, *, variant: str, version: str = "untrained") -> str:
    """config.pbtxt text for the ``cpu`` (python backend + ONNX Runtime) or ``gpu`` (TensorRT) variant."""
    if variant == "cpu":
        head = (
            f'name: "{spec.name}"\nbackend: "python"\nmax_batch_size: {spec.max_batch_size}\n'
        )
        tail = (
            "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}\n"
            "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
            'parameters: {\n  key: "onnx_file"\n  value: { string_value: "../../onnx/'
            + spec.name
            + '.onnx" }\n}\n'
            'parameters: {\n  key: "intra_op_threads"\n  value: { string_value: "2" }\n}\n'
        )
        tail += _version_parameter(version)
    elif variant == "gpu":
        head = (
            f'name: "{spec.name}"\nplatform: "tensorrt_plan"\nmax_batch_size: {spec.max_batch_size}\n'
        )
        tail = (
            "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}\n"
            "instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]\n"
        )
        tail += _version_parameter(version)
    else:
        raise ValueError(f"variant: expected 'cpu' or 'gpu', got {variant!r}")
    return (
        "# Generated by node.training.export from node.training.models.SPECS; the CPU and GPU\n"
        "# variants share names, tensor names, dtypes and shapes.\n"
        + head
        + _tensor_block("input", spec.inputs)
        + _tensor_block("output", spec.outputs)
        + tail
    )


def _version_parameter(version: str) -> str:
    return 'parameters: {\n  key: "ainode_version"\n  value: { string_value: "' + version + '" }\n}\n'


MODEL_SHIM = (
    '"""CPU variant: ONNX Runtime inside Triton\'s python backend (shared code in triton_models/python)."""\n\n'
    "import sys\n"
    "from pathlib import Path\n\n"
    "sys.path.insert(0, str(Path(__file__).resolve().parents[3] / \"python\"))\n\n"
    "from onnx_runtime_model import TritonPythonModel  # noqa: E402\n\n"
    '__all__ = ["TritonPythonModel"]\n'
)


def write_triton_configs(repository: Path, versions: dict[str, str] | None = None) -> list[Path]:
    """Write cpu/ and gpu/ config.pbtxt (and the CPU model.py) for every model under ``repository``.

    ``versions`` maps model names to the version string recorded in the ONNX metadata, so
    both backends report the same ``model_versions()``.
    """
    versions = versions or {}
    written = []
    for spec in SPECS.values():
        version = versions.get(spec.name, "untrained")
        for variant in ("cpu", "gpu"):
            path = repository / variant / spec.name / "config.pbtxt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(triton_config(spec, variant=variant, version=version))
            written.append(path)
        shim = repository / "cpu" / spec.name / "1" / "model.py"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(MODEL_SHIM)
        written.append(shim)
        (repository / "gpu" / spec.name / "1").mkdir(parents=True, exist_ok=True)
    return written
