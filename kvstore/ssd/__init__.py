"""kvstore.ssd: the log-structured SSD tier (segments of checksummed records).

Public surface: ``SSDTier`` (write, read, delete, flush, recover) and the
filesystem seam ``SSDFileSystem`` with its fault-injecting twin
``FaultyFileSystem``. The on-disk format is documented in ``record.py``.
"""

from kvstore.ssd.fs import FaultyFileSystem, SSDFileSystem
from kvstore.ssd.tier import SSDTier

__all__ = ["FaultyFileSystem", "SSDFileSystem", "SSDTier"]
