"""In-memory fakes of the agent's ports, for unit tests of the core.

Each fake satisfies the port it stands in for (checked by mypy, see `_conformance`
below) and does no more than a test needs to say what happened:

- `FakeRegisterBus`: the register bus of the pollers
  (`agent.sources.modbus.poller.RegisterBus`) and of the configurator
  (`agent.cloud.configurator.Bus`). Tables per unit, zeroed until set; a unit can refuse
  chosen address ranges with a Modbus exception code or not answer at all; every request
  is recorded as (unit, function, address, count).
- `FakePublisher`: the MQTT side of delivery (`agent.cloud.delivery.Publisher`). A connected
  flag with an event; `publish` records the message and returns a future that the test
  resolves (`ack`, the PUBACK) or fails (`fail`, `disconnect`).
- `FakeSerialLine`: a serial port as `agent.sources.serial.instrument` uses one
  (its `SerialLine`). The test is the instrument: `feed` is what it says, `written`
  what it was told.
- `FakeTunable`, `FakeDelays`, `FakeLogLevel`: what the configurator may change in the
  agent itself (`agent.cloud.configurator.Tunable`, `Delays`, `LogLevel`).
- `captured_logs`: structlog's events, whatever an earlier `configure` left behind.
- `VirtualTimeLoop`: an event loop whose clock moves only when every task waits for a
  timer, and then straight to the next one: schedules and time-outs run in no time
  and always the same way (`run_in_virtual_time`).

Nothing here imports a protocol library, and production code never imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.sources.serial.instrument import SerialLine
from agent.testing.bus import (
    READ_FUNCTION,
    WRITE_COIL,
    WRITE_REGISTER,
    WRITE_REGISTERS,
    BusRequest,
    FakeRegisterBus,
)
from agent.testing.logs import captured_logs
from agent.testing.publisher import FakePublisher, Published, PublisherOffline, PublishLost
from agent.testing.serial import FakeSerialLine
from agent.testing.settings import FakeDelays, FakeLogLevel, FakeTunable
from agent.testing.time import VirtualTimeLoop, run_in_virtual_time, settle

if TYPE_CHECKING:
    from agent.config.sections import InstrumentLine

# -- each fake satisfies its port: mypy checks this block, nothing runs it ---------------

if TYPE_CHECKING:
    from agent.cloud.configurator import Bus, Delays, LogLevel, Tunable
    from agent.cloud.delivery import Publisher
    from agent.sources.modbus.poller import RegisterBus
    from agent.sources.serial.port import SerialPort

    def _conformance(config: InstrumentLine) -> None:
        register_bus: RegisterBus = FakeRegisterBus()
        settings_bus: Bus = FakeRegisterBus()
        publisher: Publisher = FakePublisher()
        fake_line: SerialLine = FakeSerialLine(print)
        real_line: SerialLine = SerialPort(config, print)
        tunable: Tunable = FakeTunable(1.0)
        delays: Delays = FakeDelays()
        log_level: LogLevel = FakeLogLevel()
        del register_bus, settings_bus, publisher, fake_line, real_line, tunable, delays, log_level


__all__ = [
    "READ_FUNCTION",
    "WRITE_COIL",
    "WRITE_REGISTER",
    "WRITE_REGISTERS",
    "BusRequest",
    "FakeDelays",
    "FakeLogLevel",
    "FakePublisher",
    "FakeRegisterBus",
    "FakeSerialLine",
    "FakeTunable",
    "PublishLost",
    "Published",
    "PublisherOffline",
    "SerialLine",
    "VirtualTimeLoop",
    "captured_logs",
    "run_in_virtual_time",
    "settle",
]
