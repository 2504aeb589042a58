"""Orthanc Python plugin entry: make the node importable, then register its callbacks.

Orthanc loads this file (configuration key PythonScript). Everything it does lives in
node.orthanc_plugin; this file only prepares sys.path from the AINode configuration section.
"""

import json
import sys

import orthanc

_config = json.loads(orthanc.GetConfiguration()).get("AINode", {})
for _path in reversed(_config.get("SitePackages", [])):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from node.orthanc_plugin import register  # noqa: E402

register(orthanc, _config)
