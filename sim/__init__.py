"""Real stand-ins for the world around orio-agent, for tests and the demo.

- :mod:`sim.plant`: Modbus units served over TCP or RTU by pymodbus.
- :mod:`sim.broker`: a mosquitto process with the platform's users and ACLs.
- :mod:`sim.cloud`: the application side of the platform, an MQTT client.
- :mod:`sim.pty`: a serial line as a pair of pseudo-terminals joined by socat.
- :mod:`sim.paas`: the platform's REST API, as its document gives it.
- :mod:`sim.rabbitmq`, :mod:`sim.rogue`, :mod:`sim.gps`, :mod:`sim.lazyfs`: a second
  broker, misbehaving Modbus devices, a GPS receiver, a file system that loses unsynced
  writes.

Nothing here is a mock: every part speaks the real protocol over a real
socket or tty, on loopback only.
"""
