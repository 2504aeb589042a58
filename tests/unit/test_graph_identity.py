"""The pseudonymous patient key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from node.lesions.identity import load_secret, patient_key, secret_path


def test_secret_is_created_once_private_and_reused(tmp_path: Path) -> None:
    first = load_secret(tmp_path)
    assert load_secret(tmp_path) == first and len(first) == 32
    assert stat.S_IMODE(secret_path(tmp_path).stat().st_mode) == 0o600


def test_key_is_stable_depends_on_issuer_and_secret_and_hides_the_id(tmp_path: Path) -> None:
    secret = load_secret(tmp_path)
    key = patient_key(patient_id="PAT-123", issuer_of_patient_id="HOSP", secret=secret)
    assert key == patient_key(patient_id="PAT-123", issuer_of_patient_id="HOSP", secret=secret)
    assert key != patient_key(patient_id="PAT-123", issuer_of_patient_id="OTHER", secret=secret)
    assert key != patient_key(patient_id="PAT-123", issuer_of_patient_id="HOSP", secret=b"y" * 32)
    assert len(key) == 64 and "PAT" not in key
    with pytest.raises(ValueError, match="patient_id"):
        patient_key(patient_id=" ", secret=secret)
    with pytest.raises(ValueError, match="secret"):
        patient_key(patient_id="1", secret=b"short")
