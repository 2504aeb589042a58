#!/usr/bin/env bash
# Installs what the node needs on Debian 12, as root, and nothing that is already there.
#   deploy/install.sh            Debian packages + .venv with the node (and test tools)
#   AINODE_EXTRAS=test,train deploy/install.sh   also torch (CPU) for `ainode train`
#   deploy/install.sh install-viewer   only OHIF (npm package @ohif/app, its built dist/) into .venv/ohif
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(orthanc orthanc-python orthanc-dicomweb dcmtk dicom3tools python3-venv chromium)
EXTRAS="${AINODE_EXTRAS:-test}"
PYTHON="${AINODE_PYTHON:-python3}"
OHIF_VERSION="${AINODE_OHIF_VERSION:-3.13.2}"
OHIF_DIR=.venv/ohif

# OHIF v3 as the npm registry ships it: the tarball holds a built dist/, so nothing is built here.
install_viewer() {
  if [ -f "$OHIF_DIR/package/dist/index.html" ] && [ "$(cat "$OHIF_DIR/version" 2>/dev/null)" = "$OHIF_VERSION" ]; then
    return 0
  fi
  if ! command -v npm >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "install: npm is missing (apt-get install npm) for the OHIF viewer" >&2; return 1; }
    echo "install: apt-get install npm (to fetch the OHIF viewer)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  echo "install: OHIF @ohif/app@$OHIF_VERSION into $OHIF_DIR"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
  rm -rf "$OHIF_DIR" && mkdir -p "$OHIF_DIR"
  tar -xzf "$tmp"/ohif-app-*.tgz -C "$OHIF_DIR"
  rm -rf "$tmp"
  echo "$OHIF_VERSION" > "$OHIF_DIR/version"
}
if [ "${1:-}" = "install-viewer" ]; then
  install_viewer
  exit $?
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install: Debian packages missing (${missing[*]}); run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "install: apt-get install ${missing[*]}"
  apt-get update -qq
  # The orthanc package tries to start its system service; policy-rc.d may refuse. The node
  # never uses that service: it starts Orthanc itself with its own configuration.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The stamp holds the pyproject hash and the extras installed with it; a request for extras
# already installed (e.g. `make demo` after `make test`) installs nothing.
stamp=.venv/.ainode-installed
hash="$(sha256sum pyproject.toml | cut -c1-16)"
have_hash="$(cut -d' ' -f1 "$stamp" 2>/dev/null || true)"
have_extras="$(cut -s -d' ' -f2 "$stamp" 2>/dev/null | sed 's/^extras=//' || true)"
if [ "$have_hash" = "$hash" ]; then
  missing_extra=0
  for e in ${EXTRAS//,/ }; do
    case ",$have_extras," in *",$e,"*) ;; *) missing_extra=1 ;; esac
  done
  if [ $missing_extra = 0 ]; then
    [ "${AINODE_VIEWER:-1}" = 0 ] || install_viewer || echo "install: OHIF viewer not installed (see above)" >&2
    exit 0
  fi
  EXTRAS="$(printf '%s\n' ${have_extras//,/ } ${EXTRAS//,/ } | sort -u | paste -sd, -)"
fi
if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
echo "install: pip install -e .[$EXTRAS] (first run takes a few minutes)"
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/pip install -q --disable-pip-version-check -e ".[$EXTRAS]" > .venv/pip-install.log 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" .venv/pip-install.log | tail -n 30 >&2
  echo "install: pip install failed (full log: .venv/pip-install.log)" >&2
  exit 1
fi
PYTHONWARNINGS=ignore .venv/bin/python -c "import node, pydicom, pynetdicom, psycopg, pgserver, highdicom, tritonclient.grpc, onnxruntime" \
  || { echo "install: the virtual environment is incomplete; see the pip output above" >&2; exit 1; }
echo "$hash $EXTRAS" > "$stamp"
[ "${AINODE_VIEWER:-1}" = 0 ] || install_viewer || echo "install: OHIF viewer not installed (see above)" >&2
