"""Modbus devices (TCP and RTU): points, read plans, decoding, the poller and the
pymodbus adapter.
"""
