"""Real stand-ins for the world around orio-agent, for tests and the demo.

- :mod:`sim.plant`: Modbus units served over TCP or RTU by pymodbus.
- :mod:`sim.broker`: a mosquitto process with the platform's users and ACLs.
- :mod:`sim.cloud`: the application side of the platform, an MQTT client.
- :mod:`sim.pty`: a serial line as a pair of pseudo-terminals joined by socat.

Nothing here is a mock: every part speaks the real protocol over a real
socket or tty, on loopback only.
"""
