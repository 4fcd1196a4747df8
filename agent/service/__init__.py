"""The agent around it all: wiring, lifecycle, systemd, health, logs and the command line."""
