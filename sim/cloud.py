"""The platform's side of MQTT: an application client, and a bare thing client.

:class:`CloudClient` connects as the application (client id ``app:{id}``),
subscribes to ``$thing/#`` at QoS 1 and records every message in arrival
order; tests await what they expect with :meth:`MqttClient.wait_for` and
publish expected configuration with :meth:`CloudClient.publish`.

:func:`thing_client` gives a client with a thing's credentials, for tests of
the broker itself (the agent has its own MQTT adapter).

``python -m sim.cloud --port P`` prints every message until Ctrl-C.
"""

# ruff: noqa: ASYNC109  # a default deadline that names what was awaited is the point here

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from gmqtt import Client, Subscription
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.storage import PersistentStorage

from sim.broker import (
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    DEFAULT_THING_ID,
    DEFAULT_THING_SECRET,
    LOOPBACK,
)

if TYPE_CHECKING:
    from sim.broker import Broker

DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
PUBACK_TIMEOUT = 10.0
RECONNECT_DELAY = 0.2  # gmqtt's default is 6 s: too slow around broker restarts
ALL_THINGS = "$thing/#"

Payload = bytes | str | list[Any] | dict[str, Any]


class Message(NamedTuple):
    """One message as received: compare with a plain ``(topic, payload, retain)`` tuple."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def thing_id(self) -> str | None:
        """The ``{id}`` of a ``$thing/{id}/...`` topic."""
        parts = self.topic.split("/")
        return parts[1] if len(parts) > 1 and parts[0] == "$thing" else None


def data_topic(thing_id: str, bucket: str) -> str:
    return f"$thing/{thing_id}/$data/{bucket}"


def expected_topic(thing_id: str, group: str) -> str:
    return f"$thing/{thing_id}/$conf/$expected/{group}"


def reported_topic(thing_id: str, group: str) -> str:
    return f"$thing/{thing_id}/$conf/$reported/{group}"


class _AckStorage(PersistentStorage):  # type: ignore[misc]  # gmqtt is untyped
    """gmqtt's in-flight store, resolving a future when a PUBACK removes a message.

    gmqtt's ``publish()`` returns nothing; the packet id shows up here, in the
    same synchronous call, and leaves again when the broker acknowledges it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._acks: dict[int, asyncio.Future[None]] = {}
        self.last_ack: asyncio.Future[None] | None = None

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_ack = asyncio.get_running_loop().create_future()
        self._acks[mid] = self.last_ack

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(None)

    def clear(self) -> None:
        super().clear()
        acks, self._acks = self._acks, {}
        for ack in acks.values():
            if not ack.done():
                ack.set_exception(ConnectionError("session lost before the PUBACK"))


class MqttClient:
    """A gmqtt client (MQTT 3.1.1) that records what it receives.

    Every message lands in :attr:`messages` in arrival order. Subscriptions are
    made on connect and again after a reconnect that lost the session.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str,
        password: str,
        subscriptions: Sequence[str] = (),
        qos: int = 1,
        clean_session: bool = True,
        keepalive: int = 60,
        reconnect_delay: float = RECONNECT_DELAY,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self.subscriptions = tuple(subscriptions)
        self.qos = qos
        self.keepalive = keepalive
        self.messages: list[Message] = []
        self.arrivals: list[float] = []  # wall-clock seconds each message arrived, in step
        # Each data message's readings, decoded once: (thing, bucket, readings), in step
        # with `messages` as far as `readings()` has looked (tests ask it at every arrival).
        self._decoded: list[tuple[str, str, list[dict[str, Any]]] | None] = []
        #: granted QoS per subscription from the last SUBACK (128 = refused)
        self.granted: dict[str, int] = {}
        self._storage = _AckStorage()
        self._client = Client(
            client_id, clean_session=clean_session, persistent_storage=self._storage
        )
        self._client.set_auth_credentials(username, password)
        self._client.set_config({"reconnect_delay": reconnect_delay})
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._ready = asyncio.Event()
        self._arrived = asyncio.Event()
        self._suback_mid: int | None = None

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def connect(self, *, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect and wait for the SUBACK; a refused CONNACK raises gmqtt's MQTTConnectError."""
        try:
            async with asyncio.timeout(timeout):
                await self._client.connect(
                    self.host, self.port, keepalive=self.keepalive, version=MQTTv311
                )
                await self._ready.wait()
        except BaseException:
            await self._close_quietly()
            raise

    async def wait_connected(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until (re)connected and subscribed, e.g. after a broker restart."""
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def disconnect(self) -> None:
        self._ready.clear()
        await self._client.disconnect()

    async def wait_for(
        self,
        predicate: Callable[[Message], bool] | None = None,
        *,
        count: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[Message]:
        """All recorded messages matching ``predicate``, once there are at least ``count``.

        Woken by every arrival; already-recorded messages count.
        """
        match = predicate or (lambda _message: True)
        found: list[Message] = []
        scanned = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if scanned > len(self.messages):  # clear() was called meanwhile
                        found, scanned = [], 0
                    found += [message for message in self.messages[scanned:] if match(message)]
                    scanned = len(self.messages)
                    if len(found) >= count:
                        return found
                    await self._arrived.wait()
        except TimeoutError:
            topics = [message.topic for message in self.messages[-20:]]
            raise TimeoutError(
                f"{self.client_id}: fewer than {count} matching messages after {timeout} s; "
                f"{len(self.messages)} received, last topics: {topics}"
            ) from None

    async def wait_for_topic(
        self, topic: str, *, count: int = 1, timeout: float = DEFAULT_TIMEOUT
    ) -> list[Message]:
        return await self.wait_for(
            lambda message: message.topic == topic, count=count, timeout=timeout
        )

    async def publish(
        self,
        topic: str,
        payload: Payload,
        *,
        retain: bool = False,
        qos: int = 1,
        timeout: float = PUBACK_TIMEOUT,
    ) -> None:
        """Publish; with QoS 1 return once the broker's PUBACK arrived.

        A PUBACK does not mean the ACL let the message through.
        """
        self._client.publish(topic, _encode(payload), qos=qos, retain=retain)
        if qos == 0:
            return
        ack = self._storage.last_ack
        assert ack is not None
        async with asyncio.timeout(timeout):
            await ack

    def clear(self) -> None:
        self.messages.clear()
        self.arrivals.clear()
        self._decoded.clear()

    def on_topic(self, topic: str) -> list[Message]:
        return [message for message in self.messages if message.topic == topic]

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    # -- gmqtt callbacks (called synchronously, in arrival order) -------------------

    def _on_connect(self, client: Client, session_present: int, rc: int, properties: Any) -> None:
        if not self.subscriptions:
            self._ready.set()
            return
        if session_present and self.granted:
            self._ready.set()  # the broker kept our subscriptions
            return
        self._suback_mid = client.subscribe(
            [Subscription(topic, qos=self.qos) for topic in self.subscriptions]
        )

    def _on_subscribe(
        self, client: Client, mid: int, granted: Sequence[int], properties: Any
    ) -> None:
        if mid != self._suback_mid:
            return
        self.granted = dict(zip(self.subscriptions, granted, strict=False))
        self._ready.set()

    def _on_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        self._ready.clear()

    def _on_message(
        self, client: Client, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        self.messages.append(Message(topic, bytes(payload), bool(properties.get("retain"))))
        self.arrivals.append(time.time())
        # Wake every waiter, then re-arm: each re-checks its own predicate.
        self._arrived.set()
        self._arrived.clear()
        return 0

    async def _close_quietly(self) -> None:
        self._ready.clear()
        with contextlib.suppress(Exception):
            await self._client.disconnect()


class CloudClient(MqttClient):
    """The application: ``app:{app_id}``, subscribed to ``$thing/#`` at QoS 1.

    A persistent session by default (``clean_session=False``): with a broker
    started with persistence, messages published while the cloud reconnects
    after a broker restart are queued for it, not lost.
    """

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
        subscriptions: Sequence[str] = (ALL_THINGS,),
        clean_session: bool = False,
        reconnect_delay: float = RECONNECT_DELAY,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            client_id=f"app:{app_id}",
            username=app_id,
            password=app_secret,
            subscriptions=subscriptions,
            clean_session=clean_session,
            reconnect_delay=reconnect_delay,
        )
        self.app_id = app_id

    @classmethod
    def for_broker(cls, broker: Broker, **kwargs: Any) -> CloudClient:
        return cls(
            host=broker.host,
            port=broker.port,
            app_id=broker.app_id,
            app_secret=broker.app_secret,
            **kwargs,
        )

    async def publish(
        self,
        topic: str,
        payload: Payload,
        *,
        retain: bool = True,
        qos: int = 1,
        timeout: float = PUBACK_TIMEOUT,
    ) -> None:
        """Publish (retained by default, as configuration is); waits for the PUBACK."""
        await super().publish(topic, payload, retain=retain, qos=qos, timeout=timeout)

    async def publish_expected(
        self,
        group: str,
        settings: list[dict[str, Any]],
        *,
        thing_id: str = DEFAULT_THING_ID,
    ) -> None:
        """Publish ``[{"id", "value"}, ...]`` retained on the group's expected topic."""
        await self.publish(expected_topic(thing_id, group), settings)

    def readings(
        self, bucket: str | None = None, *, thing_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Every reading received on data topics, flattened, in arrival order.

        A payload may be one object or an array of objects (the document allows both).
        """
        if len(self._decoded) > len(self.messages):  # cleared meanwhile
            self._decoded.clear()
        for message in self.messages[len(self._decoded) :]:
            parts = message.topic.split("/")
            if len(parts) != 4 or parts[0] != "$thing" or parts[2] != "$data":
                self._decoded.append(None)
                continue
            decoded = message.json()
            self._decoded.append(
                (parts[1], parts[3], decoded if isinstance(decoded, list) else [decoded])
            )
        found: list[dict[str, Any]] = []
        for entry in self._decoded:
            if entry is None:
                continue
            thing, its_bucket, readings = entry
            if (bucket is None or its_bucket == bucket) and (thing_id is None or thing == thing_id):
                found.extend(readings)
        return found

    def reported(
        self, group: str, *, thing_id: str = DEFAULT_THING_ID
    ) -> list[list[dict[str, Any]]]:
        """Decoded payloads received on the group's reported topic, oldest first."""
        return [message.json() for message in self.on_topic(reported_topic(thing_id, group))]


def thing_client(
    broker: Broker | None = None,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    thing_id: str | None = None,
    thing_secret: str | None = None,
    subscriptions: Sequence[str] | None = None,
) -> MqttClient:
    """A client with a thing's identity, subscribed to its own expected config."""
    if broker is not None:
        host, port = broker.host, broker.port
        thing_id = thing_id or broker.thing_id
        thing_secret = thing_secret if thing_secret is not None else broker.things[thing_id]
    thing_id = thing_id or DEFAULT_THING_ID
    if port is None:
        raise ValueError("a port (or a broker) is needed")
    return MqttClient(
        host=host,
        port=port,
        client_id=f"thing:{thing_id}",
        username=thing_id,
        password=thing_secret if thing_secret is not None else DEFAULT_THING_SECRET,
        subscriptions=(
            subscriptions
            if subscriptions is not None
            else (f"$thing/{thing_id}/$conf/$expected/#",)
        ),
    )


def _encode(payload: Payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":")).encode()


def _quiet_cancelled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler, but for a cancelled task's CancelledError: at a
    Ctrl-C the broker may stop first, and gmqtt then asks its cancelled reconnect task for
    its exception, a traceback that says nothing."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


async def _print_messages(host: str, port: int, app_id: str, app_secret: str) -> None:
    cloud = CloudClient(
        host=host, port=port, app_id=app_id, app_secret=app_secret, clean_session=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await cloud.connect()
    print(f"cloud: {cloud.client_id} subscribed to {ALL_THINGS} on {host}:{port}", flush=True)
    shown = 0
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await cloud.wait_for(count=shown + 1, timeout=1.0)
            for message in cloud.messages[shown:]:
                retained = " (retained)" if message.retain else ""
                print(
                    f"{message.topic}{retained} {message.payload.decode(errors='replace')}",
                    flush=True,
                )
            shown = len(cloud.messages)
    finally:
        loop.set_exception_handler(_quiet_cancelled)  # stopping: the broker may be gone
        await cloud.disconnect()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.cloud", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--app-id", default=DEFAULT_APP_ID)
    parser.add_argument("--app-secret", default=DEFAULT_APP_SECRET)
    args = parser.parse_args(argv)
    logging.getLogger("gmqtt").setLevel(logging.ERROR)  # its reconnect chatter is not data
    asyncio.run(_print_messages(args.host, args.port, args.app_id, args.app_secret))


if __name__ == "__main__":
    main()
