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

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import torch

from node.training.models import SPECS, ModelSpec

logger = logging.getLogger(__name__)

OPSET = 17


def onnx_proto(model: torch.nn.Module, name: str) -> onnx.ModelProto:
    """``model`` as torch's exporter writes it (dynamic batch, ``SPECS``' tensor names), before
    ``export_onnx``'s own steps."""
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
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(
    model: torch.nn.Module,
    name: str,
    path: Path,
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch dimension and the tensor names of ``SPECS``."""
    proto = _average_if_chosen(onnx_proto(model, name), name)
    set_io_shapes(proto, SPECS[name])
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


# Models whose exported graph averages the network's answer on the image and on its left-right
# mirror (test-time flip averaging, ``flip_average``): the same weights run twice in one graph, so
# the wire (tensor names, dtypes, shapes) and both Triton variants are unchanged. Measured on
# unseen synthetic patients (triton_models/README.md): the detector's two passes disagree mostly
# on false positives (the analyzer's lesions fell by half), the embedder's type retrieval gained
# a little; the segmenter's masks were no better (Dice level, large lesions measured longer).
FLIP_AVERAGED = ("lesion_detector", "lesion_embedder")
FLIPPABLE = ("lesion_detector", "lesion_segmenter", "lesion_embedder")
MIRROR = "mirror/"
FLIP_SUFFIX = "+flip"


def flip_average(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``proto`` run on its ``image`` input and on the image mirrored left-right, answers averaged.

    The mirrored pass shares the weights (no initializer is added, so ``weights_digest`` is the
    same) and its spatial outputs are mirrored back; the detector's column offset within a
    heatmap cell becomes ``1 - offset`` there (as in training's flip), the embedder's embedding is
    the normalised sum. ``_stamp`` then suffixes the ``version`` metadata with ``+flip``.
    """
    if name not in FLIPPABLE:
        raise ValueError(f"name: flip averaging is defined for {FLIPPABLE}, not {name!r}")
    graph = proto.graph
    if is_flip_averaged(proto):
        raise ValueError(f"{name}: the graph is already flip-averaged")
    shared = {i.name for i in graph.initializer} | {i.name for i in graph.input if i.name != "image"}
    outputs = [o.name for o in graph.output]
    direct = {o: f"direct/{o}" for o in outputs}

    def mirrored(tensor: str) -> str:
        return tensor if tensor in shared or not tensor else MIRROR + tensor

    nodes = _flip_nodes("image", MIRROR + "image", axis=3)
    for node in graph.node:
        a = onnx.NodeProto()
        a.CopyFrom(node)
        a.input[:] = [direct.get(i, i) for i in node.input]  # an output can feed a later node
        a.output[:] = [direct.get(o, o) for o in node.output]
        b = onnx.NodeProto()
        b.CopyFrom(node)
        b.name = MIRROR + node.name
        b.input[:] = [mirrored(direct.get(i, i)) for i in node.input]
        b.output[:] = [MIRROR + direct.get(o, o) for o in node.output]
        nodes += [a, b]
    spatial = {t.name for t in SPECS[name].outputs if len(t.dims) == 3}  # (C, H, W): mirror the second pass back
    for out in outputs:
        first, second = direct[out], MIRROR + direct[out]
        if out in spatial:
            nodes += _flip_nodes(second, f"back/{out}", axis=3)
            second = f"back/{out}"
        if name == "lesion_detector" and out == "offset":  # column offset c -> 1 - c
            nodes += [
                _constant(f"sign/{out}", np.array([1.0, -1.0], np.float32).reshape(1, 2, 1, 1)),
                _constant(f"shift/{out}", np.array([0.0, 1.0], np.float32).reshape(1, 2, 1, 1)),
                onnx.helper.make_node("Mul", [second, f"sign/{out}"], [f"signed/{out}"]),
                onnx.helper.make_node("Add", [f"signed/{out}", f"shift/{out}"], [f"fixed/{out}"]),
            ]
            second = f"fixed/{out}"
        nodes.append(onnx.helper.make_node("Add", [first, second], [f"sum/{out}"]))
        if name == "lesion_embedder" and out == "embedding":  # the normalised sum
            nodes += [
                onnx.helper.make_node("ReduceL2", [f"sum/{out}"], [f"norm/{out}"], axes=[1], keepdims=1),
                _constant(f"eps/{out}", np.array(1e-12, np.float32)),
                onnx.helper.make_node("Max", [f"norm/{out}", f"eps/{out}"], [f"clip/{out}"]),
                onnx.helper.make_node("Div", [f"sum/{out}", f"clip/{out}"], [out]),
            ]
        else:  # the mean
            nodes += [
                _constant(f"half/{out}", np.array(0.5, np.float32)),
                onnx.helper.make_node("Mul", [f"sum/{out}", f"half/{out}"], [out]),
            ]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # the exporter's intermediate shapes name the direct pass only
    entry = proto.metadata_props.add()
    entry.key = "test_time_augmentation"
    entry.value = "mean of the image and its left-right mirror"
    return proto


def _average_if_chosen(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``flip_average`` for the models of ``FLIP_AVERAGED`` whose graph is not averaged yet."""
    if name in FLIP_AVERAGED and not is_flip_averaged(proto):
        return flip_average(proto, name)
    return proto


def is_flip_averaged(proto: onnx.ModelProto) -> bool:
    """Whether ``flip_average`` made this graph (its mirrored pass's nodes are named so)."""
    return any(n.name.startswith(MIRROR) for n in proto.graph.node)


def _flip_nodes(source: str, target: str, *, axis: int) -> list[onnx.NodeProto]:
    """``target`` = ``source`` reversed along ``axis``: a Slice with step -1 (what torch.flip exports)."""
    bounds = {"starts": -1, "ends": -(2**63), "axes": axis, "steps": -1}
    consts = [_constant(f"{target}/{k}", np.array([v], np.int64)) for k, v in bounds.items()]
    return consts + [onnx.helper.make_node("Slice", [source] + [f"{target}/{k}" for k in bounds], [target])]


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    """A Constant node (not an initializer: ``weights_digest`` counts the trained weights only)."""
    return onnx.helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value, name))


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
    """Suffix the ``version`` metadata with the weights' digest (once), then ``+flip`` where the
    graph is flip-averaged (``flip_average``): the same weights, other answers."""
    flipped = is_flip_averaged(proto)
    for entry in proto.metadata_props:
        if entry.key == "version":
            digest = weights_digest(proto)
            base = entry.value.removesuffix(FLIP_SUFFIX)
            if not base.endswith(digest):
                base = f"{base}-{digest}"
            entry.value = base + (FLIP_SUFFIX if flipped else "")


def version_digest(version: str) -> str:
    """The weights digest ``_stamp`` put in a version, e.g. ``20261128-seed0-bd5320b3+flip`` -> ``bd5320b3``."""
    return version.removesuffix(FLIP_SUFFIX).rsplit("-", 1)[-1]


def fix_onnx_file(path: Path, name: str) -> None:
    """Bring an ONNX file written by an earlier export up to date in place: ``flip_average`` (once)
    for the flip-averaged models, ``set_io_shapes`` and the version's weights digest."""
    proto = _average_if_chosen(onnx.load(str(path)), name)
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


def triton_config(spec: ModelSpec, *, variant: str, version: str = "untrained", parameters: dict[str, str] | None = None) -> str:
    """config.pbtxt text for the ``cpu`` (python backend + ONNX Runtime) or ``gpu`` (TensorRT) variant.

    ``parameters`` (the model's ``RUNTIME_PARAMETERS`` from its ONNX metadata) become ``ainode_<key>``
    parameters in both variants: a TensorRT plan keeps no ONNX metadata, so the config carries them.
    """
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
        tail += _ainode_parameters(version, parameters)
    elif variant == "gpu":
        head = (
            f'name: "{spec.name}"\nplatform: "tensorrt_plan"\nmax_batch_size: {spec.max_batch_size}\n'
        )
        tail = (
            "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}\n"
            "instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n  }\n]\n"
        )
        tail += _ainode_parameters(version, parameters)
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


def _ainode_parameters(version: str, parameters: dict[str, str] | None = None) -> str:
    entries = {"version": version, **dict(sorted((parameters or {}).items()))}
    return "".join(
        'parameters: {\n  key: "ainode_' + key + '"\n  value: { string_value: "' + value + '" }\n}\n' for key, value in entries.items()
    )


MODEL_SHIM = (
    '"""CPU variant: ONNX Runtime inside Triton\'s python backend (shared code in triton_models/python)."""\n\n'
    "import sys\n"
    "from pathlib import Path\n\n"
    "sys.path.insert(0, str(Path(__file__).resolve().parents[3] / \"python\"))\n\n"
    "from onnx_runtime_model import TritonPythonModel  # noqa: E402\n\n"
    '__all__ = ["TritonPythonModel"]\n'
)


def write_triton_configs(
    repository: Path, versions: dict[str, str] | None = None, parameters: dict[str, dict[str, str]] | None = None
) -> list[Path]:
    """Write cpu/ and gpu/ config.pbtxt (and the CPU model.py) for every model under ``repository``.

    ``versions`` maps model names to the version string recorded in the ONNX metadata, and
    ``parameters`` to their runtime parameters, so both backends report the same
    ``model_versions()`` and ``model_parameters()``.
    """
    versions = versions or {}
    parameters = parameters or {}
    written = []
    for spec in SPECS.values():
        version = versions.get(spec.name, "untrained")
        for variant in ("cpu", "gpu"):
            path = repository / variant / spec.name / "config.pbtxt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(triton_config(spec, variant=variant, version=version, parameters=parameters.get(spec.name)))
            written.append(path)
        shim = repository / "cpu" / spec.name / "1" / "model.py"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(MODEL_SHIM)
        written.append(shim)
        (repository / "gpu" / spec.name / "1").mkdir(parents=True, exist_ok=True)
    return written
