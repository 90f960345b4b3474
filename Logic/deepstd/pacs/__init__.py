"""DeepSTD in the hospital's DICOM world: compress series on a PACS into DeepSTD objects and back.

`archive` and `restore` talk DICOMweb (QIDO-RS, WADO-RS, STOW-RS) to any server that speaks it, and
Orthanc's REST API for the one thing DICOMweb lacks (deleting the originals). See docs/PACS.md.
"""

from .client import PacsError, SeriesGone, Server, ServerUnreachable
from .jobs import archive, normalize_query, parse_bundles, parse_query, restore

__all__ = [
    "archive",
    "restore",
    "parse_query",
    "parse_bundles",
    "normalize_query",
    "Server",
    "PacsError",
    "ServerUnreachable",
    "SeriesGone",
]
