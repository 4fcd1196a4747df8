"""orio-agent: field devices → timestamped readings → the ORing PaaS MQTT broker."""

__version__ = "0.1.0"
