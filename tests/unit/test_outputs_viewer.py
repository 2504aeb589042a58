"""ViewerServer: OHIF's files at the root, app-config.js generated, /dicom-web proxied upstream."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from node.stack.viewer import ViewerServer, app_config_js


class _Upstream(BaseHTTPRequestHandler):
    """A stand-in DICOMweb server that answers with what it received."""

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
                           "accept": self.headers.get("Accept")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def dist(tmp_path):
    (tmp_path / "index.html").write_text("<html>ohif</html>")
    (tmp_path / "app.bundle.js").write_text("console.log(1)")
    (tmp_path / "x.wasm").write_bytes(b"\0asm")
    return tmp_path


def test_serves_app_config_assets_and_routes(dist, upstream):
    with ViewerServer(dist, upstream, 0) as viewer:
        config = requests.get(viewer.url + "/app-config.js", timeout=5)
        assert config.status_code == 200 and "javascript" in config.headers["Content-Type"]
        assert '"qidoRoot": "/dicom-web"' in config.text and '"option": "never"' in config.text
        assert "shownTours" in config.text
        js = requests.get(viewer.url + "/app.bundle.js", timeout=5)
        assert js.text == "console.log(1)" and js.headers["Content-Type"].startswith("text/javascript")
        assert requests.get(viewer.url + "/x.wasm", timeout=5).headers["Content-Type"] == "application/wasm"
        page = requests.get(viewer.url_for_study("1.2.3"), timeout=5)
        assert page.text == "<html>ohif</html>"
        assert viewer.url_for_study("1.2.3").endswith("/viewer?StudyInstanceUIDs=1.2.3")
        assert requests.get(viewer.url + "/missing.js", timeout=5).status_code == 404
        assert requests.get(viewer.url + "/%2e%2e/%2e%2e/etc/passwd.txt", timeout=5).status_code == 404


def test_proxies_dicomweb_with_auth(dist, upstream):
    with ViewerServer(dist, upstream, 0, auth=("user", "secret")) as viewer:
        reply = requests.get(
            viewer.url + "/dicom-web/studies?PatientID=1", headers={"Accept": "application/dicom+json"}, timeout=5
        )
        assert reply.status_code == 200
        echoed = reply.json()
        assert echoed["path"] == "/dicom-web/studies?PatientID=1"
        assert echoed["auth"] == "Basic " + base64.b64encode(b"user:secret").decode()
        assert echoed["accept"] == "application/dicom+json"


def test_unreachable_upstream_is_502(dist):
    with ViewerServer(dist, "http://127.0.0.1:9/dicom-web", 0) as viewer:
        assert requests.get(viewer.url + "/dicom-web/studies", timeout=10).status_code == 502


def test_validates_arguments(tmp_path, dist):
    with pytest.raises(ValueError, match="dist_dir"):
        ViewerServer(tmp_path / "nothing", "http://127.0.0.1:1/dicom-web", 0)
    with pytest.raises(ValueError, match="orthanc_dicomweb_url"):
        ViewerServer(dist, "ftp://host/dicom-web", 0)
    with pytest.raises(ValueError, match="port"):
        ViewerServer(dist, "http://127.0.0.1:1/dicom-web", 70000)


def test_app_config_can_keep_overlays():
    assert "shownTours" not in app_config_js(hide_first_run_overlays=False)


def test_app_config_appends_extra_script(dist, upstream):
    with ViewerServer(dist, upstream, 0, extra_script="window.ainodeTest = 1;") as viewer:
        text = requests.get(viewer.url + "/app-config.js", timeout=5).text
    assert text.rstrip().endswith("window.ainodeTest = 1;")
