"""The MQTT adapter: one gmqtt client at a time, reconnected by an explicit loop.

gmqtt's `publish()` returns nothing; the broker's PUBACK is learnt through the client's
`persistent_storage`, whose `remove_message_by_mid` gmqtt calls when the PUBACK for that
packet id arrives. `_AckTracker` turns that into a future per publish, so the outbox can
delete a message only once the broker has it. gmqtt's own reconnects are switched off
(`_Client.reconnect`): `MqttSession.run` owns the connection, with capped, jittered
exponential back-off, and each connection starts a clean session — whatever was in
flight when a connection dropped is still in the outbox and is sent again. After each
CONNACK the session subscribes, in one SUBSCRIBE packet, to what `subscriptions()` names
then (a reload may have changed it).

What connecting raises (gmqtt's refusal, ssl's, the socket's) is translated in one place,
`broker_error`, by the table `ERRORS` and, for a refusal, by its CONNACK code: a TLS
failure, a refused login and an unreachable broker are each their own BrokerError.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from gmqtt import Client, Subscription
from gmqtt.mqtt.constants import (
    CONNACK_REFUSED_BAD_USERNAME_PASSWORD,
    CONNACK_REFUSED_NOT_AUTHORIZED,
    MQTTv311,
)
from gmqtt.mqtt.handler import MQTTConnectError
from gmqtt.storage import PersistentStorage

from agent.cloud.subscriber import Subscriber
from agent.config.sections import MqttSection
from agent.errors import (
    BrokerAuthRefused,
    BrokerError,
    BrokerRefused,
    BrokerTlsError,
    BrokerUnreachable,
    ConnectionLost,
    NotConnected,
)

log = structlog.get_logger("agent.mqtt")

# What connecting to the broker raises, as the agent's errors; looked up along the
# exception's MRO, so ssl's errors and TimeoutError come before OSError. What is not here
# (CancelledError, a bug) propagates.
ERRORS: Mapping[type[BaseException], type[BrokerError]] = {
    # The broker's CONNACK refused us; refined by its code (CONNACK_ERRORS).
    MQTTConnectError: BrokerRefused,
    # The handshake failed: SSLCertVerificationError (not trusted, for another name), an
    # alert from the broker, no common protocol.
    ssl.SSLError: BrokerTlsError,
    # No CONNACK within `connect_timeout`.
    TimeoutError: BrokerUnreachable,
    # Refused, reset, unreachable, a name that does not resolve, or closed before a CONNACK.
    OSError: BrokerUnreachable,
    # A host name the resolver cannot encode (a label over 63 characters).
    UnicodeError: BrokerUnreachable,
}

# CONNACK return codes (MQTT 3.1.1) with an error of their own; any other is BrokerRefused.
CONNACK_ERRORS: Mapping[int, type[BrokerRefused]] = {
    CONNACK_REFUSED_BAD_USERNAME_PASSWORD: BrokerAuthRefused,
    CONNACK_REFUSED_NOT_AUTHORIZED: BrokerAuthRefused,
}

_CLOSE_TIMEOUT = 5.0
# The socket closed after a CONNACK (a refused login): `connect()` raises the refusal within
# a few loop turns and no further I/O; this long at most is left for it. Without a CONNACK
# the attempt fails at once.
_CONNACK_GRACE = 0.5


class _AckTracker(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store, extended with a future per packet id."""

    def __init__(self) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self.futures: dict[int, asyncio.Future[None]] = {}
        self.last_ack_at: float | None = None  # monotonic, the last PUBACK

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self.last_ack_at = time.monotonic()
        future = self.futures.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def clear(self) -> None:
        super().clear()
        self.fail_all()

    def fail_all(self) -> None:
        futures, self.futures = self.futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(ConnectionLost("connection lost before PUBACK"))


class _Client(Client):  # type: ignore[misc]
    async def reconnect(self, delay: bool = False) -> None:
        """Reconnects belong to MqttSession.run, not to gmqtt."""

    @property
    def connack_handled(self) -> bool:
        """This attempt's CONNACK, accepted or refused, is handled.

        gmqtt clears the event when it opens a connection and sets it when a CONNACK is
        handled, before the DISCONNECT it queues when the socket closes.
        """
        return bool(self._connack_received.is_set())


MessageHandler = Callable[[str, bytes], None]
Topics = Callable[[], Iterable[str]]


def _no_topics() -> Iterable[str]:
    return ()


class MqttSession:
    """The thing's connection to the broker: connect, stay connected, publish at QoS 1.

    `subscriptions` is asked after every CONNACK for the topic filters to subscribe to
    (QoS 1, one SUBSCRIBE packet); a clean session holds none from the last connection.
    """

    def __init__(
        self,
        *,
        thing_id: str,
        secret: str,
        config: MqttSection,
        subscriptions: Topics = _no_topics,
        on_message: MessageHandler | None = None,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.client_id = f"thing:{thing_id}"
        self._username = thing_id
        self._secret = secret
        self._config = config
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connect = on_connect
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._client: _Client | None = None
        self._tracker = _AckTracker()
        self._closing = False
        self.reconnects = 0
        self._log = log.bind(broker=f"{config.host}:{config.port}", client_id=self.client_id)
        self._subscriber = Subscriber(self._log)
        self._suback_mid: int | None = None  # of the SUBSCRIBE awaiting its SUBACK
        self._connected_at = 0.0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connected_at(self) -> float | None:
        """Monotonic time of this connection's CONNACK; None while not connected."""
        return self._connected_at if self._connected.is_set() else None

    @property
    def last_ack_at(self) -> float | None:
        """Monotonic time of the last PUBACK, on any connection."""
        return self._tracker.last_ack_at

    async def wait_connected(self) -> None:
        await self._connected.wait()

    @property
    def subscriptions(self) -> list[str]:
        """The topic filters the next connection subscribes to, each once, in order."""
        return list(dict.fromkeys(self._subscriptions()))

    def resubscribe(self) -> None:
        """Subscribe now to what `subscriptions()` names, if connected (after a reload that
        kept the session: a new group's retained config then arrives at once). A filter
        subscribed again brings its retained message again; the configurator writes
        nothing for a value the device holds. Filters the broker refused are tried again."""
        self._subscriber.retry_refused()
        client = self._client
        if client is not None and self._connected.is_set():
            self._subscribe(client, self._subscriber.start(self.subscriptions))

    @property
    def refused_subscriptions(self) -> set[str]:
        """The filters the broker refused (agent.cloud.subscriber)."""
        return set(self._subscriber.refused)

    def _subscribe(self, client: _Client, topics: list[str]) -> None:
        if topics:
            self._suback_mid = client.subscribe([Subscription(topic, qos=1) for topic in topics])

    def _handle_suback(self, client: Any, mid: int, granted: Iterable[int], *_: Any) -> None:
        current = self._client
        if current is not None and client is current and mid == self._suback_mid:
            self._suback_mid = None
            self._subscribe(current, self._subscriber.acknowledged(list(granted)))

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        """Send at QoS 1; the future completes at PUBACK or fails with ConnectionLost."""
        client = self._client
        if client is None or not self._connected.is_set():
            raise NotConnected("not connected to the broker")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tracker.last_mid = None
        client.publish(topic, payload, qos=1, retain=retain)
        mid = self._tracker.last_mid
        if mid is None:
            future.set_exception(ConnectionLost("the client did not take the message"))
        else:
            self._tracker.futures[mid] = future
        return future

    async def run(self) -> None:
        """Connect, and reconnect after every loss, until cancelled."""
        attempt = 0
        while not self._closing:
            try:
                await self._connect()
            except BrokerError as exc:
                attempt += 1
                refused = isinstance(exc, BrokerAuthRefused)
                delay = self._backoff(attempt, at_cap=refused)
                event = "mqtt_auth_refused" if refused else "mqtt_connect_failed"
                failure = {"error": str(exc), "error_type": type(exc).__name__}
                if attempt == 1 or refused:
                    self._log.warning(event, **failure, retry_in=round(delay, 1))
                else:
                    self._log.debug(event, **failure, attempt=attempt, retry_in=round(delay, 1))
                await asyncio.sleep(delay)
                continue
            attempt = 0
            await self._lost.wait()
            self._connected.clear()
            self._subscriber.lost()
            self._tracker.fail_all()
            await self._drop_client()
            if self._closing:
                break
            self.reconnects += 1
            self._log.warning("mqtt_disconnected", reconnects=self.reconnects)
            await asyncio.sleep(random.uniform(0, self._config.backoff_min))

    async def connect_once(self) -> None:
        """One connection attempt, no retry (`orio-agent doctor`): returns connected, or
        raises the attempt's BrokerError. `close()` after either."""
        await self._connect()

    async def close(self) -> None:
        """Disconnect cleanly; in-flight publishes fail and stay in the outbox."""
        self._closing = True
        self._connected.clear()
        self._tracker.fail_all()
        await self._drop_client(graceful=True)
        self._lost.set()

    async def _connect(self) -> None:
        config = self._config
        self._lost.clear()
        client = _Client(
            self.client_id, clean_session=True, persistent_storage=self._tracker, logger=None
        )
        client.set_auth_credentials(self._username, self._secret)
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_suback
        self._suback_mid = None
        self._client = client
        try:
            async with asyncio.timeout(config.connect_timeout):
                await self._connect_until_lost(client)
        except BaseException as exc:
            await self._drop_client()
            error = broker_error(exc, timeout=config.connect_timeout)
            if error is None:
                raise
            raise error from exc
        self._subscribe(client, self._subscriber.start(self.subscriptions))
        self._connected_at = time.monotonic()
        self._connected.set()
        self._log.info("mqtt_connected", tls=config.tls)
        if self._on_connect is not None:
            self._on_connect()

    async def _connect_until_lost(self, client: _Client) -> None:
        """`client.connect()`, given up as soon as the connection closes without a CONNACK.

        gmqtt would wait for the CONNACK until the time-out and the cause would read "timed
        out": a port that accepts and closes (a proxy or load balancer whose backend is
        down) or resets, or with TLS 1.3 a broker refusing the client's certificate (mutual
        TLS, none given or one it does not trust), which closes the connection after the
        handshake has completed on the client's side. Such an attempt fails at once and
        goes through the back-off.
        """
        config = self._config
        connecting = asyncio.create_task(
            client.connect(
                config.host,
                config.port,
                ssl=self._tls_context(),
                keepalive=config.keepalive,
                version=MQTTv311,
            ),
            name="mqtt_connect",
        )
        lost = asyncio.create_task(self._lost.wait(), name="mqtt_connect_lost")
        try:
            await asyncio.wait({connecting, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not connecting.done() and client.connack_handled:
                await asyncio.wait({connecting}, timeout=_CONNACK_GRACE)
            if connecting.done():
                connecting.result()  # connected, or the broker's refusal
                return
        finally:
            for task in (connecting, lost):
                task.cancel()
            await asyncio.gather(connecting, lost, return_exceptions=True)
        # What the socket ended with (the alert, or a reset that overtook it) is not told.
        raise ConnectionError(
            "the broker closed the connection before its CONNACK"
            + (" (over TLS: does it require a client certificate?)" if config.tls else "")
        )

    def _tls_context(self) -> ssl.SSLContext | bool:
        config = self._config
        if not config.tls:
            return False
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        if config.cert_file and config.key_file:
            context.load_cert_chain(str(config.cert_file), str(config.key_file))
        return context

    def _handle_disconnect(self, client: Any, packet: Any, exc: Any = None) -> None:
        if client is self._client:
            self._lost.set()

    def _handle_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        if self._on_message is not None:
            self._on_message(topic, payload)
        return 0

    async def _drop_client(self, *, graceful: bool = False) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await client.disconnect()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # Not ours: gmqtt cancels its own futures when the socket goes under it.
        except (OSError, TimeoutError, RuntimeError, AttributeError):
            pass  # the connection is gone either way
        if graceful:
            self._log.info("mqtt_closed")

    def _backoff(self, attempt: int, *, at_cap: bool) -> float:
        cap = self._config.backoff_max
        ceiling = cap if at_cap else min(cap, self._config.backoff_min * 2 ** min(attempt, 20))
        return random.uniform(ceiling / 2, ceiling)


def broker_error(exc: BaseException, *, timeout: float) -> BrokerError | None:
    """The agent's error for what connecting raised; None when ERRORS does not know it."""
    kind = next((ERRORS[cls] for cls in type(exc).__mro__ if cls in ERRORS), None)
    if kind is None:
        return None
    if kind is BrokerRefused:
        code = int(exc._code)  # type: ignore[attr-defined]  # gmqtt keeps the code private
        return CONNACK_ERRORS.get(code, BrokerRefused)(
            f"broker refused the connection: {exc}", code=code
        )
    if kind is BrokerTlsError:
        return BrokerTlsError(f"TLS handshake failed: {exc}")
    if isinstance(exc, TimeoutError):
        return kind(f"timed out: no CONNACK within {timeout}s")
    return kind(str(exc) or type(exc).__name__)
