"""Byte sizes written the human way: ``parse_size("4GiB") == 4 << 30``.

Every suffix is binary, as in most storage tools: ``K``, ``KB`` and ``KiB``
all mean 1024 (likewise M, G, T, P), case-insensitive. Plain ints and digit
strings are bytes. Fractions need a suffix (``1.5GiB``) and round down to
whole bytes.
"""

from __future__ import annotations

import re

from kvstore.errors import InvalidArgument

_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(value) -> int:
    """Bytes in ``value``: an int, or a string like ``"512"``, ``"64MiB"``, ``"1.5 GB"``."""
    if isinstance(value, bool):
        raise InvalidArgument(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(f"size must not be negative, got {value}")
        return value
    if isinstance(value, float):
        if value < 0 or value != value:
            raise InvalidArgument(f"not a size: {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"not a size: {value!r}")
    match = _PATTERN.match(value)
    if match is None:
        raise InvalidArgument(f"not a size: {value!r} (try 512, 64MiB, 4GiB)")
    number, unit, _ = match.groups()
    scale = 1 << (10 * _UNITS[unit.lower()])
    if "." in number:
        if not unit:
            raise InvalidArgument(f"a fraction of a byte: {value!r}")
        return int(float(number) * scale)
    return int(number) * scale


def format_size(nbytes: int) -> str:
    """The shortest exact binary spelling of ``nbytes`` (``4GiB``), else one decimal."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            if nbytes % (1 << shift) == 0:
                return f"{nbytes >> shift}{unit}"
            return f"{nbytes / (1 << shift):.1f}{unit}"
    return f"{nbytes}B"
