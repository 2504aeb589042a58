"""Triton Inference Server on CPU: the `tritonserver` binary shipped in the nvidia-pytriton wheel.

The wheel's python backend needs a backend directory holding ``python/libtriton_python.so`` and
the stub built for this Python; the stub must find this interpreter's own libpython
(LD_LIBRARY_PATH = LIBDIR) and numpy < 2 + onnxruntime on its PYTHONPATH.
"""

from __future__ import annotations

import logging
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import requests

from node.config import REPO_ROOT
from node.stack.process import (
    ServiceError,
    check_ports_free,
    node_import_paths,
    start_process,
    stop_child,
    wait_until,
)

logger = logging.getLogger(__name__)

CPU_REPOSITORY = REPO_ROOT / "triton_models" / "cpu"


@dataclass(frozen=True, kw_only=True)
class TritonPorts:
    grpc: int
    http: int
    metrics: int


def pytriton_server_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServiceError("triton: the nvidia-pytriton wheel is not installed; run `make install`") from exc
    server = Path(pytriton.__file__).parent / "tritonserver"
    if not (server / "bin" / "tritonserver").exists():
        raise ServiceError(f"triton: no tritonserver binary in {server}; reinstall nvidia-pytriton==0.7.0")
    return server


def prepare_backends(target: Path) -> Path:
    """Assemble the python backend folder (library + stub for this Python) under ``target``."""
    server = pytriton_server_dir()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServiceError(f"triton: no python backend stub for Python {version} in the pytriton wheel")
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (server / "backends" / "python" / "libtriton_python.so", stub,
                   server / "backends" / "python" / "triton_python_backend_utils.py"):
        dest = python_dir / source.name
        if not dest.exists() or dest.stat().st_size != source.stat().st_size:
            shutil.copy2(source, dest)
    return target


def stub_environment() -> dict[str, str]:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = node_import_paths()
    # The stub links against the CUDA runtime bundled beside the wheel (unused on CPU).
    bundled = [str(Path(p) / "nvidia_pytriton.libs") for p in site.getsitepackages()
               if (Path(p) / "nvidia_pytriton.libs").is_dir()]
    ld = ":".join(p for p in (libdir, *bundled, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    return {
        "LD_LIBRARY_PATH": ld,
        "PYTHONPATH": ":".join(paths),
        # The stub's embedded interpreter is isolated and ignores PYTHONPATH; model.py files
        # prepend AINODE_STUB_PATH to sys.path before importing numpy.
        "AINODE_STUB_PATH": ":".join(paths),
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }


class EmbeddedTriton:
    """A CPU Triton serving ``repository`` (default triton_models/cpu) on the given ports."""

    def __init__(
        self,
        work_dir: Path,
        *,
        ports: TritonPorts,
        repository: Path = CPU_REPOSITORY,
        name: str = "triton",
        run_dir: Path | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.ports = ports
        self.repository = Path(repository).resolve()
        self.name = name
        self.run_dir = run_dir or self.work_dir
        self.log_dir = log_dir or self.work_dir
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def argv(self) -> list[str]:
        server = pytriton_server_dir()
        backends = prepare_backends(self.work_dir / "backends")
        return [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-port={self.ports.http}",
            f"--metrics-port={self.ports.metrics}",
            "--grpc-address=127.0.0.1",
            "--http-address=127.0.0.1",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]

    def start(self, *, timeout: float = 180.0) -> None:
        if not self.repository.is_dir():
            raise ServiceError(f"triton: model repository {self.repository} does not exist")
        check_ports_free("triton", {"triton grpc": self.ports.grpc, "triton http": self.ports.http,
                                    "triton metrics": self.ports.metrics})
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.proc = start_process(self.name, self.argv(), run_dir=self.run_dir, log_dir=self.log_dir,
                                  env=stub_environment())
        try:
            wait_until(self.name, self.ready, timeout=timeout, proc=self.proc, log_file=self.log_file, interval=0.5)
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        return requests.get(f"{self.http_url}/v2/health/ready", timeout=2).status_code == 200

    def stop(self) -> None:
        stop_child(self.proc, self.name, self.run_dir)
