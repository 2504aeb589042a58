"""DICOM networking of the node: C-STORE sender (pynetdicom) with TCP_NODELAY and progress."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.presentation import build_context

logger = logging.getLogger(__name__)


class SendError(RuntimeError):
    """The peer could not be reached or refused the association."""


@dataclass(kw_only=True)
class SendReport:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def collect_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def set_nodelay(assoc) -> None:
    """pynetdicom does not set TCP_NODELAY; on loopback Nagle's algorithm costs 10x throughput."""
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:
        logger.debug("could not set TCP_NODELAY: %s", exc)


DIMSE_TIMEOUT_S = 120  # seconds to wait for the peer's answer to one C-STORE


def leave_responses_to_the_sender(assoc) -> None:
    """Stop pynetdicom's reactor thread from taking the answer to a C-STORE this thread sent.

    pynetdicom 3.0 pauses its reactor around `send_c_store` with an Event the reactor waits on,
    but a reactor woken by the previous call's `set()` and not yet scheduled passes the next
    call's `clear()` (Event.wait returns the wake-up, not the flag), runs one loop beside the
    sender and may take the peer's answer off the queue: it logs "Received unexpected C-STORE
    service message" and drops it, the sender waits out DIMSE_TIMEOUT_S and aborts. Seen once in
    CI against Orthanc on a loaded 2-core host. An answer the reactor takes goes back on the queue.
    """
    serve = assoc._serve_request

    def serve_requests_only(msg, context_id: int) -> None:
        if msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
        else:
            serve(msg, context_id)

    assoc._serve_request = serve_requests_only


def send_files(
    files: Sequence[Path],
    *,
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "AINODE_SCU",
    progress: Callable[[int], None] | None = None,
) -> SendReport:
    """C-STORE every DICOM file over one association (per batch of up to 120 contexts)."""
    import time

    report = SendReport()
    headers: list[tuple[Path, str, str]] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            headers.append((path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError) as exc:
            report.skipped.append((str(path), f"not a DICOM file: {exc}"))
            if progress:
                progress(1)
    contexts: dict[tuple[str, str], None] = {}
    for _, sop, ts in headers:
        contexts.setdefault((sop, ts), None)
    if len(contexts) > 120:
        raise SendError(f"{len(contexts)} SOP class / transfer syntax pairs: more than one association can carry")
    ae = AE(ae_title=calling_aet)
    # A busy peer (Orthanc while the node's services start on a 2-core host) was seen answering a
    # C-STORE after pynetdicom's default 30 s; wait longer before giving up on an answer.
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in contexts]
    start = time.perf_counter()
    if not headers:
        return report
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise SendError(
            f"DICOM peer {called_aet}@{host}:{port} refused or is unreachable; check it is running "
            "(`ainode status`) and that host, port and AE title are right"
        )
    set_nodelay(assoc)
    leave_responses_to_the_sender(assoc)
    try:
        for path, _, _ in headers:
            try:
                ds = pydicom.dcmread(path)
                status = assoc.send_c_store(ds)
            except Exception as exc:  # one bad file must not stop the rest
                report.failed.append((str(path), str(exc)))
            else:
                code = getattr(status, "Status", None)
                if code is None:
                    report.failed.append((str(path), f"no answer within {DIMSE_TIMEOUT_S} s"))
                elif code in (0x0000, 0xB000, 0xB006, 0xB007):
                    report.sent += 1
                else:
                    report.failed.append((str(path), f"status 0x{code:04X}"))
            if progress:
                progress(1)
            if not assoc.is_established:
                raise SendError(
                    f"association with {called_aet}@{host}:{port} ended after {report.sent} of {len(headers)} "
                    f"files ({report.failed[-1][1] if report.failed else 'aborted by the peer'}); check the "
                    "peer's log, then send again (a resent instance keeps its SOP Instance UID)"
                )
    finally:
        if assoc.is_established:
            assoc.release()
        report.seconds = time.perf_counter() - start
    return report
