"""Inference backends with one interface: Triton over gRPC, or ONNX Runtime in-process.

The node's code calls ``infer(model, inputs)`` the same way whether the models run in a
Triton server (CPU python backend or GPU TensorRT plans, same config contract) or in this
process. ``open_backend(settings)`` picks one from the settings.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from node.config import Settings

logger = logging.getLogger(__name__)

MODEL_NAMES = ("body_part_regressor", "lesion_detector", "lesion_segmenter", "lesion_embedder")
# Settings a model carries with its weights, chosen for those weights: the ONNX file's metadata
# ``<key>`` and the Triton config's parameter ``ainode_<key>`` (both written at export), read with
# ``model_parameters``. ``mask_threshold``: where the analyzer cuts the segmenter's probability.
RUNTIME_PARAMETERS = ("mask_threshold",)
# The segmenter's cut where its files name none (a repository exported before the cut travelled
# with the weights): the cut chosen for the first segmenter that carried one, `922c1a60`.
DEFAULT_MASK_THRESHOLD = 0.3


class InferenceError(RuntimeError):
    """A model could not run (server error, bad shapes)."""


class ModelNotFoundError(InferenceError):
    """A model is not in the model repository (or not ready on the server)."""


@runtime_checkable
class InferenceBackend(Protocol):
    """What the analyzer needs from a model server."""

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def model_versions(self) -> dict[str, str]: ...

    def model_parameters(self, model: str) -> dict[str, str]: ...

    def close(self) -> None: ...


def _onnx_dir(model_dir: Path) -> Path:
    """The folder holding ``<name>.onnx``: ``model_dir/onnx`` for a Triton repository, else itself."""
    return model_dir / "onnx" if (model_dir / "onnx").is_dir() else model_dir


class OnnxBackend:
    """ONNX Runtime in this process, reading ``<model_dir>/onnx/<name>.onnx``.

    Parameters
    ----------
    model_dir:
        The model repository (``triton_models``) or a folder of ``.onnx`` files.
    threads:
        ONNX Runtime intra-op threads (0: ONNX Runtime's default, one per core).
    """

    def __init__(self, model_dir: Path, *, threads: int = 0) -> None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ValueError(f"model_dir: {model_dir} is not a folder")
        if threads < 0:
            raise ValueError(f"threads: must be 0 or more, got {threads}")
        self.model_dir = model_dir
        self._onnx_dir = _onnx_dir(model_dir)
        self._threads = threads
        self._sessions: dict[str, object] = {}
        self._parameters: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def _session(self, model: str):  # -> onnxruntime.InferenceSession
        with self._lock:
            if model in self._sessions:
                return self._sessions[model]
            import onnxruntime as ort

            path = self._onnx_dir / f"{model}.onnx"
            if not path.is_file():
                raise ModelNotFoundError(
                    f"model {model!r} not found: expected {path} in the model repository {self.model_dir} "
                    "(run `ainode train` or restore triton_models/onnx)"
                )
            options = ort.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._sessions[model] = session
            return session

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(model)
        names = [o.name for o in session.get_outputs()]
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        try:
            results = session.run(names, feeds)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many types; translate once here
            raise InferenceError(f"model {model!r}: {exc}") from exc
        return dict(zip(names, results, strict=True))

    def model_versions(self) -> dict[str, str]:
        versions = {}
        for name in MODEL_NAMES:
            path = self._onnx_dir / f"{name}.onnx"
            if path.is_file():
                meta = self._session(name).get_modelmeta().custom_metadata_map
                versions[name] = meta.get("version", "unknown")
        return versions

    def model_parameters(self, model: str) -> dict[str, str]:
        """The model's ``RUNTIME_PARAMETERS`` from its ONNX metadata (empty where it names none)."""
        if model not in self._parameters:
            meta = self._session(model).get_modelmeta().custom_metadata_map
            self._parameters[model] = {k: meta[k] for k in RUNTIME_PARAMETERS if k in meta}
        return dict(self._parameters[model])

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._parameters.clear()


_NP_TO_TRITON = {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}
_TRITON_TO_NP = {v: k for k, v in _NP_TO_TRITON.items()}


@dataclass(frozen=True, kw_only=True)
class _TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch dimension


@dataclass(frozen=True, kw_only=True)
class _ModelInfo:
    name: str
    inputs: tuple[_TensorInfo, ...]
    outputs: tuple[_TensorInfo, ...]
    max_batch_size: int
    version: str
    parameters: dict[str, str]


class _Region:
    """One system shared-memory region registered with the server, grown on demand.

    A grown region gets a new name (``base``, then ``base_1``, ...): the server may still list
    the old one for a moment after it is unregistered, and registering a name it lists fails.
    """

    def __init__(self, client, name: str) -> None:
        self._client = client
        self._base = name
        self._grown = 0
        self.name = name
        self.size = 0
        self.handle = None

    def ensure(self, size: int) -> None:
        import tritonclient.utils.shared_memory as shm

        if size <= self.size:
            return
        if self.handle is not None:
            self.release()
            self._grown += 1
            self.name = f"{self._base}_{self._grown}"
        size = max(size, 1 << 16)
        key = f"/{self.name}"
        self.handle = shm.create_shared_memory_region(self.name, key, size)
        self._client.register_system_shared_memory(self.name, key, size)
        self.size = size

    def release(self) -> None:
        import tritonclient.utils.shared_memory as shm

        if self.handle is None:
            return
        try:
            self._client.unregister_system_shared_memory(self.name)
        except Exception as exc:  # noqa: BLE001 - server may be gone at shutdown
            logger.warning("could not unregister shared memory %s: %s", self.name, exc)
        shm.destroy_shared_memory_region(self.handle)
        self.handle = None
        self.size = 0


class TritonBackend:
    """Triton Inference Server over gRPC; tensors travel through system shared memory.

    Parameters
    ----------
    url:
        gRPC address, e.g. ``"localhost:8001"``.
    use_shared_memory:
        Send inputs and receive outputs through POSIX shared memory (the server must run on
        this machine); otherwise tensors go inside the gRPC messages.
    repository:
        Where the server's model repository is, named in errors about missing models.
    """

    def __init__(
        self,
        url: str,
        *,
        use_shared_memory: bool = True,
        repository: Path | str = "triton_models/cpu",
        timeout_s: float = 300.0,
    ) -> None:
        if not url:
            raise ValueError("url: must not be empty")
        import tritonclient.grpc as grpcclient

        self.url = url
        self.repository = str(repository)
        self.use_shared_memory = use_shared_memory
        self._timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url=url)
        self._models: dict[str, _ModelInfo] = {}
        self._regions: dict[tuple[str, str], _Region] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._prefix = f"ainode_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def _info(self, model: str) -> _ModelInfo:
        with self._lock:
            if model in self._models:
                return self._models[model]
        from tritonclient.utils import InferenceServerException

        try:
            ready = self._client.is_model_ready(model)
        except InferenceServerException as exc:
            raise InferenceError(f"Triton at {self.url} is not answering: {exc.message()}") from exc
        if not ready:
            raise ModelNotFoundError(
                f"model {model!r} is not loaded in Triton at {self.url}: expected "
                f"{self.repository}/{model}/config.pbtxt in the server's model repository"
            )
        meta = self._client.get_model_metadata(model, as_json=True)
        config = self._client.get_model_config(model, as_json=True)["config"]
        max_batch = int(config.get("max_batch_size", 0))

        def tensors(items: list[dict]) -> tuple[_TensorInfo, ...]:
            return tuple(
                _TensorInfo(
                    name=t["name"],
                    datatype=t["datatype"],
                    shape=tuple(int(d) for d in t["shape"][1 if max_batch else 0 :]),
                )
                for t in items
            )

        params = config.get("parameters", {})
        info = _ModelInfo(
            name=model,
            inputs=tensors(meta["inputs"]),
            outputs=tensors(meta["outputs"]),
            max_batch_size=max_batch,
            version=params.get("ainode_version", {}).get("string_value", "unknown"),
            parameters={
                k: params[f"ainode_{k}"]["string_value"] for k in RUNTIME_PARAMETERS if "string_value" in params.get(f"ainode_{k}", {})
            },
        )
        with self._lock:
            self._models[model] = info
            self._locks[model] = threading.Lock()
        return info

    def _region(self, model: str, tensor: str, size: int) -> _Region:
        key = (model, tensor)
        region = self._regions.get(key)
        if region is None:
            region = _Region(self._client, f"{self._prefix}_{model}_{tensor}")
            self._regions[key] = region
        region.ensure(size)
        return region

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        info = self._info(model)
        arrays = {t.name: np.ascontiguousarray(inputs[t.name], dtype=_TRITON_TO_NP[t.datatype]) for t in info.inputs if t.name in inputs}
        missing = [t.name for t in info.inputs if t.name not in arrays]
        if missing:
            raise ValueError(f"inputs: model {model!r} needs {missing}")
        batch = next(iter(arrays.values())).shape[0]
        step = info.max_batch_size or batch
        parts: list[dict[str, np.ndarray]] = []
        with self._locks[model]:
            for start in range(0, max(batch, 1), step):
                chunk = {k: v[start : start + step] for k, v in arrays.items()}
                parts.append(self._infer_once(info, chunk))
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _infer_once(self, info: _ModelInfo, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm
        from tritonclient.utils import InferenceServerException

        batch = next(iter(arrays.values())).shape[0]
        request_inputs = []
        request_outputs = []
        out_regions = {}
        for t in info.inputs:
            a = arrays[t.name]
            item = grpcclient.InferInput(t.name, list(a.shape), t.datatype)
            if self.use_shared_memory:
                region = self._region(info.name, t.name, a.nbytes)
                shm.set_shared_memory_region(region.handle, [a])
                item.set_shared_memory(region.name, a.nbytes)
            else:
                item.set_data_from_numpy(a)
            request_inputs.append(item)
        for t in info.outputs:
            item = grpcclient.InferRequestedOutput(t.name)
            if self.use_shared_memory:
                shape = (batch, *t.shape) if info.max_batch_size else t.shape
                nbytes = int(np.prod(shape)) * _TRITON_TO_NP[t.datatype].itemsize
                region = self._region(info.name, "out_" + t.name, nbytes)
                item.set_shared_memory(region.name, nbytes)
                out_regions[t.name] = (region, shape)
            request_outputs.append(item)
        try:
            result = self._client.infer(
                info.name, request_inputs, outputs=request_outputs, client_timeout=self._timeout_s
            )
        except InferenceServerException as exc:
            raise InferenceError(f"model {info.name!r} on Triton at {self.url}: {exc.message()}") from exc
        out = {}
        for t in info.outputs:
            if self.use_shared_memory:
                region, shape = out_regions[t.name]
                out[t.name] = np.array(shm.get_contents_as_numpy(region.handle, _TRITON_TO_NP[t.datatype], shape))
            else:
                out[t.name] = result.as_numpy(t.name)
        return out

    def model_versions(self) -> dict[str, str]:
        versions = {}
        for name in MODEL_NAMES:
            try:
                versions[name] = self._info(name).version
            except ModelNotFoundError:
                continue
        return versions

    def model_parameters(self, model: str) -> dict[str, str]:
        """The model's ``RUNTIME_PARAMETERS`` from its config's ``ainode_<key>`` parameters."""
        return dict(self._info(model).parameters)

    def close(self) -> None:
        for region in self._regions.values():
            region.release()
        self._regions.clear()
        self._client.close()


class ParameterOverride:
    """Another backend with some models' runtime parameters replaced (``ainode eval --mask-cut``:
    screen a cut on the same weights without exporting them again)."""

    def __init__(self, backend: InferenceBackend, overrides: dict[str, dict[str, str]]) -> None:
        unknown = sorted({k for values in overrides.values() for k in values} - set(RUNTIME_PARAMETERS))
        if unknown:
            raise ValueError(f"overrides: unknown runtime parameters {unknown}; known: {list(RUNTIME_PARAMETERS)}")
        self.backend = backend
        self.overrides = overrides

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.infer(model, inputs)

    def model_versions(self) -> dict[str, str]:
        return self.backend.model_versions()

    def model_parameters(self, model: str) -> dict[str, str]:
        return {**self.backend.model_parameters(model), **self.overrides.get(model, {})}

    def close(self) -> None:
        self.backend.close()


def open_backend(settings: Settings) -> InferenceBackend:
    """Triton when ``settings.triton_url`` is set (or inference_backend == "triton"), else ONNX in-process."""
    choice = settings.inference_backend
    if choice not in ("auto", "triton", "onnx"):
        raise ValueError(f"inference_backend: expected auto, triton or onnx, got {choice!r}")
    if choice == "triton" or (choice == "auto" and settings.triton_url):
        url = settings.triton_url or f"localhost:{settings.triton_grpc_port}"
        return TritonBackend(url, repository=Path(settings.model_repository) / "cpu")
    return OnnxBackend(Path(settings.model_repository))
