"""A real RabbitMQ node with its MQTT plugin, configured like :mod:`sim.broker`'s mosquitto.

Why a second broker: RabbitMQ's MQTT plugin sends a retained message to no subscription
whose topic filter holds a wildcard (its MQTT guide lists retained messages among its
limitations; rabbitmq-server issues #2556 and #8824), where mosquitto sends it to every
matching subscription.
Retained configuration that the cloud set while a thing was away reaches the thing there
only through a subscription to the group's exact topic.

The same users and topic rules as :class:`sim.broker.Broker`: the document's thing and
application (and ``extra_things``), each with its password, and topic permissions on the
``amq.topic`` exchange, where the plugin routes MQTT (``/`` becomes ``.``): a thing writes
its own ``$data`` and ``$conf/$reported`` topics and reads its own ``$conf/$expected``;
the application reads ``$thing/#`` and writes expected config. They come from a
definitions file the node loads at boot; no CLI tool is run (each would start an Erlang
VM of its own).

Everything lives in ``directory``: the config, the Erlang cookie (``HOME``), the node's
database (retained messages survive :meth:`RabbitMqBroker.restart`), its log. The node
gets loopback ports of its own (MQTT, AMQP, Erlang distribution) and its own ``epmd``, so
it neither meets Debian's ``rabbitmq-server`` service nor outlives the test run. Start-up
takes several seconds (8 to 10 on two idle cores): the tests start one per session.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sim.broker import (
    STOP_TIMEOUT,
    Broker,
    BrokerError,
    free_port,
)

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian's, run as is
START_TIMEOUT = 90.0  # an Erlang VM booting on a loaded two-core machine
_POLL_INTERVAL = 0.05
_STARTED = "Server startup complete"  # logged once every plugin, MQTT's too, has started
_FORBIDDEN_IN_ID = frozenset(".*")  # AMQP's level separator and wildcard
_SALT_BYTES = 4  # rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))


def find_rabbitmq() -> tuple[str, str]:
    """The rabbitmq-server script and epmd, or raise: tests needing them fail, never skip."""
    epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    plugins = RABBITMQ_SERVER.parent.parent.glob("lib/rabbitmq_server-*/plugins/rabbitmq_mqtt-*")
    if not RABBITMQ_SERVER.exists() or not Path(epmd).exists() or next(plugins, None) is None:
        raise RuntimeError(
            "RabbitMQ is not installed; the tests against a second broker need it "
            "(scripts/setup.sh, or apt install rabbitmq-server)"
        )
    return str(RABBITMQ_SERVER), epmd


def password_hash(password: str) -> str:
    """A definitions file's ``password_hash`` for ``rabbit_password_hashing_sha256``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class RabbitMqBroker(Broker):
    """One RabbitMQ node (MQTT plugin) in ``directory``; a :class:`Broker` to the tests.

    ``port=None`` picks a free port once; :meth:`restart` keeps it. No TLS listener and
    no ``persistence`` switch: the node keeps retained messages on disk either way.
    """

    def __init__(
        self, directory: Path | str, *, reads: Mapping[str, str] | None = None, **options: Any
    ) -> None:
        """:class:`Broker`'s options (``port``, ``host``, the identities), but ``tls``.

        ``reads``: a thing's own read permission (a regex over RabbitMQ's dotted routing
        keys), for a thing the broker must refuse some subscriptions to.
        """
        if "tls" in options or "tls_port" in options:
            raise TypeError("sim.rabbitmq has no TLS listener")
        super().__init__(directory, **{**options, "persistence": True})
        self._reads = dict(reads or {})
        for identity in [*self.things, self.app_id]:
            if _FORBIDDEN_IN_ID & set(identity):
                raise ValueError(f"identity {identity!r} cannot be used in a RabbitMQ topic")
        self.config_path = self.directory / "rabbitmq.conf"
        self.definitions_path = self.directory / "definitions.json"
        self.log_path = self.directory / "rabbitmq.log"
        self.console_path = self.directory / "console.log"  # what the VM says before logging
        self.node = f"orio-{self.port}@localhost"
        self._amqp_port = self._free_port_besides(self.port)  # unused, but the node opens it
        self._epmd: subprocess.Popen[bytes] | None = None

    def log_text(self) -> str:
        texts = []
        for path in (self.console_path, self.log_path):
            try:
                texts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                continue
        return "\n".join(texts)

    # -- lifecycle ---------------------------------------------------------------

    def start(self, *, timeout: float = START_TIMEOUT) -> RabbitMqBroker:
        """Start the node and return once it has started: MQTT listens, the users exist."""
        if self.running:
            raise BrokerError("broker already running")
        server, epmd = find_rabbitmq()
        self._write_node_files()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        epmd_port = free_port(self.host)
        # Its own session, as mosquitto's: a Ctrl-C meant for pytest does not reach it.
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(epmd_port), "-address", self.host],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        with self.console_path.open("ab") as console:
            self._process = subprocess.Popen(
                [server],
                env=self._environment(epmd_port),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_started(timeout, log_offset=log_offset)
        except BaseException:
            self.kill()  # the VM too, and epmd
            raise
        return self

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait: the node shuts down cleanly (retained messages are kept)."""
        group = self.pid
        super().stop(timeout=timeout)
        self._end_leftovers(group)

    def kill(self) -> None:
        """SIGKILL to the script and the Erlang VM under it."""
        group = self.pid
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        super().kill()
        self._end_leftovers(group)

    # -- files ---------------------------------------------------------------------

    def _write_node_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.definitions_path.write_text(json.dumps(self._definitions(), indent=2) + "\n")
        self.definitions_path.chmod(0o600)
        (self.directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        lines = [
            "# Generated by sim.rabbitmq.",
            f"listeners.tcp.default = {self.host}:{self._amqp_port}",
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}",
            "mqtt.allow_anonymous = false",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            f"load_definitions = {self.definitions_path}",
            "log.console = false",
            f"log.file = {self.log_path}",
            "log.file.level = info",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _definitions(self) -> dict[str, Any]:
        users = [*self.things.items(), (self.app_id, self.app_secret)]
        return {
            "vhosts": [{"name": "/"}],
            "users": [
                {
                    "name": name,
                    "password_hash": password_hash(password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": [],
                }
                for name, password in users
            ],
            # The plugin's own queues and bindings; what a client may publish and
            # subscribe to is in the topic permissions.
            "permissions": [
                {"user": name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                for name, _ in users
            ],
            "topic_permissions": [
                *(self._thing_permissions(thing) for thing in self.things),
                {
                    "user": self.app_id,
                    "vhost": "/",
                    "exchange": "amq.topic",
                    "write": r"^\$thing\.[^.]+\.\$conf\.\$expected\.",
                    "read": r"^\$thing\.",
                },
            ],
        }

    def _thing_permissions(self, thing: str) -> dict[str, str]:
        own = rf"^\$thing\.{re.escape(thing)}\."
        return {
            "user": thing,
            "vhost": "/",
            "exchange": "amq.topic",
            "write": own + r"(\$data|\$conf\.\$reported)\.",
            "read": self._reads.get(thing, own + r"\$conf\.\$expected\."),
        }

    def _environment(self, epmd_port: int) -> dict[str, str]:
        base = self.directory
        return {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie
            "RABBITMQ_CONF_ENV_FILE": os.devnull,  # not /etc/rabbitmq/rabbitmq-env.conf
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(self.config_path),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_DIST_PORT": str(self._free_port_besides(self.port)),
            "ERL_EPMD_PORT": str(epmd_port),
        }

    # -- process -------------------------------------------------------------------

    def _wait_started(self, timeout: float, *, log_offset: int) -> None:
        """Until the node logs its start-up complete: MQTT listens, the users exist."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + timeout
        while _STARTED not in self._log_from(log_offset):
            if time.monotonic() > deadline:
                raise BrokerError(f"RabbitMQ not started after {timeout} s: {self._said()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = process.wait(timeout=_POLL_INTERVAL)
                raise BrokerError(f"rabbitmq-server exited with status {status}: {self._said()}")

    def _log_from(self, offset: int) -> str:
        """What the node logged past `offset` (a restart appends to the same file)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _said(self) -> str:
        return f"log tail ({self.directory}):\n{self.log_tail()}"

    def _end_leftovers(self, group: int | None) -> None:
        """The VM, should the script have gone without it (a stop that timed out), and epmd."""
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            epmd.wait(timeout=STOP_TIMEOUT)

    def __repr__(self) -> str:
        return f"RabbitMqBroker({self.host}:{self._port}, running={self.running})"
