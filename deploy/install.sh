#!/usr/bin/env bash
# Installs what the node needs on Debian 12, as root, and nothing that is already there.
#   deploy/install.sh            Debian packages + .venv with the node (and test tools)
#   AINODE_EXTRAS=test,train deploy/install.sh   also torch (CPU) for `ainode train`
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(orthanc orthanc-python orthanc-dicomweb dcmtk dicom3tools python3-venv)
EXTRAS="${AINODE_EXTRAS:-test}"
PYTHON="${AINODE_PYTHON:-python3}"

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

stamp=.venv/.ainode-installed
want="$(sha256sum pyproject.toml | cut -c1-16) extras=$EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
echo "install: pip install -e .[$EXTRAS] (first run takes a few minutes)"
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q --disable-pip-version-check -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import node, pydicom, pynetdicom, psycopg, pgserver, highdicom, tritonclient.grpc, onnxruntime" \
  || { echo "install: the virtual environment is incomplete; see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
