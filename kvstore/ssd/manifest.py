"""The SSD tier's namespace manifest: which namespaces its records belong to.

A restarted store reads it to re-register its namespaces (``NamespaceSpec``
dicts) before it rebuilds the radix trees from the records. One small JSON
file, ``namespaces.json``::

    {"format": 1, "checksum": "<xxh3_64 hex of the canonical namespaces JSON>",
     "namespaces": {"<fingerprint hex>": {...NamespaceSpec.to_dict()...}}}

written atomically: a temporary file is written and fsynced, renamed over the
old one, and the directory is fsynced; a crash leaves the old or the new
manifest, never a mix. A manifest that fails its checksum is reported (logged)
and read as empty.
"""

from __future__ import annotations

import json
import logging
import os

import xxhash

from kvstore.errors import InvalidArgument
from kvstore.ssd.fs import SSDFileSystem

MANIFEST_NAME = "namespaces.json"
MANIFEST_TMP = MANIFEST_NAME + ".tmp"
MANIFEST_FORMAT = 1

log = logging.getLogger("kvstore.ssd")


def _canonical(namespaces: dict) -> bytes:
    return json.dumps(namespaces, sort_keys=True, separators=(",", ":")).encode()


def encode_manifest(specs: dict[bytes, dict]) -> bytes:
    namespaces = {}
    for fp, spec in specs.items():
        if not isinstance(fp, (bytes, bytearray)) or len(fp) != 16:
            raise InvalidArgument("manifest keys must be 16-byte fingerprints")
        namespaces[bytes(fp).hex()] = spec
    doc = {
        "format": MANIFEST_FORMAT,
        "checksum": xxhash.xxh3_64_hexdigest(_canonical(namespaces)),
        "namespaces": namespaces,
    }
    return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"


def decode_manifest(data: bytes, where: str = MANIFEST_NAME) -> dict[bytes, dict]:
    try:
        doc = json.loads(data)
        namespaces = doc["namespaces"]
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {doc.get('format')!r}")
        if doc.get("checksum") != xxhash.xxh3_64_hexdigest(_canonical(namespaces)):
            raise ValueError("checksum mismatch")
        return {bytes.fromhex(fp): spec for fp, spec in namespaces.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.error("ssd: manifest %s unreadable (%s); no namespaces loaded", where, e)
        return {}


def write_manifest(fs: SSDFileSystem, directory: str, data: bytes) -> None:
    """Atomically replace the manifest with ``data`` (tmp + fsync + rename + dir fsync)."""
    tmp = os.path.join(directory, MANIFEST_TMP)
    fd = fs.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        fs.pwritev_all(fd, [data], 0)
        fs.fsync(fd)
    except BaseException:
        fs.close(fd)
        try:
            fs.unlink(tmp)
        except OSError:
            pass
        raise
    fs.close(fd)
    fs.rename(tmp, os.path.join(directory, MANIFEST_NAME))
    fs.fsync_dir(directory)


def read_manifest(fs: SSDFileSystem, directory: str) -> bytes | None:
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        fd = fs.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = fs.size(fd)
        return fs.pread(fd, size, 0)
    finally:
        fs.close(fd)
