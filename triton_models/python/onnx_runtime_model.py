"""Triton python-backend model that runs one ONNX file with ONNX Runtime (the CPU variant).

Each ``cpu/<name>/1/model.py`` re-exports ``TritonPythonModel`` from here. The config is the
contract: ``initialize`` reads tensor names and dtypes from it once, and the ONNX file from its
``onnx_file`` parameter (a path relative to the model's folder). Requests queued together by
the dynamic batcher run as one ONNX Runtime call; a request that cannot run gets its own error
response instead of failing the others.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# The stub's embedded Python ignores PYTHONPATH (it runs isolated), so numpy would come from the
# system interpreter (numpy 2 breaks this Triton build). node.stack.triton puts the node's
# site-packages in AINODE_STUB_PATH; put them first before numpy is imported.
for _p in reversed(os.environ.get("AINODE_STUB_PATH", "").split(os.pathsep)):
    if _p and _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        self.input_names = [t["name"] for t in config["input"]]
        self.outputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]
        ]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"])
        path = (model_dir / params["onnx_file"]).resolve()
        if not path.is_file():
            raise pb_utils.TritonModelException(
                f"model {self.model_name}: ONNX file {path} not found (run `ainode train` or check out triton_models/onnx)"
            )
        options = ort.SessionOptions()
        threads = int(os.environ.get("AINODE_ORT_THREADS", params.get("intra_op_threads", "0")))
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run([name for name, _ in self.outputs], feeds)

    def execute(self, requests: list) -> list:
        arrays = []
        for request in requests:
            arrays.append(
                {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names}
            )
        if len(arrays) == 1:  # nothing to join: no copy
            return [self._respond_one(arrays[0])]
        try:
            sizes = [a[self.input_names[0]].shape[0] for a in arrays]
            feeds = {n: np.concatenate([a[n] for a in arrays]) for n in self.input_names}
            results = self._run(feeds)
            splits = np.cumsum(sizes)[:-1]
            per_request = [np.split(r, splits) for r in results]
            return [
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.ascontiguousarray(per_request[j][i], dtype=dtype))
                        for j, (name, dtype) in enumerate(self.outputs)
                    ]
                )
                for i in range(len(requests))
            ]
        except Exception:  # noqa: BLE001 - fall back to one call per request, each with its own error
            return [self._respond_one(a) for a in arrays]

    def _respond_one(self, feeds: dict[str, np.ndarray]):
        try:
            results = self._run(feeds)
        except Exception as exc:  # noqa: BLE001 - the boundary: an error response for this request
            return pb_utils.InferenceResponse(
                output_tensors=[], error=pb_utils.TritonError(f"{self.model_name}: {exc}")
            )
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(r, dtype=dtype))
                for (name, dtype), r in zip(self.outputs, results, strict=True)
            ]
        )

    def finalize(self) -> None:
        self.session = None
