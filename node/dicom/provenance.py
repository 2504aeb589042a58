"""Who made a result object: the algorithm, its models and the device, as DICOM wants them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import highdicom as hd
from pydicom.uid import generate_uid

from node import __version__
from node.dicom import codes

#: A fixed device UID for the node software when the site configures none.
DEFAULT_DEVICE_UID: str = generate_uid(entropy_srcs=["ainode", "device"])


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Algorithm and device identification written into every SEG, SR and presentation state.

    Parameters
    ----------
    algorithm_name, algorithm_version:
        The pipeline as a whole (SEG Algorithm Identification, SR TID 4019).
    model_versions:
        Name and version of each model that contributed, e.g. ``{"detector": "1.0"}``; written
        as algorithm parameters ``name=version``.
    manufacturer, model_name, device_uid, device_serial_number, software_versions:
        The device observer of the SR and the equipment module of every object.
    """

    algorithm_name: str = "ainode lesion pipeline"
    algorithm_version: str = __version__
    model_versions: Mapping[str, str] = field(default_factory=dict)
    manufacturer: str = "ainode project"
    model_name: str = "ainode"
    device_uid: str = DEFAULT_DEVICE_UID
    device_serial_number: str = "ainode-0"
    software_versions: str = f"ainode {__version__}"

    def __post_init__(self) -> None:
        for name in ("algorithm_name", "algorithm_version", "manufacturer", "model_name",
                     "device_serial_number", "software_versions"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}: must be a non-empty string")
        if not _is_uid(self.device_uid):
            raise ValueError(f"device_uid: {self.device_uid!r} is not a valid UID")
        for key, value in self.model_versions.items():
            if not key or "=" in key or not isinstance(value, str) or not value:
                raise ValueError(f"model_versions: bad entry {key!r}: {value!r}")
        object.__setattr__(self, "model_versions", MappingProxyType(dict(self.model_versions)))

    def equipment(self) -> dict[str, str]:
        """The General Equipment attributes every object the node writes carries, as highdicom keywords."""
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.model_name,
            "software_versions": self.software_versions,
            "device_serial_number": self.device_serial_number,
        }

    @property
    def parameters(self) -> dict[str, str]:
        """Model versions as algorithm parameters."""
        return {name: version for name, version in sorted(self.model_versions.items())}

    def seg_algorithm(self) -> hd.AlgorithmIdentificationSequence:
        """Segment Algorithm Identification (family Artificial Intelligence)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.algorithm_name,
            family=codes.ARTIFICIAL_INTELLIGENCE,
            version=self.algorithm_version,
            source=self.manufacturer,
            parameters=self.parameters or None,
        )

    def sr_algorithm(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification for SR measurement groups."""
        return hd.sr.AlgorithmIdentification(
            name=self.algorithm_name,
            version=self.algorithm_version,
            parameters=[f"{k}={v}" for k, v in self.parameters.items()] or None,
        )

    def observer_context(self) -> hd.sr.ObservationContext:
        """SR observation context with the node as device observer."""
        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=self.device_uid,
            name=self.model_name,
            manufacturer_name=self.manufacturer,
            model_name=self.model_name,
            serial_number=self.device_serial_number,
        )
        return hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DEVICE_OBSERVER,
                observer_identifying_attributes=device,
            )
        )


def _is_uid(value: str) -> bool:
    parts = value.split(".") if isinstance(value, str) else []
    return (
        0 < len(value) <= 64
        and all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)
    )
