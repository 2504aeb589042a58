"""OHIF served by the node shows a processed study's TID 1500 SR with its RECIST lines drawn.

Starts Debian's Orthanc (DICOMweb plugin) on free ports, stores a synthetic CT with the node's
SEG, SR and presentation state, serves OHIF with the node's ViewerServer and opens the SR in
headless Chromium. The screenshot is kept under .ainode/test-artifacts/.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import subprocess
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
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1200,1200",
]
# OHIF sizes its canvas before the SR's side-panel strip appears; nudging the root element's
# width makes it re-fit (the image is drawn round again) before the screenshot.
RESIZE_JS = (
    "setTimeout(function () { document.getElementById('root').style.width = 'calc(100% - 3px)'; }, 12000);"
    "setTimeout(function () { document.getElementById('root').style.width = ''; }, 16000);"
)


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
    second = dataclasses.replace(
        second, recist=dataclasses.replace(second.recist, long_axis_mm=15.3, short_axis_mm=9.1)
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
    viewer = ViewerServer(DEFAULT_DIST_DIR, orthanc.url + "/dicom-web", 0, extra_script=RESIZE_JS)
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
        run = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, "--virtual-time-budget=30000", f"--screenshot={shot}", "--dump-dom", url],
            capture_output=True, text=True, timeout=240,
        )
        dom = run.stdout
    finally:
        viewer.stop()
        orthanc.stop()

    assert shot.is_file() and shot.stat().st_size > 20_000, run.stderr[-2000:]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "ohif_sr.png")
    (ARTIFACTS / "ohif_sr.html").write_text(dom)

    # The SR is the displayed series and every RECIST measurement of the key slice is listed.
    assert 'data-cy="ModalityLoadBadge-default"' in dom and ">SR<" in dom
    labels = re.findall(r"(Long axis|Short axis): ([0-9.]+) mm", dom)
    expected = {
        (name, f"{value:.2f}")
        for lesion in lesions
        for name, value in (("Long axis", lesion.recist.long_axis_mm), ("Short axis", lesion.recist.short_axis_mm))
    }
    assert set(labels) == expected, labels
    assert len(labels) == 4
