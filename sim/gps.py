"""A simulated GPS receiver: GGA and RMC sentences at 10 Hz on a serial device.

``python -m sim.gps DEVICE`` writes to DEVICE (one end of a socat pty pair) until
SIGINT/SIGTERM, driving slowly around a point near the ORing office in Taipei.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import signal
import threading
from collections.abc import Sequence

CENTRE = (25.0478, 121.5319)  # lat, lng
RADIUS_DEG = 0.0005
PERIOD_S = 120.0
RATE_HZ = 10.0


def sentence(body: str) -> str:
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    return f"${body}*{checksum:02X}\r\n"


def _ddmm(value: float, degree_digits: int) -> str:
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees:0{degree_digits}d}{minutes:07.4f}"


def sentences(now: dt.datetime, elapsed: float) -> str:
    angle = 2 * math.pi * elapsed / PERIOD_S
    lat = CENTRE[0] + RADIUS_DEG * math.sin(angle)
    lng = CENTRE[1] + RADIUS_DEG * math.cos(angle)
    hms = now.strftime("%H%M%S.") + f"{now.microsecond // 10000:02d}"
    lat_s, lng_s = _ddmm(lat, 2), _ddmm(lng, 3)
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lng >= 0 else "W")
    gga = f"GPGGA,{hms},{lat_s},{ns},{lng_s},{ew},1,09,0.9,12.0,M,15.0,M,,"
    rmc = f"GPRMC,{hms},A,{lat_s},{ns},{lng_s},{ew},1.5,{math.degrees(angle) % 360:05.1f},"
    rmc += now.strftime("%d%m%y") + ",,"
    return sentence(gga) + sentence(rmc)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.gps", description=__doc__)
    parser.add_argument("device")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    fd = os.open(args.device, os.O_WRONLY | os.O_NOCTTY)
    print(f"gps: NMEA at {RATE_HZ:g} Hz on {args.device}", flush=True)
    started = dt.datetime.now(dt.UTC)
    try:
        while not stopping.wait(1 / RATE_HZ):
            now = dt.datetime.now(dt.UTC)
            os.write(fd, sentences(now, (now - started).total_seconds()).encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
