"""PACS AI node: lesion detection, measurement and tracking for CT studies arriving at Orthanc."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
