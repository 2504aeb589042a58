"""The pseudonymous patient key: the only patient identifier the lesion graph stores.

``HMAC-SHA256(secret, IssuerOfPatientID + "\\x00" + PatientID)`` in hex, with a per-node
secret kept in the data directory (created on first use, readable by its owner only). The raw
Patient ID is never stored or logged. Two studies of one person carrying different Patient IDs
(or issuers) get different keys: the node does not guess that they are one patient, so their
lesions are tracked separately until the PACS merges the IDs and the studies are sent again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["load_secret", "patient_key", "secret_path"]

SECRET_BYTES = 32


def secret_path(data_dir: Path) -> Path:
    """Where the node keeps its patient-key secret."""
    return Path(data_dir) / "secrets" / "patient_key"


def load_secret(data_dir: Path) -> bytes:
    """The node's secret, created (mode 0600) the first time it is asked for."""
    path = secret_path(data_dir)
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = secrets.token_bytes(SECRET_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker created it first: use theirs
            secret = path.read_bytes()
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(fresh)
            logger.info("created the patient-key secret in %s", path.parent)
            secret = fresh
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"data_dir: the patient-key secret {path} is shorter than {SECRET_BYTES} bytes")
    return secret


def patient_key(*, patient_id: str, issuer_of_patient_id: str | None = None, secret: bytes) -> str:
    """The pseudonymous key of a patient: hex HMAC-SHA256 of issuer and Patient ID."""
    if not patient_id or not patient_id.strip():
        raise ValueError("patient_id: must not be empty")
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"secret: need at least {SECRET_BYTES} bytes")
    message = f"{(issuer_of_patient_id or '').strip()}\x00{patient_id.strip()}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
