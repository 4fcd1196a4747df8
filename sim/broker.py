"""A real mosquitto broker configured like the ORing PaaS one.

Users and ACLs follow the document's "Topic authorization" table:

- a thing (username = its Identity) publishes ``$thing/<id>/$data/#`` and
  ``$thing/<id>/$conf/$reported/#`` and subscribes to
  ``$thing/<id>/$conf/$expected/#`` -- its own topics only;
- the application reads ``$thing/#`` and publishes
  ``$thing/+/$conf/$expected/#``, never data.

mosquitto (MQTT 3.1.1) drops a publish the ACL denies without telling the
client: the PUBACK still arrives. Tests prove a denial by ordering -- publish
the denied message, then an allowed marker, and check only the marker arrives.

With ``tls=TlsFiles(...)`` the broker also listens with TLS on :attr:`Broker.tls_port`,
next to the plain listener on :attr:`Broker.port` (the cloud side and the broker tests
keep using that one); one password file and ACL serve both. ``require_certificate=True``
makes it mutual TLS: a client must present a certificate from ``cafile`` *and* log in
with its user name and password, as a thing does. :class:`CertAuthority` makes the
files: a throwaway CA and certificates it signs, with the ``openssl`` command.

``python -m sim.broker --dir D --port P`` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

DEFAULT_THING_ID = "xY6Eie5hv"
DEFAULT_THING_SECRET = "vjn6u1.~EQrKuOP4"
DEFAULT_APP_ID = "miWll0Grv"
DEFAULT_APP_SECRET = "cq8YUb8IPYmTYkfFaOhAtj-.~G_gjXdZ"
LOOPBACK = "127.0.0.1"

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40
_POLL_INTERVAL = 0.005
_PORT_ATTEMPTS = 3
_FORBIDDEN_IN_ID = frozenset("/+#\0 ")
SERVER_NAMES = ("IP:127.0.0.1", "DNS:localhost")  # subjectAltName of a loopback broker
CERT_DAYS = 2  # throwaway certificates: a day of slack either side of a test run
OPENSSL_TIMEOUT = 30.0


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def find_binary(name: str) -> str:
    """Locate a mosquitto tool, or raise: tests needing it fail, never skip."""
    found = shutil.which(name) or next(
        (
            str(path)
            for path in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
            if path.exists()
        ),
        None,
    )
    if found is None:
        raise RuntimeError(
            f"{name} is not installed; the MQTT tests need a real broker "
            "(apt install mosquitto mosquitto-clients)"
        )
    return found


class BrokerError(RuntimeError):
    """mosquitto did not start, or died."""


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """A TLS listener's PEM files: its certificate chain and key, and the CA it trusts.

    ``cafile`` checks client certificates; with ``require_certificate`` a client without
    one signed by it is refused during the handshake (mutual TLS). The user name and
    password are checked as on the plain listener either way.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False


@dataclass(frozen=True, kw_only=True)
class KeyPair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


class CertAuthority:
    """A throwaway CA: an EC P-256 key and self-signed certificate made with ``openssl``.

    :meth:`issue` signs server and client certificates; :meth:`server_files` gives a
    :class:`TlsFiles` for a broker. Nothing here is fit for anything but tests.
    """

    def __init__(self, directory: Path | str, *, name: str = "orio-agent test CA") -> None:
        self.directory = Path(directory)
        self.name = name
        self.cert = self.directory / "ca.pem"
        self.key = self.directory / "ca.key"
        self.directory.mkdir(parents=True, exist_ok=True)
        extensions = self._extensions_file(
            "ca",
            "basicConstraints = critical, CA:TRUE",
            "keyUsage = critical, keyCertSign, cRLSign",
            "subjectKeyIdentifier = hash",
        )
        _openssl(
            "req",
            "-x509",
            "-new",
            *_NEW_EC_KEY,
            "-keyout",
            self.key,
            "-out",
            self.cert,
            "-days",
            str(CERT_DAYS),
            "-subj",
            f"/CN={name}",
            "-config",
            extensions,
            "-extensions",
            "ext",
        )
        self.key.chmod(0o600)

    def issue(self, name: str, *, san: Sequence[str] = (), client: bool = False) -> KeyPair:
        """A certificate for ``name`` (its CN and file names): a server's, with
        ``san`` (``"IP:127.0.0.1"``, ``"DNS:localhost"``) as its subjectAltName, or
        with ``client=True`` a client's."""
        pair = KeyPair(cert=self.directory / f"{name}.pem", key=self.directory / f"{name}.key")
        request = self.directory / f"{name}.csr"
        lines = [
            "basicConstraints = critical, CA:FALSE",
            "keyUsage = critical, digitalSignature",
            f"extendedKeyUsage = {'clientAuth' if client else 'serverAuth'}",
            "subjectKeyIdentifier = hash",
            "authorityKeyIdentifier = keyid",
        ]
        if san:
            lines.append(f"subjectAltName = {', '.join(san)}")
        extensions = self._extensions_file(name, *lines)
        _openssl(
            "req",
            "-new",
            *_NEW_EC_KEY,
            "-keyout",
            pair.key,
            "-out",
            request,
            "-subj",
            f"/CN={name}",
            "-config",
            extensions,
        )
        pair.key.chmod(0o600)
        _openssl(
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            self.cert,
            "-CAkey",
            self.key,
            "-set_serial",
            str(secrets.randbits(63)),
            "-days",
            str(CERT_DAYS),
            "-extfile",
            extensions,
            "-extensions",
            "ext",
            "-out",
            pair.cert,
        )
        request.unlink()
        return pair

    def server_files(
        self,
        name: str = "server",
        *,
        san: Sequence[str] = SERVER_NAMES,
        require_certificate: bool = False,
    ) -> TlsFiles:
        """A broker's TLS files: a new server certificate, and this CA for client ones."""
        pair = self.issue(name, san=san)
        return TlsFiles(
            cafile=self.cert,
            certfile=pair.cert,
            keyfile=pair.key,
            require_certificate=require_certificate,
        )

    def _extensions_file(self, name: str, *lines: str) -> Path:
        # `req` needs a distinguished_name section even when -subj gives the name;
        # our own file keeps the system openssl.cnf's defaults out of the certificates.
        path = self.directory / f"{name}.cnf"
        path.write_text(
            "\n".join(["[req]", "distinguished_name = dn", "[dn]", "[ext]", *lines]) + "\n"
        )
        return path

    def __repr__(self) -> str:
        return f"CertAuthority({self.name!r}, {self.directory})"


_NEW_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(
        [find_openssl(), *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({result.returncode}): {result.stderr}")


def find_openssl() -> str:
    """The openssl command, or raise: TLS tests need it and fail, never skip."""
    found = shutil.which("openssl")
    if found is None:
        raise RuntimeError("openssl is not installed; the TLS tests need it (apt install openssl)")
    return found


class Broker:
    """One mosquitto process, its config, password file, ACL and log in ``directory``.

    ``port=None`` picks a free port once; :meth:`restart` keeps it. With ``tls``, a
    second listener (MQTT over TLS) on ``tls_port``, picked the same way.
    Usable as a context manager (started on enter, stopped on exit).
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        thing_id: str = DEFAULT_THING_ID,
        thing_secret: str = DEFAULT_THING_SECRET,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
        extra_things: Mapping[str, str] | None = None,
        persistence: bool = False,
        tls: TlsFiles | None = None,
        tls_port: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.host = host
        self._port = port
        self._port_chosen_by_us = port is None
        self.tls = tls
        self._tls_port = tls_port
        self._tls_port_chosen_by_us = tls_port is None
        self.thing_id = thing_id
        self.thing_secret = thing_secret
        self.app_id = app_id
        self.app_secret = app_secret
        self.things: dict[str, str] = {thing_id: thing_secret, **(extra_things or {})}
        self.persistence = persistence
        for identity in [*self.things, app_id]:
            if not identity or _FORBIDDEN_IN_ID & set(identity):
                raise ValueError(f"identity {identity!r} cannot be used in a topic")
        if app_id in self.things:
            raise ValueError("the application and a thing cannot share an identity")
        self.config_path = self.directory / "mosquitto.conf"
        self.password_path = self.directory / "passwd"
        self.acl_path = self.directory / "acl"
        self.log_path = self.directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._written = False

    # -- addresses and identities ----------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port(self.host)
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_port(self) -> int:
        """The TLS listener's port; only a broker made with ``tls`` has one."""
        if self.tls is None:
            raise BrokerError("this broker has no TLS listener (Broker(..., tls=TlsFiles(...)))")
        if self._tls_port is None:
            self._tls_port = self._free_port_besides(self.port)
        return self._tls_port

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- lifecycle ---------------------------------------------------------------

    def start(self, *, timeout: float = START_TIMEOUT) -> Broker:
        """Start mosquitto and return once its port accepts connections."""
        if self.running:
            raise BrokerError("broker already running")
        binary = find_binary("mosquitto")
        if not self._written:
            self._write_files()
        for attempt in range(_PORT_ATTEMPTS):
            self._write_config()
            self._spawn(binary)
            try:
                self._wait_listening(timeout)
            except BrokerError:
                address_taken = "Address already in use" in self.log_tail()
                ours = self._port_chosen_by_us or (
                    self.tls is not None and self._tls_port_chosen_by_us
                )
                if not (address_taken and ours) or attempt + 1 == _PORT_ATTEMPTS:
                    raise
                # Someone else took one of them meanwhile: pick again what we picked.
                if self._port_chosen_by_us:
                    self._port = free_port(self.host)
                if self.tls is not None and self._tls_port_chosen_by_us:
                    self._tls_port = self._free_port_besides(self.port)
            else:
                return self
        raise AssertionError("unreachable")

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait: a graceful stop (with persistence, the db is saved)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: connections die; with persistence, changes since the last save are lost."""
        self._end(signal.SIGKILL, STOP_TIMEOUT)

    def restart(self, *, timeout: float = START_TIMEOUT) -> Broker:
        """Stop (gracefully) and start again on the same port."""
        self.stop()
        return self.start(timeout=timeout)

    async def start_async(self) -> Broker:
        """:meth:`start` without blocking the event loop (the agent keeps running)."""
        return await asyncio.to_thread(self.start)

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    async def restart_async(self) -> Broker:
        return await asyncio.to_thread(self.restart)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- files ---------------------------------------------------------------------

    def _write_files(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_passwords()
        self.acl_path.write_text(self._acl_text())
        self.acl_path.chmod(0o600)
        self._written = True

    def _write_passwords(self) -> None:
        tool = find_binary("mosquitto_passwd")
        self.password_path.unlink(missing_ok=True)
        users = [*self.things.items(), (self.app_id, self.app_secret)]
        for index, (username, password) in enumerate(users):
            create = ["-c"] if index == 0 else []
            result = subprocess.run(
                [tool, *create, "-b", str(self.password_path), username, password],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed for {username}: {result.stderr}")
        self.password_path.chmod(0o600)

    def _acl_text(self) -> str:
        lines = [
            "# Generated by sim.broker from the ORing PaaS topic authorization table.",
            "# Application: subscribes to every thing, publishes expected config only.",
            f"user {self.app_id}",
            "topic read $thing/#",
            "topic write $thing/+/$conf/$expected/#",
        ]
        for thing in self.things:
            lines += [
                "",
                f"# Thing {thing}: its own data and reported config out, expected config in.",
                f"user {thing}",
                f"topic write $thing/{thing}/$data/#",
                f"topic write $thing/{thing}/$conf/$reported/#",
                f"topic read $thing/{thing}/$conf/$expected/#",
            ]
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        # As root, mosquitto drops privileges to the "mosquitto" user, which
        # cannot read our 0600 files; naming the current user keeps it as is
        # (the option is ignored when not started as root).
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            "# Generated by sim.broker.",
            f"user {user}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_path}",
            f"acl_file {self.acl_path}",
            f"listener {self.port} {self.host}",
            *self._tls_listener_lines(),
            "max_keepalive 65535",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.directory}/",
                "persistence_file mosquitto.db",
                # Saved on a graceful stop (stop/restart); kill() loses what
                # changed since. Saving on every change would make a broker
                # holding a large backlog rewrite its whole database per message.
            ]
        else:
            lines.append("persistence false")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _tls_listener_lines(self) -> list[str]:
        tls = self.tls
        if tls is None:
            return []
        # No use_identity_as_username: a thing logs in with its id and secret, as on
        # the plain listener; the client certificate is checked on top of that.
        return [
            f"listener {self.tls_port} {self.host}",
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            f"require_certificate {'true' if tls.require_certificate else 'false'}",
        ]

    def _free_port_besides(self, taken: int) -> int:
        while (port := free_port(self.host)) == taken:
            pass
        return port

    # -- process -------------------------------------------------------------------

    def _spawn(self, binary: str) -> None:
        # Its own session: a Ctrl-C meant for pytest or the demo does not hit it.
        self._process = subprocess.Popen(
            [binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_listening(self, timeout: float) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                self._process = None
                raise BrokerError(
                    f"mosquitto exited with status {process.returncode} during start-up; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                for port in self._listening_ports():
                    with socket.create_connection((self.host, port), timeout=1.0):
                        pass
            except OSError:
                pass
            else:
                return
            if time.monotonic() > deadline:
                self._end(signal.SIGKILL, STOP_TIMEOUT)
                ports = ",".join(map(str, self._listening_ports()))
                raise BrokerError(
                    f"mosquitto not listening on {self.host}:{ports} after {timeout} s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _listening_ports(self) -> list[int]:
        return [self.port] if self.tls is None else [self.port, self.tls_port]

    def _end(self, signum: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
            if signum != signal.SIGKILL:
                self._wake()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wake(self) -> None:
        # mosquitto blocks signals while it waits in epoll_wait (up to 100 ms);
        # a connection attempt ends the wait so the SIGTERM is handled now.
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1.0):
            pass

    def __repr__(self) -> str:
        return f"Broker({self.host}:{self._port}, running={self.running})"


#: what the ``broker_factory`` fixture returns: keyword options of :class:`Broker`
BrokerFactory = Callable[..., Broker]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.broker", description=__doc__)
    parser.add_argument("--dir", required=True, type=Path, help="config, ACL and log go here")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--persistence", action="store_true", help="keep retained messages")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    broker = Broker(args.dir, port=args.port, persistence=args.persistence).start()
    print(f"broker: mqtt on {broker.host}:{broker.port}, log {broker.log_path}", flush=True)
    print(f"broker: thing {broker.thing_id} / {broker.thing_secret}", flush=True)
    print(f"broker: app   {broker.app_id} / {broker.app_secret}", flush=True)
    try:
        while not stopping.wait(1.0):
            if not broker.running:
                raise SystemExit(f"broker: mosquitto died; log tail:\n{broker.log_tail()}")
    finally:
        broker.stop()
    print("broker: stopped", flush=True)


if __name__ == "__main__":
    main()
