"""The node's settings: one frozen object built at the edge from AINODE_* variables and a TOML file."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "AINODE_"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the node needs to run, in one place.

    External services are given by URL; an empty URL means "start the embedded default"
    (pgserver Postgres, the pytriton wheel's Triton on CPU, Debian's Orthanc).
    """

    data_dir: Path = Path(".ainode")
    database_url: str = ""
    triton_url: str = ""
    orthanc_url: str = ""
    orthanc_username: str = ""
    orthanc_password: str = ""
    # Ports of the embedded services; 0 picks a free port at start-up.
    orthanc_http_port: int = 8042
    orthanc_dicom_port: int = 4242
    orthanc_aet: str = "AINODE"
    triton_grpc_port: int = 8001
    triton_http_port: int = 8000
    triton_metrics_port: int = 8002
    viewer_port: int = 3000
    workers: int = 2
    # Job queue.
    job_lease_seconds: int = 600
    job_max_attempts: int = 3
    job_retry_base_seconds: float = 10.0
    worker_poll_seconds: float = 1.0
    stable_age_seconds: int = 5
    # Models.
    model_repository: Path = REPO_ROOT / "triton_models"
    inference_backend: str = "auto"  # auto | triton | onnx
    # A lesion's score is its detector score, times 0.3 where the segmenter finds nothing in its
    # crop (node.inference.analyzer.NO_MASK_SCORE): at 0.5 only segmented lesions are reported.
    detection_threshold: float = 0.5
    # The detector's zoomed pass (node.inference.analyzer.DETECTOR_ZOOM); 1 turns it off. Its
    # scores stay under 0.5, so it runs only when detection_threshold is set under 0.5 (and in
    # `ainode eval`'s FROC).
    detector_zoom: float = 1.5
    # Lesion matching (Algorithm 1) on embedding distance, tuned with the committed embedder on
    # the found lesions of synthetic tuning patients no model was trained on (`ainode eval --seed 0
    # --first-patient 20000 --patients 12 --timepoints 3`, 53 lesions): pairwise precision and
    # recall are 1.0 for every t2 from 0.4 to 0.8 (t1 0.02-0.1); t2 0.6 is the middle of that
    # plateau. t1 0.05: with the previous embedder t1 0.1 or more merged two lesions of one study.
    match_t1: float = 0.05
    match_t2: float = 0.6
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(kind: Any, raw: Any, name: str) -> Any:
    if kind in (Path, "Path"):
        return Path(raw)
    if kind in (int, "int"):
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name}: expected an integer, got {raw!r}") from None
    if kind in (float, "float"):
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name}: expected a number, got {raw!r}") from None
    if kind in (str, "str"):
        return str(raw)
    return raw


def load_settings(
    toml_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, then a TOML file, then AINODE_* variables, then overrides.

    The TOML file is `toml_path`, else `$AINODE_CONFIG`, else `ainode.toml` in the working
    directory when present. Keys are the field names (e.g. ``database_url = "..."``).
    """
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}
    values: dict[str, Any] = {}

    path = toml_path or (Path(environ[ENV_PREFIX + "CONFIG"]) if environ.get(ENV_PREFIX + "CONFIG") else None)
    if path is None and Path("ainode.toml").is_file():
        path = Path("ainode.toml")
    if path is not None:
        if not path.is_file():
            raise ValueError(f"configuration file {path} does not exist")
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        for key, raw in data.items():
            if key not in fields:
                raise ValueError(f"configuration file {path}: unknown setting {key!r}")
            values[key] = _coerce(fields[key].type, raw, key)

    for name, f in fields.items():
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ and environ[env_name] != "":
            values[name] = _coerce(f.type, environ[env_name], env_name)

    for name, raw in overrides.items():
        if raw is not None:
            values[name] = _coerce(fields[name].type, raw, name)

    settings = Settings(**values)
    if settings.workers < 0:
        raise ValueError("setting workers: must be 0 or more")
    return settings
