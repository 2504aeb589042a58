"""OHIF served by the node draws a processed study's TID 1500 SR and lists its RECIST measurements.

Starts Debian's Orthanc (DICOMweb plugin) on free ports, stores a synthetic CT with the node's
SEG, SR and presentation state, serves OHIF with the node's ViewerServer and opens the SR in
headless Chromium driven over the DevTools protocol: the SR viewport draws the axes, OHIF asks
whether to track the report's measurements, the test answers Yes and OHIF's measurement panel
lists one row per lesion (its ID, long and short axis). The screenshot of that state is kept
under .ainode/test-artifacts/ohif_sr.png.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import requests

from node.bench.outputs import assemble_volume, synthetic_ct_series, synthetic_lesions
from node.dicom.provenance import Provenance
from node.dicom.results import build_result_objects
from node.stack.orthanc import EmbeddedOrthanc, OrthancPorts
from node.stack.process import free_port
from node.stack.viewer import DEFAULT_DIST_DIR, ViewerServer

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / ".ainode" / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1400,900",
]
#: An axis as OHIF's SR viewport draws it: "L: " / "W: " stand for Long Axis / Short Axis.
LABEL = re.compile(r"\b([LW]): : ([0-9.]+) mm")
PANEL = '[data-cy="trackedMeasurements-panel"]'
#: One step of driving OHIF: answer its "track measurements?" prompt with Yes, open the tracked
#: measurements panel if it is closed, and report the panel's rows.
DRIVE = """((answer) => {
  const yes = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Yes');
  if (yes && answer) { yes.click(); }
  if (!document.querySelector('__PANEL__')) {
    const tab = document.querySelector('[data-cy="trackedMeasurements-btn"]');
    if (tab) { tab.click(); }
  }
  const rows = [...document.querySelectorAll('__PANEL__ [data-cy^="measurement-table-row-"]')].map(r => r.innerText);
  const panel = document.querySelector('__PANEL__');
  return JSON.stringify({asked: !!yes, rows, panel: panel ? panel.innerText : null});
})(__ANSWER__)""".replace("__PANEL__", PANEL)
ROW_AXES = re.compile(r"L: ([0-9.]+) mm\s*W: ([0-9.]+) mm")


class DevTools:
    """Just enough of the Chrome DevTools Protocol, over a stdlib WebSocket, to drive one page.

    The page runs in real time: with --virtual-time-budget OHIF's canvas kept a stale size and
    the screenshot showed the image stretched against its SR graphics.
    """

    def __init__(self, ws_url: str) -> None:
        host, port, path = re.match(r"ws://([^:/]+):(\d+)(/.*)", ws_url).groups()
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self._exact(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.last_id = 0

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            buf += chunk
        return buf

    def _send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        if n < 126:
            header = bytes([0x81, 0x80 | n])
        elif n < 65536:
            header = bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
        else:
            header = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _receive(self) -> str:
        message = b""
        while True:
            first, second = self._exact(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            message += self._exact(n)
            if first & 0x80:
                return message.decode()

    def call(self, method: str, **params: object) -> dict:
        self.last_id += 1
        self._send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._receive())
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.sock.close()


def open_and_capture(chromium: str, url: str, screenshot: Path, profile: Path, *, labels: int, rows: int,
                     timeout: float = 150.0) -> tuple[str, set[tuple[str, str]], dict]:
    """Open ``url`` in headless Chromium and drive OHIF until its panel lists ``rows`` measurements.

    OHIF's prompt to track the SR's measurements is answered only once ``labels`` axis labels
    were drawn by the SR viewport (or after 60 s). Saves a screenshot of the final state and
    returns the page's HTML, the SR viewport's axis labels and the last driver state.
    """
    port = free_port()
    proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as reply:
                    pages = json.load(reply)
                ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        page = DevTools(ws_url)
        try:
            page.call("Page.enable")
            page.call("Page.navigate", url=url)
            start = time.monotonic()
            seen: set[tuple[str, str]] = set()
            state: dict = {}
            while time.monotonic() < start + timeout:
                seen |= set(LABEL.findall(str(page.evaluate("document.documentElement.outerHTML") or "")))
                answer = len(seen) >= labels or time.monotonic() > start + 60
                state = json.loads(str(page.evaluate(DRIVE.replace("__ANSWER__", "true" if answer else "false"))))
                if len(state["rows"]) >= rows:
                    break
                time.sleep(1.0)
            time.sleep(2.0)  # let the last frame settle before the screenshot
            state = json.loads(str(page.evaluate(DRIVE.replace("__ANSWER__", "false"))))
            html = str(page.evaluate("document.documentElement.outerHTML") or "")
            screenshot.write_bytes(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
        finally:
            page.close()
        return html, seen, state
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _paint(series, volume, lesions):
    """Make the lesions visible in the CT pixels (+80 HU) so the screenshot shows them."""
    by_uid = {ds.SOPInstanceUID: ds for ds in series}
    for lesion in lesions:
        s0, r0, c0 = lesion.mask_offset
        for k in range(lesion.mask.shape[0]):
            ds = by_uid[volume.sop_instance_uids[s0 + k]]
            pixels = np.frombuffer(ds.PixelData, dtype=np.int16).reshape(ds.Rows, ds.Columns).copy()
            rows, cols = lesion.mask[k].shape
            pixels[r0:r0 + rows, c0:c0 + cols][lesion.mask[k]] += 80
            ds.PixelData = pixels.tobytes()


def test_ohif_draws_and_lists_recist_measurements(tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian package chromium is missing: run deploy/install.sh"
    assert (DEFAULT_DIST_DIR / "index.html").is_file(), "OHIF missing: run deploy/install.sh install-viewer"

    series = synthetic_ct_series(n_slices=24, rows=128, columns=128, seed=7)
    volume = assemble_volume(series)
    first, second = synthetic_lesions(volume, 2, seed=11, radius_px=9)
    # Both lesions on one key slice, so one image shows both sets of RECIST lines.
    second = dataclasses.replace(
        second,
        key_slice=first.key_slice,
        mask_offset=(first.mask_offset[0], second.mask_offset[1], second.mask_offset[2]),
        tracking_id="T7",
    )
    if abs(second.recist.long_axis_endpoints[0][1] - first.recist.long_axis_endpoints[0][1]) < 20:
        shift = 40.0 if first.recist.long_axis_endpoints[0][1] < 64 else -40.0
        second = dataclasses.replace(
            second,
            mask_offset=(second.mask_offset[0], second.mask_offset[1] + int(shift), second.mask_offset[2]),
            recist=dataclasses.replace(
                second.recist,
                long_axis_endpoints=tuple((c, r + shift) for c, r in second.recist.long_axis_endpoints),
                short_axis_endpoints=tuple((c, r + shift) for c, r in second.recist.short_axis_endpoints),
            ),
        )
    # Other lengths than the first lesion's, with axes drawn to those lengths: OHIF lists lengths
    # it measures on the drawn axes, the SR viewport the values written.
    (c0, r0), (c1, _) = second.recist.long_axis_endpoints
    cc, col_mm, row_mm = (c0 + c1) / 2, volume.spacing[2], volume.spacing[1]
    half_long, half_short = 15.3 / 2 / col_mm, 9.1 / 2 / row_mm
    second = dataclasses.replace(
        second,
        recist=dataclasses.replace(
            second.recist,
            long_axis_mm=15.3,
            short_axis_mm=9.1,
            long_axis_endpoints=((cc - half_long, r0), (cc + half_long, r0)),
            short_axis_endpoints=((cc, r0 - half_short), (cc, r0 + half_short)),
        ),
    )
    lesions = [first, second]
    _paint(series, volume, lesions)
    objects = build_result_objects(series, volume, lesions, provenance=Provenance(), time_point="baseline")
    assert objects.excluded == []
    # In the data, each lesion's RECIST cross sits on the centre of its painted blob.
    key = next(ds for ds in series if ds.SOPInstanceUID == volume.sop_instance_uids[first.key_slice])
    hu = np.frombuffer(key.PixelData, dtype=np.int16).reshape(key.Rows, key.Columns).astype(float) - 1024
    for lesion in lesions:
        (c0, r0), (c1, r1) = lesion.recist.long_axis_endpoints
        rows, cols = np.nonzero(hu[int(r0) - 12:int(r0) + 13, int(c0) - 2:int(c1) + 3] > 50)
        assert abs(rows.mean() + int(r0) - 12 - r0) < 1.0 and abs(cols.mean() + int(c0) - 2 - (c0 + c1) / 2) < 1.0

    orthanc = EmbeddedOrthanc(
        tmp_path / "orthanc", ports=OrthancPorts(http=free_port(), dicom=free_port()), with_plugin=False
    )
    orthanc.start()
    viewer = ViewerServer(DEFAULT_DIST_DIR, orthanc.url + "/dicom-web", 0)
    try:
        for ds in [*series, *objects.datasets]:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            requests.post(orthanc.url + "/instances", data=buffer.getvalue(), timeout=30).raise_for_status()
        viewer.start()
        # The proxy answers QIDO for the study with the node's three result series.
        found = requests.get(
            f"{viewer.url}/dicom-web/studies/{volume.study_instance_uid}/series", timeout=30
        ).json()
        assert {item["00080060"]["Value"][0] for item in found} == {"CT", "SEG", "SR", "PR"}

        url = viewer.url_for_study(volume.study_instance_uid) + f"&initialSeriesInstanceUID={objects.sr.SeriesInstanceUID}"
        shot = tmp_path / "ohif_sr.png"
        dom, drawn, state = open_and_capture(chromium, url, shot, tmp_path / "chromium", labels=4, rows=2)
    finally:
        viewer.stop()
        orthanc.stop()

    assert shot.is_file() and shot.stat().st_size > 20_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "ohif_sr.png")
    (ARTIFACTS / "ohif_sr.html").write_text(dom)

    # The SR viewport drew every axis with the value written in the report.
    expected = {
        (name, f"{value:.2f}")
        for lesion in lesions
        for name, value in (("L", lesion.recist.long_axis_mm), ("W", lesion.recist.short_axis_mm))
    }
    assert drawn == expected, drawn
    # OHIF asked to track the report's measurements and, answered Yes, lists one row per lesion:
    # the lesion ID as label, then long (L) and short (W) axis as OHIF measures the drawn axes.
    assert state["panel"] is not None and "Measurements (2)" in state["panel"], state
    assert len(state["rows"]) == 2, state["rows"]
    listed = {}
    for row in state["rows"]:
        label = next(line for line in row.splitlines()[1:] if line.strip())
        axes = ROW_AXES.search(row)
        assert axes, row
        listed[label] = (float(axes.group(1)), float(axes.group(2)))
    assert set(listed) == {lesion.tracking_id or f"Lesion {lesion.index + 1}" for lesion in lesions}, listed
    for lesion in objects.lesions:
        long_mm, short_mm = listed[lesion.tracking_id]
        assert long_mm == pytest.approx(lesion.recist.long_axis_mm, abs=0.06)
        assert short_mm == pytest.approx(lesion.recist.short_axis_mm, abs=0.06)
    # The listed measurements are drawn on the CT (the screenshot): label, long and short axis.
    drawn_boxes = re.findall(r'<tspan[^>]*>([^<]*)</tspan><tspan[^>]*>(L: [0-9.]+ mm)</tspan><tspan[^>]*>(W: [0-9.]+ mm)</tspan>', dom)
    assert {label for label, _, _ in drawn_boxes} == set(listed), drawn_boxes
