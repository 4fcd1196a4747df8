"""The Modbus adapter: one pymodbus client per `[[modbus]]` connection.

Every request on a connection goes through `ModbusLine.request`, one at a time (a
serial line or a TCP endpoint answers one request at a time), with the connection's
pauses applied. pymodbus reports device exceptions as values and transport failures as
exceptions; both are translated here, once, into the agent's errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.config.schema import ModbusConfig
from agent.errors import DeviceRefused, DeviceTimeout, DeviceUnreachable
from agent.sources.modbus.points import Table

log = structlog.get_logger("agent.modbus")

_READ_FUNCTION = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
_RTU_SILENCE_CHARS = 3.5  # inter-frame silence, in character times
_BITS_PER_CHAR = 11  # start + 8 data + parity/stop: the spec's worst case


class ModbusLine:
    """One connection (TCP endpoint or serial line), shared by all its devices."""

    def __init__(self, config: ModbusConfig) -> None:
        self.name = config.name
        self._config = config
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._last_request_end = 0.0
        self._delay = config.request_delay
        if config.transport == "rtu":
            self._delay = max(self._delay, _RTU_SILENCE_CHARS * _BITS_PER_CHAR / config.baudrate)

    async def read(self, unit: int, table: Table, start: int, count: int) -> list[int] | list[bool]:
        """Registers (or bits) `start` to `start+count` of `unit`; raises DeviceError."""
        function = _READ_FUNCTION[table]

        async def call(client: Any) -> Any:
            if table is Table.HOLDING:
                return await client.read_holding_registers(start, count=count, device_id=unit)
            if table is Table.INPUT:
                return await client.read_input_registers(start, count=count, device_id=unit)
            if table is Table.COIL:
                return await client.read_coils(start, count=count, device_id=unit)
            return await client.read_discrete_inputs(start, count=count, device_id=unit)

        response = await self._request(
            call, unit=unit, function=function, address=start, count=count
        )
        if table.is_bits:
            return list(response.bits[:count])
        return list(response.registers)

    async def write_registers(self, unit: int, start: int, values: Sequence[int]) -> None:
        """Write holding registers: function 6 for one, 16 for several."""

        async def call(client: Any) -> Any:
            if len(values) == 1:
                return await client.write_register(start, values[0], device_id=unit)
            return await client.write_registers(start, list(values), device_id=unit)

        await self._request(
            call,
            unit=unit,
            function=6 if len(values) == 1 else 16,
            address=start,
            count=len(values),
        )

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        async def call(client: Any) -> Any:
            return await client.write_coil(address, value, device_id=unit)

        await self._request(call, unit=unit, function=5, address=address, count=1)

    async def end_cycle(self) -> None:
        """Called after a device's poll cycle: honours `close_after_cycle`."""
        if self._config.close_after_cycle:
            async with self._lock:
                self._close()

    async def close(self) -> None:
        async with self._lock:
            self._close()

    async def _request(
        self,
        call: Callable[[Any], Awaitable[Any]],
        *,
        unit: int,
        function: int,
        address: int,
        count: int,
    ) -> Any:
        async with self._lock:
            client = await self._connected()
            pause = self._last_request_end + self._delay - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            try:
                # pymodbus applies its own time-out; ours is the backstop.
                async with asyncio.timeout(self._config.timeout * 2 + 1):
                    response = await call(client)
                # Python 3.11's wait_for (inside pymodbus) can swallow a cancellation that
                # races with the response: honour it here.
                _raise_if_cancelled()
            except (TimeoutError, ModbusIOException) as exc:
                _raise_if_cancelled()
                raise DeviceTimeout(
                    f"unit {unit} did not answer function {function} at {address}"
                    f" within {self._config.timeout}s",
                    connection=self.name,
                    unit=unit,
                ) from exc
            except ConnectionException as exc:
                _raise_if_cancelled()
                self._close()
                raise DeviceUnreachable(
                    f"connection lost: {exc}", connection=self.name, unit=unit
                ) from exc
            except ModbusException as exc:
                _raise_if_cancelled()
                raise DeviceTimeout(
                    f"bad response: {exc}", connection=self.name, unit=unit
                ) from exc
            finally:
                self._last_request_end = time.monotonic()
            if response.isError():
                raise DeviceRefused(
                    int(getattr(response, "exception_code", 0)),
                    connection=self.name,
                    unit=unit,
                    function=function,
                    address=address,
                    count=count,
                )
            return response

    async def _connected(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._close()
        config = self._config
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        # reconnect_delay=0: pymodbus does not reconnect by itself; the pollers' back-off
        # decides when to try again. retries=0: a failed read is reported, not repeated.
        if config.transport == "tcp":
            assert config.host is not None
            client = AsyncModbusTcpClient(
                config.host,
                port=config.port,
                timeout=config.timeout,
                retries=0,
                reconnect_delay=0,
                name=config.name,
            )
        else:
            assert config.device is not None
            client = AsyncModbusSerialClient(
                config.device,
                baudrate=config.baudrate,
                parity=config.parity,
                bytesize=config.bytesize,
                stopbits=config.stopbits,
                timeout=config.timeout,
                retries=0,
                reconnect_delay=0,
                name=config.name,
            )
        where = f"{config.host}:{config.port}" if config.transport == "tcp" else config.device
        try:
            async with asyncio.timeout(config.timeout * 2 + 1):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            client.close()
            raise DeviceUnreachable(
                f"cannot connect to {where}: {exc}", connection=self.name
            ) from exc
        if not ok:
            client.close()
            raise DeviceUnreachable(f"cannot connect to {where}", connection=self.name)
        log.info("modbus_connected", connection=self.name, endpoint=where)
        self._client = client
        if config.connect_delay:
            await asyncio.sleep(config.connect_delay)
        self._last_request_end = time.monotonic()
        return client

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _raise_if_cancelled() -> None:
    """pymodbus may lose our task's cancellation or turn it into its own error; undo that."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
