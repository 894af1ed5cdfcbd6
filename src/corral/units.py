"""Human quantities in documents and on the command line: sizes and durations.

Both are finite and bounded (limits.py): whatever the text, parsing one takes time in
proportion to a short text and gives a value every consumer (timedelta, the store) holds.
"""

from __future__ import annotations

import math
import re
import reprlib
from datetime import timedelta

from corral.limits import MAX_DURATION_SECONDS, MAX_MEMORY_MIB, MAX_NUMBER_CHARS

_SIZE_UNITS_MIB = {
    "": 1 / (1024 * 1024),  # a bare number is bytes
    "b": 1 / (1024 * 1024),
    "k": 1 / 1024,
    "kb": 1000 / (1024 * 1024),
    "kib": 1 / 1024,
    "m": 1,
    "mb": 1000 * 1000 / (1024 * 1024),
    "mib": 1,
    "g": 1024,
    "gb": 1000**3 / (1024 * 1024),
    "gib": 1024,
    "t": 1024 * 1024,
    "tb": 1000**4 / (1024 * 1024),
    "tib": 1024 * 1024,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_size_mib(text: str | int) -> int:
    """Parse a memory size (`1GiB`, `512MiB`, `2G`) into whole MiB.

    Raises ValueError naming the text when it is not a size or rounds to zero.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        mib = text / (1024 * 1024) if text.bit_length() < 128 else math.inf  # bytes
    else:
        match = _SIZE.fullmatch(text) if len(text) <= MAX_NUMBER_CHARS else None
        if not match or match.group(2).lower() not in _SIZE_UNITS_MIB:
            raise ValueError(
                f"not a size: {shown(text)} (use a number with a unit, like 512MiB or 1GiB)"
            )
        mib = float(match.group(1)) * _SIZE_UNITS_MIB[match.group(2).lower()]
    if mib < 1:
        raise ValueError(f"size too small: {shown(text)} (at least 1MiB)")
    if mib > MAX_MEMORY_MIB:
        raise ValueError(
            f"size too large: {shown(text)} (at most {format_size_mib(MAX_MEMORY_MIB)})"
        )
    return int(mib)


def parse_duration(text: str | int | float) -> timedelta:
    """Parse a duration (`12h`, `30m`, `1h30m`, `90s`, `2d`; a bare number is seconds).

    Raises ValueError naming the text when it is not a positive duration.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int):
        seconds = float(text) if text.bit_length() < 128 else (math.inf if text > 0 else -math.inf)
    elif isinstance(text, float):
        seconds = text
    else:
        compact = text.strip().lower().replace(" ", "")
        if len(compact) > MAX_NUMBER_CHARS:
            seconds = math.nan  # refused below, without reading a long text
        elif re.fullmatch(r"\d+(\.\d+)?", compact):
            seconds = float(compact)
        elif compact and _DURATION_PART.sub("", compact) == "":
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(compact))
        else:
            seconds = math.nan
        if math.isnan(seconds):
            raise ValueError(f"not a duration: {shown(text)} (use forms like 90s, 30m, 12h, 2d)")
    if math.isnan(seconds):
        raise ValueError(f"not a duration: {shown(text)}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {shown(text)}")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(
            f"duration too long: {shown(text)} "
            f"(at most {format_duration(timedelta(seconds=MAX_DURATION_SECONDS))})"
        )
    return timedelta(seconds=seconds)


def shown(value: object) -> str:
    """`value` as repr, cut short: for messages about outside input, whatever its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"a {value.bit_length()}-bit number"  # repr of a huge int is slow, or refused
    return _SHORT.repr(value)


def format_duration(delta: timedelta) -> str:
    """Render a duration compactly (`1h30m`, `45s`), the inverse of parse_duration."""
    seconds = int(round(delta.total_seconds()))
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


def format_size_mib(mib: int) -> str:
    """Render MiB as the largest exact binary unit (`1GiB`, `1536MiB`)."""
    if mib % (1024 * 1024) == 0:
        return f"{mib // (1024 * 1024)}TiB"
    if mib % 1024 == 0:
        return f"{mib // 1024}GiB"
    return f"{mib}MiB"


def describe_size_mib(mib: int) -> str:
    """Memory for people, rounded: `512MiB`, `23.5GiB`."""
    if mib < 1024:
        return f"{mib}MiB"
    return f"{mib / 1024:.1f}".rstrip("0").rstrip(".") + "GiB"


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
