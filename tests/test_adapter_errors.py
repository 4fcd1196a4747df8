"""What each library's failures become at the adapter boundary, against real parts.

Modbus: `ModbusLine` against a raw TCP "device" on loopback and an RTU "device" on a socat
pty pair (sim.rogue), each answering with the fault under test. Serial: `SerialPort` on a
missing path, a regular file, a port another opener holds, a line that vanishes. MQTT:
`MqttSession` against nothing, a broker refusing the login, a broker whose certificate
comes from another CA. Then the tables themselves, entry by entry.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import struct
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pymodbus.exceptions
import pytest
import serial
from gmqtt.mqtt.handler import MQTTConnectError
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.exceptions import (
    ConnectionException,
    ModbusException,
    ModbusIOException,
    NotImplementedException,
    ParameterException,
)
from pymodbus.framer import FramerRTU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from agent.cloud import mqtt
from agent.cloud.mqtt import MqttSession
from agent.config import resolve
from agent.config.schema import ModbusConfig, MqttConfig, SerialConfig
from agent.config.sections import InstrumentLine, MqttSection
from agent.errors import (
    BrokerAuthRefused,
    BrokerError,
    BrokerRefused,
    BrokerTlsError,
    BrokerUnreachable,
    DeviceError,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnreachable,
)
from agent.sources.modbus import client
from agent.sources.modbus.client import REGISTER_RESPONSES, ModbusLine
from agent.sources.modbus.points import Table
from agent.sources.modbus.poller import DevicePoller
from agent.sources.serial import nmea, port
from agent.sources.serial.instrument import Instrument
from agent.sources.serial.port import SerialPort
from agent.testing import captured_logs
from sim.broker import Broker, BrokerFactory, free_port
from sim.gps import sentence
from sim.pty import PtyPair
from sim.rogue import Fault, RogueRtuDevice, RogueTcpDevice, rtu_reply
from tests.helpers import poll_until
from tests.test_serial import instrument_end
from tests.tls_fixture import Pki

UNIT = 1
TIMEOUT = 0.25  # the adapter's: a silent or garbled reply costs this long
LONG_TIMEOUT = 5.0  # for what must be told well before the time-out
WAIT = 10.0
READ = (UNIT, Table.HOLDING, 0, 2)  # unit 1, holding registers 0 and 1
RTU_REQUEST = bytes([UNIT, 3, 0, 0, 0, 2])  # the same read as an RTU frame, before its CRC
RTU_REQUEST += FramerRTU.compute_CRC(RTU_REQUEST).to_bytes(2, "big")
GOOD_REPLY = [7, 7]  # sim.rogue's registers

Logs = list[MutableMapping[str, Any]]  # structlog's event dicts


def modbus_config(**connection: Any) -> ModbusConfig:
    return ModbusConfig.model_validate(
        {
            "name": "plc",
            "timeout": TIMEOUT,
            "devices": [
                {
                    "name": "meter1",
                    "unit": UNIT,
                    "bucket": "b",
                    "points": [{"id": "v", "table": "holding", "address": 0}],
                }
            ],
            **connection,
        }
    )


def tcp_line(tcp_port: int, *, timeout: float = TIMEOUT) -> ModbusLine:
    return ModbusLine(
        resolve.connection(
            modbus_config(transport="tcp", host="127.0.0.1", port=tcp_port, timeout=timeout)
        )
    )


def rtu_line(device: str, *, timeout: float = TIMEOUT) -> ModbusLine:
    return ModbusLine(
        resolve.connection(
            modbus_config(transport="rtu", device=device, baudrate=38400, timeout=timeout)
        )
    )


async def failure(line: ModbusLine) -> Exception:
    """What the line's read raised (it must raise), the line closed after."""
    try:
        values = await line.read(*READ)
    except (DeviceError, DeviceRefused) as exc:
        return exc
    finally:
        await line.close()
    raise AssertionError(f"the read gave {values}")


# -- Modbus TCP ---------------------------------------------------------------------------

TCP_FAULTS: list[tuple[Fault, type[Exception]]] = [
    ("exception", DeviceRefused),
    ("wrong_transaction", DeviceProtocolError),
    ("wrong_unit", DeviceProtocolError),
    ("wrong_function", DeviceProtocolError),
    ("too_few_values", DeviceProtocolError),
    ("undecodable", DeviceProtocolError),
    ("short", DeviceProtocolError),
    ("silent", DeviceTimeout),
    ("close", DeviceUnreachable),
]


@pytest.mark.parametrize(("fault", "expected"), TCP_FAULTS)
async def test_each_fault_of_a_tcp_device_is_its_own_error(
    fault: Fault, expected: type[Exception]
) -> None:
    async with RogueTcpDevice(fault) as device:
        error = await failure(tcp_line(device.port))

    assert (expected, 1) == (type(error), device.requests)
    if isinstance(error, DeviceProtocolError):
        assert error.received, "the bytes that came in are kept for the log"


@pytest.mark.parametrize("code", sorted(DeviceRefused.MEANINGS))
async def test_an_exception_response_carries_its_code_and_meaning(code: int) -> None:
    async with RogueTcpDevice("exception", exception_code=code) as device:
        error = await failure(tcp_line(device.port))

    assert isinstance(error, DeviceRefused)
    assert (code, DeviceRefused.MEANINGS[code], 3, 0, 2) == (
        error.code,
        error.meaning,
        error.function,
        error.address,
        error.count,
    )


@pytest.mark.parametrize("fault", ["close", "undecodable"])
async def test_a_connection_closed_under_a_request_is_told_at_once_and_reopened(
    fault: Fault,
) -> None:
    """pymodbus would report it at its time-out; `undecodable` makes pymodbus itself drop
    the connection (asyncio's data_received failing), reported as the protocol error."""
    async with RogueTcpDevice(fault) as device:
        line = tcp_line(device.port, timeout=LONG_TIMEOUT)
        started = time.monotonic()
        with pytest.raises((DeviceUnreachable, DeviceProtocolError)):
            await line.read(*READ)
        elapsed = time.monotonic() - started
        device.fault = "ok"
        try:
            assert GOOD_REPLY == await line.read(*READ)
        finally:
            await line.close()

    assert elapsed < LONG_TIMEOUT / 2
    assert 2 == device.connections


async def test_repeated_time_outs_stay_time_outs_when_pymodbus_drops_the_connection() -> None:
    """pymodbus closes a TCP connection after 5 requests in a row without a reply
    (transaction.py:229-235): the fifth is still a time-out, and the sixth reconnects."""
    async with RogueTcpDevice("silent") as device:
        line = tcp_line(device.port, timeout=0.1)
        errors = []
        try:
            for _ in range(6):
                with pytest.raises(DeviceError) as raised:
                    await line.read(*READ)
                errors.append(type(raised.value))
        finally:
            await line.close()

    assert [DeviceTimeout] * 6 == errors
    assert 2 == device.connections


async def test_a_cancelled_request_leaves_the_line_usable() -> None:
    async with RogueTcpDevice("silent") as device:
        line = tcp_line(device.port, timeout=LONG_TIMEOUT)
        try:
            reading = asyncio.create_task(line.read(*READ), name="read")
            await poll_until(lambda: device.requests == 1, timeout=WAIT, what="the request")
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            device.fault = "ok"
            assert GOOD_REPLY == await line.read(*READ)
        finally:
            await line.close()


async def test_nothing_listening_is_unreachable() -> None:
    nowhere = free_port()

    error = await failure(tcp_line(nowhere))

    assert isinstance(error, DeviceUnreachable)
    assert f"cannot connect to 127.0.0.1:{nowhere}" == str(error)


async def test_the_poller_logs_a_reply_it_could_not_use_as_such() -> None:
    async with RogueTcpDevice("wrong_function") as device:
        config = modbus_config(transport="tcp", host="127.0.0.1", port=device.port)
        line = ModbusLine(resolve.connection(config))
        with captured_logs() as logs:
            poller = DevicePoller(
                device=resolve.connection(config).devices[0], bus=line, emit=lambda *_: None
            )
            try:
                assert not await poller.poll_once()
            finally:
                await line.close()

    assert ["unit 1 answered function 3 at 0 with function 4"] == [
        entry["error"] for entry in logs if entry["event"] == "device_unreachable"
    ]


# -- Modbus RTU ---------------------------------------------------------------------------

RTU_FAULTS: list[tuple[Fault, type[Exception]]] = [
    ("exception", DeviceRefused),
    ("bad_crc", DeviceProtocolError),
    ("short", DeviceProtocolError),
    ("wrong_unit", DeviceProtocolError),
    ("wrong_function", DeviceProtocolError),
    ("too_few_values", DeviceProtocolError),
    ("undecodable", DeviceProtocolError),
    ("silent", DeviceTimeout),
]


@pytest.mark.parametrize(("fault", "expected"), RTU_FAULTS)
async def test_each_fault_of_an_rtu_unit_is_its_own_error(
    pty_pair: PtyPair, fault: Fault, expected: type[Exception]
) -> None:
    with RogueRtuDevice(pty_pair.device_a, fault) as device:
        error = await failure(rtu_line(pty_pair.device_b))

    assert (expected, 1) == (type(error), device.requests)
    if isinstance(error, DeviceProtocolError):
        assert rtu_reply(fault, RTU_REQUEST, exception_code=device.exception_code) == (
            error.received
        )


async def test_a_bad_crc_is_said_with_the_bytes_received(pty_pair: PtyPair) -> None:
    with RogueRtuDevice(pty_pair.device_a, "bad_crc"):
        error = await failure(rtu_line(pty_pair.device_b))

    assert (
        "unit 1 answered function 3 at 0 with no usable reply (a bad CRC, a short or garbled"
        " frame, another unit's or transaction's reply): received 01 03 04 00 07 00 07 0a cf"
    ) == str(error)


async def test_a_serial_line_that_vanishes_under_a_request_is_told_at_once(
    pty_pair: PtyPair,
) -> None:
    with RogueRtuDevice(pty_pair.device_a, "silent") as device:
        line = rtu_line(pty_pair.device_b, timeout=LONG_TIMEOUT)
        started = time.monotonic()
        reading = asyncio.create_task(failure(line), name="read")
        await poll_until(lambda: device.requests == 1, timeout=WAIT, what="the request")
        pty_pair.stop()
        error = await reading

    assert isinstance(error, DeviceUnreachable)
    assert time.monotonic() - started < LONG_TIMEOUT / 2


# -- serial instruments -------------------------------------------------------------------


def serial_section(device: str | Path) -> SerialConfig:
    return SerialConfig.model_validate(
        {
            "name": "inst",
            "device": str(device),
            "bucket": "s",
            "format": "nmea",
            "points": [{"id": "sats", "field": "satellites"}],
        }
    )


def serial_config(device: str | Path) -> InstrumentLine:
    return resolve.instrument(serial_section(device)).line


def open_error(device: str | Path) -> DeviceError:
    with pytest.raises(DeviceError) as raised:
        SerialPort(serial_config(device), lambda _: None).open()
    return raised.value


async def test_a_missing_device_is_unreachable_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB9"

    error = open_error(missing)

    assert isinstance(error, DeviceUnreachable)
    assert str(error).startswith(f"cannot open {missing}: no such device (unplugged, or a wrong")


async def test_a_file_that_is_not_a_serial_port_is_said_to_be_one(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("")

    error = open_error(plain)

    assert isinstance(error, DeviceUnreachable)
    assert str(error).startswith(f"cannot open {plain}: not a serial port (")


async def test_a_port_another_opener_holds_is_unreachable(pty_pair: PtyPair) -> None:
    first = SerialPort(serial_config(pty_pair.device_b), lambda _: None)
    first.open()
    try:
        error = open_error(pty_pair.device_b)
    finally:
        first.close()

    assert isinstance(error, DeviceUnreachable)
    assert errno.EAGAIN == port.errno_of(error)  # pyserial's flock(LOCK_EX | LOCK_NB)


async def test_a_line_that_vanishes_is_unreachable_with_the_reason(pty_pair: PtyPair) -> None:
    line = SerialPort(serial_config(pty_pair.device_b), lambda _: None)
    line.open()
    try:
        pty_pair.stop()
        with pytest.raises(DeviceUnreachable) as raised:
            async with asyncio.timeout(WAIT):
                await line.wait_lost()
    finally:
        line.close()

    # Linux says either, as the pty's other end goes: end of file, or EIO.
    said = str(raised.value).removeprefix(f"cannot read {pty_pair.device_b}: ")
    assert said.startswith(("end of file: the other end closed", "input/output error (")), said


async def test_the_instrument_counts_bad_checksums_by_their_type(pty_pair: PtyPair) -> None:
    good = sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    checksum = good[-4:-2]
    bad_checksum = good.replace(f"*{checksum}", "*00" if checksum != "00" else "*01")
    malformed = sentence("GPGGA,123519,48x7.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    source = Instrument(
        open_line=SerialPort,
        config=resolve.instrument(serial_section(pty_pair.device_b)),
        emit=lambda _: None,
    )
    with instrument_end(pty_pair) as fd:
        task = asyncio.create_task(source.run(), name="serial[inst]")
        try:
            async with asyncio.timeout(WAIT):
                await source.open.wait()
            os.write(fd, (bad_checksum + malformed + good).encode())
            await poll_until(lambda: source.stats.lines == 3, timeout=WAIT, what="three lines")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert (1, 2) == (source.stats.bad_checksum, source.stats.unmatched)


def test_a_bad_checksum_is_a_checksum_error_and_a_bad_field_is_not() -> None:
    good = sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    malformed = sentence("GPGGA,123519,48x7.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")

    with pytest.raises(nmea.NmeaChecksumError):
        nmea.parse(good.replace("*", "*0"))
    with pytest.raises(nmea.NmeaError) as raised:
        nmea.parse(malformed)
    assert not isinstance(raised.value, nmea.NmeaChecksumError)


# -- MQTT ---------------------------------------------------------------------------------


def mqtt_config(host: str, mqtt_port: int, **options: Any) -> MqttSection:
    config = MqttConfig.model_validate(
        {
            "host": host,
            "port": mqtt_port,
            "tls": False,
            "backoff_min": 0.2,
            "backoff_max": 1.0,
            "connect_timeout": LONG_TIMEOUT,
            **options,
        }
    )
    return resolve.mqtt(config)


def connect_failures(logs: Logs) -> Logs:
    return [e for e in logs if e["event"] in ("mqtt_connect_failed", "mqtt_auth_refused")]


async def first_connect_failure(*, thing_id: str, secret: str, config: MqttSection) -> Logs:
    """The session's first failed connect, as logged: [event]."""
    with captured_logs() as logs:
        session = MqttSession(thing_id=thing_id, secret=secret, config=config)
        task = asyncio.create_task(session.run(), name="mqtt")
        try:
            await poll_until(lambda: connect_failures(logs), timeout=WAIT, what="a failure")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await session.close()
    return connect_failures(logs)[:1]


async def test_no_broker_listening_is_unreachable() -> None:
    failed = await first_connect_failure(
        thing_id="t1", secret="s", config=mqtt_config("127.0.0.1", free_port())
    )

    assert [("mqtt_connect_failed", "BrokerUnreachable")] == [
        (e["event"], e["error_type"]) for e in failed
    ]


async def test_a_refused_login_is_an_auth_refusal(broker: Broker) -> None:
    failed = await first_connect_failure(
        thing_id=broker.thing_id,
        secret="not-the-secret",
        config=mqtt_config(broker.host, broker.port),
    )

    assert [("mqtt_auth_refused", "BrokerAuthRefused")] == [
        (e["event"], e["error_type"]) for e in failed
    ]
    assert failed[0]["error"].startswith("broker refused the connection: code ")


async def test_a_certificate_from_another_ca_is_a_tls_error(
    broker_factory: BrokerFactory, tls_pki: Pki
) -> None:
    broker = broker_factory(tls=tls_pki.server)
    config = mqtt_config(broker.host, broker.tls_port, tls=True, ca_file=str(tls_pki.other_ca.cert))

    failed = await first_connect_failure(
        thing_id=broker.thing_id, secret=broker.thing_secret, config=config
    )

    assert [("mqtt_connect_failed", "BrokerTlsError")] == [
        (e["event"], e["error_type"]) for e in failed
    ]
    assert failed[0]["error"].startswith("TLS handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED]")


# -- the tables, entry by entry -----------------------------------------------------------

PYMODBUS_RAISED: list[tuple[Exception, type[DeviceError]]] = [
    (ConnectionException("not connected"), DeviceUnreachable),
    (ModbusIOException("no response received"), DeviceTimeout),
    (ModbusException("unknown response"), DeviceProtocolError),
    (ParameterException("a subclass not listed: by the MRO"), DeviceProtocolError),
    (NotImplementedException("cannot determine RTU frame size"), DeviceProtocolError),
    (TimeoutError(), DeviceTimeout),
]


@pytest.mark.parametrize(("exc", "expected"), PYMODBUS_RAISED)
def test_what_pymodbus_raises_maps_as_the_table_says(
    exc: Exception, expected: type[DeviceError]
) -> None:
    assert expected is client.error_type(exc, heard=False)


@pytest.mark.parametrize("exc", [exc for exc, _ in PYMODBUS_RAISED])
def test_after_bytes_that_made_no_reply_any_of_it_is_a_protocol_error(exc: Exception) -> None:
    assert DeviceProtocolError is client.error_type(exc, heard=True)


def test_every_pymodbus_exception_is_in_the_table_and_nothing_else_is() -> None:
    """As httpx checks its transport's exceptions: none unmapped (a bug propagates)."""
    raised = [getattr(pymodbus.exceptions, name)() for name in pymodbus.exceptions.__all__]

    assert [] == [exc for exc in raised if client.error_type(exc, heard=False) is None]
    assert None is client.error_type(ValueError("count out of range"), heard=True)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (serial.SerialException(errno.ENOENT, "could not open port"), DeviceUnreachable),
        (OSError(errno.EIO, "Input/output error"), DeviceUnreachable),
        (ValueError("Invalid baud rate: 1234567"), DeviceUnreachable),
        (EOFError("end of file"), DeviceUnreachable),
        (RuntimeError("a bug"), None),
    ],
)
def test_what_pyserial_and_the_os_raise_maps_as_the_table_says(
    exc: Exception, expected: type[DeviceError] | None
) -> None:
    assert expected is port.error_type(exc)


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (errno.ENOENT, "no such device (unplugged, or a wrong path)"),
        (errno.ENODEV, "no such device (the adapter is gone)"),
        (errno.ENXIO, "no such device or address (the adapter is gone)"),
        (errno.EIO, "input/output error (the device was unplugged, or its other end closed)"),
        (errno.EACCES, "permission denied (is the agent's user in the device's group, dialout?)"),
        (errno.EPERM, "operation not permitted (is the agent's user in the device's group?)"),
        (errno.EBUSY, "device busy (another program has it open)"),
        (errno.ENOTTY, "not a serial port"),
    ],
)
def test_each_error_number_gives_its_reason(number: int, reason: str) -> None:
    exc = serial.SerialException(number, "could not open port /dev/ttyUSB0")

    assert f"{reason} ({exc})" == port.describe(exc)
    assert set(port.REASONS) >= {number}


def test_an_error_number_without_a_reason_is_said_as_the_os_says_it() -> None:
    exc = OSError(errno.EINVAL, "Invalid argument")

    assert "[Errno 22] Invalid argument" == port.describe(exc)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MQTTConnectError(1), BrokerRefused),  # unacceptable protocol version
        (MQTTConnectError(2), BrokerRefused),  # identifier rejected
        (MQTTConnectError(3), BrokerRefused),  # server unavailable
        (MQTTConnectError(4), BrokerAuthRefused),  # bad user name or password
        (MQTTConnectError(5), BrokerAuthRefused),  # not authorised
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), BrokerTlsError),
        (ssl.SSLError(1, "tlsv1 alert unknown ca"), BrokerTlsError),
        (TimeoutError(), BrokerUnreachable),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), BrokerUnreachable),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), BrokerUnreachable),
        (ConnectionError("the broker closed the connection before its CONNACK"), BrokerUnreachable),
        (UnicodeError("label too long"), BrokerUnreachable),
        (asyncio.CancelledError(), None),
        (RuntimeError("a bug"), None),
    ],
)
def test_what_connecting_raises_maps_as_the_tables_say(
    exc: BaseException, expected: type[BrokerError] | None
) -> None:
    error = mqtt.broker_error(exc, timeout=LONG_TIMEOUT)

    assert expected is (None if error is None else type(error))
    if isinstance(error, BrokerRefused):
        assert isinstance(exc, MQTTConnectError)
        assert exc._code == error.code


@pytest.mark.parametrize(
    ("code", "meaning", "layout_problem"),
    [
        (1, "illegal function", False),
        (2, "illegal data address", True),
        (3, "illegal data value", True),
        (4, "server device failure", False),
        (5, "acknowledge", False),
        (6, "server device busy", False),
        (8, "memory parity error", False),
        (10, "gateway path unavailable", False),
        (11, "gateway target device failed to respond", False),
        (12, "not a standard exception code", False),
    ],
)
def test_exception_codes_have_their_standard_meanings(
    code: int, meaning: str, layout_problem: bool
) -> None:
    refused = DeviceRefused(code, connection="plc", unit=1, function=3, address=0, count=2)

    assert (meaning, layout_problem) == (refused.meaning, refused.is_layout_problem)
    assert f"unit 1 refused function 3 at 0 (count 2): exception code {code}" == str(refused)


async def test_a_line_says_whether_it_is_connected_for_the_agents_state() -> None:
    async with RogueTcpDevice("ok") as device:
        port = device.port
        line = tcp_line(port)
        before = line.connected
        values = await line.read(*READ)
        during = line.connected
        await line.close()

    assert (False, True, False) == (before, during, line.connected)
    assert f"127.0.0.1:{port}" == line.endpoint
    assert values


# -- the adapter's own decoding of register replies ------------------------------------


def _decoded(response_class: type[Any], data: bytes) -> list[int] | type[Exception]:
    """What a reply class makes of a reply's data: its registers, or what it raised."""
    reply = response_class()
    try:
        reply.decode(data)
    except (ModbusIOException, IndexError, struct.error) as exc:
        return ModbusIOException if isinstance(exc, ModbusIOException) else IndexError
    return list(reply.registers)


@given(data=st.binary(max_size=260))
def test_a_register_reply_decodes_as_pymodbus_decodes_it(data: bytes) -> None:
    """Whatever the bytes, short, odd or garbage: the same registers, or the same refusal."""
    for ours, theirs in zip(
        REGISTER_RESPONSES, (ReadHoldingRegistersResponse, ReadInputRegistersResponse), strict=True
    ):
        assert issubclass(ours, theirs)
        assert ours.function_code == theirs.function_code
        assert _decoded(theirs, data) == _decoded(ours, data)
