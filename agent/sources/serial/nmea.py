"""NMEA 0183 sentences from a GPS receiver → position fields. Pure functions.

GGA gives position, altitude, fix quality and satellites; RMC gives position, speed,
course and the date. A sentence whose checksum does not match is refused. Without a fix
(GGA fix quality 0, RMC status V) only `fix_quality` and `satellites` are given: no
position, altitude, speed or course is made up.

Field units: `coordinate` [lat, lng] in decimal degrees (south and west negative, 7
decimals, about 1 cm); `altitude` metres above mean sea level; `speed` km/h; `course`
degrees true; `satellites` in use; `fix_quality` as GGA defines it (0 none, 1 GPS,
2 DGPS, 4 RTK fixed, 5 RTK float, ...).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

KNOTS_TO_KMH = 1.852
COORDINATE_DECIMALS = 7


class NmeaError(ValueError):
    """Not a sentence we can use: bad checksum, bad field, truncated."""


class NmeaChecksumError(NmeaError):
    """The sentence's checksum is missing or does not match: garbled on the line."""


@dataclass(slots=True)
class Fix:
    """What one sentence says. `utc_ms` is the GPS's own time, when known in full."""

    kind: str  # "GGA" | "RMC"
    values: dict[str, float | int | list[float]] = field(default_factory=dict)
    utc_ms: int | None = None
    time_of_day_ms: int | None = None  # GGA carries no date


def checksum_ok(sentence: str) -> bool:
    body, star, given = sentence.partition("*")
    if not star or not body.startswith(("$", "!")) or len(given) < 2:
        return False
    computed = 0
    for char in body[1:]:
        computed ^= ord(char)
    try:
        return computed == int(given[:2], 16)
    except ValueError:
        return False


def parse(sentence: str) -> Fix | None:
    """The fields of a GGA or RMC sentence; None for other sentence types."""
    sentence = sentence.strip()
    if not sentence.startswith("$"):
        raise NmeaError("not an NMEA sentence")
    if not checksum_ok(sentence):
        raise NmeaChecksumError("checksum mismatch")
    parts = sentence[1:].partition("*")[0].split(",")
    kind = parts[0][-3:]
    try:
        if kind == "GGA":
            return _gga(parts)
        if kind == "RMC":
            return _rmc(parts)
    except (IndexError, ValueError) as exc:
        raise NmeaError(f"malformed {kind}: {exc}") from None
    return None


def _gga(parts: list[str]) -> Fix:
    fix = Fix("GGA", time_of_day_ms=_time_of_day(parts[1]))
    quality = int(parts[6] or 0)
    fix.values["fix_quality"] = quality
    fix.values["satellites"] = int(parts[7] or 0)
    if quality > 0:
        fix.values["coordinate"] = _coordinate(parts[2], parts[3], parts[4], parts[5])
        if parts[9]:
            fix.values["altitude"] = float(parts[9])
    return fix


def _rmc(parts: list[str]) -> Fix:
    fix = Fix("RMC", time_of_day_ms=_time_of_day(parts[1]))
    if parts[9] and fix.time_of_day_ms is not None:
        day = dt.datetime.strptime(parts[9], "%d%m%y").replace(tzinfo=dt.UTC)
        fix.utc_ms = int(day.timestamp() * 1000) + fix.time_of_day_ms
    if parts[2] != "A":
        return fix
    fix.values["coordinate"] = _coordinate(parts[3], parts[4], parts[5], parts[6])
    if parts[7]:
        fix.values["speed"] = round(float(parts[7]) * KNOTS_TO_KMH, 3)
    if parts[8]:
        fix.values["course"] = float(parts[8])
    return fix


def _coordinate(lat: str, ns: str, lon: str, ew: str) -> list[float]:
    latitude = _degrees(lat, 2) * (-1 if ns == "S" else 1)
    longitude = _degrees(lon, 3) * (-1 if ew == "W" else 1)
    if ns not in ("N", "S") or ew not in ("E", "W"):
        raise ValueError("hemisphere missing")
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ValueError("coordinate out of range")
    return [round(latitude, COORDINATE_DECIMALS), round(longitude, COORDINATE_DECIMALS)]


def _degrees(text: str, degree_digits: int) -> float:
    """ "4807.038" (ddmm.mmm) → 48.1173."""
    if len(text) < degree_digits + 2:
        raise ValueError(f"bad coordinate {text!r}")
    return int(text[:degree_digits]) + float(text[degree_digits:]) / 60


def _time_of_day(text: str) -> int | None:
    """ "123519.50" (hhmmss.ss) → milliseconds since midnight UTC."""
    if len(text) < 6:
        return None
    hours, minutes = int(text[0:2]), int(text[2:4])
    seconds = float(text[4:])
    return round(((hours * 60 + minutes) * 60 + seconds) * 1000)
