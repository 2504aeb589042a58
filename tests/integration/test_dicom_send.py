"""The C-STORE sender against DCMTK's storescp, a real peer started on a free port."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import association, dimse

from node.dicom import network
from node.stack.process import free_port, port_in_use, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def storescp(tmp_path):
    assert shutil.which("storescp"), "DCMTK's storescp is missing: deploy/install.sh installs dcmtk"
    port = free_port()
    proc = subprocess.Popen(["storescp", "--ignore", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_until("storescp", lambda: port_in_use(port), timeout=10, proc=proc, interval=0.1)
    yield port
    proc.kill()
    proc.wait()


def _files(folder, n):
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 1, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.zeros((8, 8), np.int16).tobytes()
        paths.append(folder / f"CT{i:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_an_answer_the_reactor_thread_takes_still_reaches_the_sender(storescp, tmp_path, monkeypatch):
    """pynetdicom's reactor, woken late, runs beside send_c_store and can take its answer.

    The scheduling a loaded host produces by chance is made certain here: the reactor sleeps
    just after its checkpoint wakes it, the sending thread sleeps before it reads its answer.
    Without leave_responses_to_the_sender the answer is dropped and the send fails.
    """

    class LateReactorCheckpoint(threading.Event):
        def wait(self, timeout=None):
            woken = super().wait(timeout)
            time.sleep(0.06)
            return woken

    init = association.Association.__init__

    def init_with_late_reactor(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._reactor_checkpoint = LateReactorCheckpoint()
        self._reactor_checkpoint.set()

    get_msg = dimse.DIMSEServiceProvider.get_msg

    def late_sender_get_msg(self, block=False):
        if block:
            time.sleep(0.15)
        return get_msg(self, block)

    monkeypatch.setattr(association.Association, "__init__", init_with_late_reactor)
    monkeypatch.setattr(dimse.DIMSEServiceProvider, "get_msg", late_sender_get_msg)
    monkeypatch.setattr(network, "DIMSE_TIMEOUT_S", 3)
    report = network.send_files(_files(tmp_path, 8), host="127.0.0.1", port=storescp, called_aet="STORESCP")
    assert (report.sent, report.failed) == (8, [])


def test_a_peer_that_stops_answering_is_named_with_how_far_the_send_got(storescp, tmp_path, monkeypatch):
    get_msg = dimse.DIMSEServiceProvider.get_msg
    calls = {"n": 0}

    def answer_lost_after_three(self, block=False):
        if block:
            calls["n"] += 1
            if calls["n"] == 4:
                self.msg_queue.get(timeout=5)  # the fourth answer is lost on the way
        return get_msg(self, block)

    monkeypatch.setattr(dimse.DIMSEServiceProvider, "get_msg", answer_lost_after_three)
    monkeypatch.setattr(network, "DIMSE_TIMEOUT_S", 1)
    with pytest.raises(network.SendError, match=r"ended after 3 of 6 files \(no answer within 1 s\)"):
        network.send_files(_files(tmp_path, 6), host="127.0.0.1", port=storescp, called_aet="STORESCP")
