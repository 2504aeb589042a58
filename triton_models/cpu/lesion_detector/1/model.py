"""CPU variant: ONNX Runtime inside Triton's python backend (shared code in triton_models/python)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))

from onnx_runtime_model import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
