"""OHIF v3 served by the node at the root of its own port, with /dicom-web proxied to Orthanc.

OHIF's ``index.html`` loads ``/app-config.js`` and its bundles by absolute path, so it needs an
origin of its own; Orthanc sends no CORS headers, so its DICOMweb root is proxied under the same
origin. The installed build comes from the npm package ``@ohif/app`` (``deploy/install.sh
install-viewer`` puts its ``dist/`` under ``.venv/ohif/package/dist``).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import mimetypes
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from node.config import REPO_ROOT

logger = logging.getLogger(__name__)

DEFAULT_DIST_DIR = REPO_ROOT / ".venv" / "ohif" / "package" / "dist"
DICOMWEB_PREFIX = "/dicom-web"
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
          ".css": "text/css", ".json": "application/json", ".jsonc": "application/json",
          ".svg": "image/svg+xml", ".html": "text/html", ".map": "application/json",
          ".woff2": "font/woff2", ".ico": "image/x-icon", ".png": "image/png"}


def app_config_js(*, dicomweb_root: str = DICOMWEB_PREFIX, friendly_name: str = "ainode Orthanc",
                  hide_first_run_overlays: bool = True, extra_script: str = "") -> str:
    """The ``app-config.js`` that points OHIF's one data source at the proxied DICOMweb root."""
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never" if hide_first_run_overlays else "always"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomweb",
                "configuration": {
                    "friendlyName": friendly_name,
                    "name": "orthanc",
                    "wadoUriRoot": dicomweb_root,
                    "qidoRoot": dicomweb_root,
                    "wadoRoot": dicomweb_root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "dicomUploadEnabled": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    lines = ["/* Written by ainode (node/stack/viewer.py). */", f"window.config = {json.dumps(config, indent=2)};"]
    if hide_first_run_overlays:
        # The onboarding tour remembers in localStorage which tours were shown.
        lines.append("try { localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour'])); } catch (e) {}")
    if extra_script:
        lines.append(extra_script)
    return "\n".join(lines) + "\n"


class ViewerServer:
    """A small threaded HTTP server: OHIF's ``dist/`` at ``/``, ``/dicom-web/*`` proxied to Orthanc.

    Parameters
    ----------
    dist_dir:
        OHIF's built ``dist/`` folder (holding ``index.html``).
    orthanc_dicomweb_url:
        Orthanc's DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
    port:
        Port to listen on (0 picks a free one); the server binds 127.0.0.1 unless ``host`` says otherwise.
    auth:
        ``(username, password)`` sent to Orthanc with every proxied request.
    extra_script:
        JavaScript appended to ``app-config.js`` (browser tests use it to open panels).
    """

    def __init__(
        self,
        dist_dir: Path | str,
        orthanc_dicomweb_url: str,
        port: int,
        auth: tuple[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        hide_first_run_overlays: bool = True,
        extra_script: str = "",
    ) -> None:
        self.dist_dir = Path(dist_dir).resolve()
        if not (self.dist_dir / "index.html").is_file():
            raise ValueError(
                f"dist_dir: {self.dist_dir} holds no OHIF index.html; run `deploy/install.sh install-viewer`"
            )
        target = urllib.parse.urlsplit(orthanc_dicomweb_url.rstrip("/"))
        if target.scheme not in ("http", "https") or not target.hostname:
            raise ValueError(f"orthanc_dicomweb_url: {orthanc_dicomweb_url!r} is not an http(s) URL")
        if not 0 <= int(port) < 65536:
            raise ValueError(f"port: {port} is not a TCP port")
        self._target = target
        self._auth_header = (
            "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        )
        self._config = app_config_js(
            hide_first_run_overlays=hide_first_run_overlays, extra_script=extra_script
        ).encode()
        self._host = host
        self._requested_port = int(port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("viewer server is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def url_for_study(self, study_uid: str) -> str:
        """The OHIF viewer URL that opens one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={urllib.parse.quote(study_uid)}"

    def start(self) -> None:
        """Listen and serve in a daemon thread."""
        if self._server is not None:
            return
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer((self._host, self._requested_port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ainode-viewer", daemon=True)
        self._thread.start()
        logger.info("viewer: OHIF on %s, DICOMweb proxied to %s", self.url, self._target.geturl())

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> ViewerServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling, called from the handler threads --------------------------------

    def _static(self, request_path: str) -> tuple[int, str, bytes]:
        path = urllib.parse.unquote(urllib.parse.urlsplit(request_path).path)
        if path == "/app-config.js":
            return 200, "text/javascript", self._config
        candidate = (self.dist_dir / path.lstrip("/")).resolve()
        if self.dist_dir not in candidate.parents and candidate != self.dist_dir:
            return 404, "text/plain", b"not found\n"
        if candidate.is_file():
            kind = _TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
            return 200, kind, candidate.read_bytes()
        if "." in Path(path).name:
            return 404, "text/plain", b"not found\n"
        # Client-side routes (/viewer, /segmentation, ...) are OHIF's: serve the app.
        return 200, "text/html", (self.dist_dir / "index.html").read_bytes()

    def _proxy(self, handler: BaseHTTPRequestHandler) -> None:
        rest = handler.path[len(DICOMWEB_PREFIX):]
        upstream_path = self._target.path + rest
        conn_class = http.client.HTTPSConnection if self._target.scheme == "https" else http.client.HTTPConnection
        conn = conn_class(self._target.hostname, self._target.port, timeout=120)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Accept-Encoding", None)
        if self._auth_header:
            headers["Authorization"] = self._auth_header
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        try:
            conn.request(handler.command, upstream_path, body=body, headers=headers)
            response = conn.getresponse()
            handler.send_response(response.status, response.reason)
            payload = response.read()
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
        except OSError as exc:
            logger.warning("viewer: DICOMweb proxy to %s failed: %s", self._target.netloc, exc)
            handler.send_error(502, "Orthanc DICOMweb is not reachable")
        finally:
            conn.close()


def _make_handler(server: ViewerServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _dispatch(self) -> None:
            try:
                if self.path == DICOMWEB_PREFIX or self.path.startswith(DICOMWEB_PREFIX + "/"):
                    server._proxy(self)
                    return
                if self.command not in ("GET", "HEAD"):
                    self.send_error(405)
                    return
                status, kind, body = server._static(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            logger.debug("viewer: " + format, *args)

    return Handler
