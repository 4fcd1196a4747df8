"""Plain serial instruments: line framing, NMEA, the instrument and the pyserial adapter."""
