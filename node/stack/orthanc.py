"""Orthanc from Debian's packages, started by the node with its own generated configuration."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
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

PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PYTHON_PLUGIN = PLUGIN_DIR / "libOrthancPython.so"
DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"
PLUGIN_SCRIPT = REPO_ROOT / "orthanc" / "plugin.py"


@dataclass(frozen=True, kw_only=True)
class OrthancPorts:
    http: int
    dicom: int


def orthanc_binary() -> str:
    path = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(path).exists():
        raise ServiceError("orthanc: the Orthanc binary is not installed; run `make install` (apt-get install orthanc)")
    return path


def build_config(
    *,
    name: str,
    data_dir: Path,
    ports: OrthancPorts,
    aet: str,
    database_url: str | None,
    with_plugin: bool = True,
    stable_age: int = 5,
    max_attempts: int = 3,
    modalities: dict[str, list] | None = None,
    credentials: tuple[str, str] | None = None,
    viewer_url: str | None = None,
) -> dict:
    """The Orthanc JSON configuration of the node (the AINode section is read by the plugin)."""
    plugins = [str(DICOMWEB_PLUGIN)]
    config: dict = {
        "Name": name,
        "StorageDirectory": str(data_dir / "storage"),
        "IndexDirectory": str(data_dir / "storage"),
        "HttpPort": ports.http,
        "DicomPort": ports.dicom,
        "DicomAet": aet,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": credentials is not None,
        "StableAge": stable_age,
        "OverwriteInstances": True,
        "StorageCompression": False,
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "ConcurrentJobs": 2,
        "DicomModalities": modalities or {},
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False, "StudiesMetadata": "Full"},
        "Plugins": plugins,
    }
    if credentials is not None:
        config["RegisteredUsers"] = {credentials[0]: credentials[1]}
    if with_plugin:
        plugins.insert(0, str(PYTHON_PLUGIN))
        config["PythonScript"] = str(PLUGIN_SCRIPT)
        config["PythonVerbose"] = False
        config["AINode"] = {
            "DatabaseUrl": database_url,
            "SitePackages": node_import_paths(),
            "MaxAttempts": max_attempts,
            "ViewerUrl": viewer_url or "",
        }
    return config


class EmbeddedOrthanc:
    """One Orthanc process with the node's plugin and DICOMweb, state under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        ports: OrthancPorts,
        aet: str = "AINODE",
        database_url: str | None = None,
        with_plugin: bool = True,
        name: str = "orthanc",
        run_dir: Path | None = None,
        log_dir: Path | None = None,
        stable_age: int = 5,
        max_attempts: int = 3,
        viewer_url: str | None = None,
    ) -> None:
        self.viewer_url = viewer_url
        self.data_dir = Path(data_dir).resolve()
        self.ports = ports
        self.aet = aet
        self.database_url = database_url
        self.with_plugin = with_plugin
        self.name = name
        self.run_dir = run_dir or self.data_dir
        self.log_dir = log_dir or self.data_dir
        self.stable_age = stable_age
        self.max_attempts = max_attempts
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, *, timeout: float = 60.0) -> None:
        binary = orthanc_binary()
        if self.with_plugin and not PYTHON_PLUGIN.exists():
            raise ServiceError("orthanc: the Python plugin is missing; run `make install` (apt-get install orthanc-python)")
        if not DICOMWEB_PLUGIN.exists():
            raise ServiceError("orthanc: the DICOMweb plugin is missing; run `make install` (apt-get install orthanc-dicomweb)")
        check_ports_free("orthanc", {"orthanc http": self.ports.http, "orthanc dicom": self.ports.dicom})
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = build_config(
            name=self.name,
            data_dir=self.data_dir,
            ports=self.ports,
            aet=self.aet,
            database_url=self.database_url,
            with_plugin=self.with_plugin,
            stable_age=self.stable_age,
            max_attempts=self.max_attempts,
            viewer_url=self.viewer_url,
        )
        config_file = self.data_dir / "orthanc.json"
        config_file.write_text(json.dumps(config, indent=2))
        # TCP_NODELAY: DCMTK (Orthanc's DICOM layer) reads it; without it loopback C-STORE is ~20/s.
        env = {"TCP_NODELAY": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = start_process(
            self.name, [binary, str(config_file)], run_dir=self.run_dir, log_dir=self.log_dir, env=env
        )
        try:
            wait_until(self.name, self.healthy, timeout=timeout, proc=self.proc, log_file=self.log_file)
            if self.with_plugin:
                wait_until(f"{self.name} (ainode plugin)", self.plugin_ready, timeout=timeout, proc=self.proc,
                           log_file=self.log_file)
        except BaseException:
            self.stop()
            raise

    def healthy(self) -> bool:
        return requests.get(f"{self.url}/system", timeout=2).ok

    def plugin_ready(self) -> bool:
        return requests.get(f"{self.url}/ainode/health", timeout=2).ok

    def stop(self) -> None:
        stop_child(self.proc, self.name, self.run_dir)
