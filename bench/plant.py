"""The bench's simulated plant, in its own process: ``python -m bench.plant SPEC``.

SPEC is a JSON object: ``transport`` ("tcp" or "rtu"), ``units``, ``points`` (per unit),
``kind`` ("float32" or "uint16"); for RTU also ``device``, ``baudrate`` and
``emulate_line`` (each reply leaves when a real line would have carried the request and
the reply, `EmulatedLine`: a pty carries bytes at memory speed whatever its baud rate).

- TCP: one server per unit, each on its own loopback port, unit id 1: one ``[[modbus]]``
  connection per unit, as separate meters on a plant network are. With
  ``units_per_connection`` N > 1, one server per N units (the last may have fewer), unit
  ids 1..N on each, as the units behind one Modbus TCP gateway are.
- RTU: one server on the serial device with unit ids 1..N.

Each unit's points are consecutive holding registers from 0, their values changing at
every wall-clock second (:mod:`bench.values`). The plant runs in its own process so that
serving requests does not share an interpreter with the subscriber that measures.

It talks to the harness over stdin and stdout, one JSON object per line:

- it prints ``{"event": "ready", "ports": [...]}`` once serving (TCP ports in unit order,
  one per connection);
- ``stats`` on stdin → ``{"event": "stats", "time": T, "units": [[requests, registers], ...]}``
  (read requests and registers read, per unit, since start; T is wall-clock seconds);
- ``pause`` → ``{"event": "paused"}``: the servers are closed, with their connections (the
  agent's polls fail from then on and it backs off; the counters stay readable);
- ``stop``, end of input, SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from pymodbus.pdu import ModbusPDU

from agent.sources.modbus.timer import Timer
from bench import values
from bench.line import unit_turnaround
from sim.plant import PlantServer, Request, SimUnit, serve_rtu, serve_tcp

_SPARE_REGISTERS = 16
_EARLY_WAKE_MARGIN = 0.001  # seconds: asyncio.sleep may wake a little before the second


@dataclass(frozen=True, slots=True)
class PlantSpec:
    transport: str
    units: int
    points: int
    kind: values.Kind
    device: str | None = None
    baudrate: int = 9600
    emulate_line: bool = False
    units_per_connection: int = 1  # tcp: units served on one port, ids 1..N

    @classmethod
    def from_json(cls, text: str) -> PlantSpec:
        return cls(**json.loads(text))


class EmulatedLine:
    """The far end of an emulated RTU line: each reply leaves when a real line would have
    carried it, at the request's arrival + its unit's turnaround (`unit_turnaround`: the
    request's frame, the silence, the reply's frame), to within tens of microseconds.

    The time runs from the request's arrival (pymodbus decoding its last byte), as a unit's
    3.5-character timer does. pymodbus's server answers at once; its serial transport's
    `write` is taken over and `run` writes each reply to the port at its time. So the
    server's own time to answer (two turns of its event loop and more, about 0.1 ms) falls
    within the emulated line's time, as a real unit's work falls within its silence,
    instead of being added to it.
    """

    def __init__(self, baudrate: int) -> None:
        self.baudrate = baudrate
        self._due = 0.0  # when the reply to the request under way leaves
        self._replies: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._port: Any = None  # the pyserial port pymodbus opened

    def arrived(self, request: Request) -> None:
        self._due = time.monotonic() + unit_turnaround(self.baudrate, request.count)

    def attach(self, server: PlantServer) -> None:
        """Take over the writes of `server` (a serial one: pymodbus's SerialTransport)."""
        transport = server.transport
        self._port = transport.sync_serial
        transport.write = self._hold

    async def run(self) -> None:
        timer = Timer()
        try:
            while True:
                due, reply = await self._replies.get()
                await timer.sleep_until(due)
                if self._port.is_open:  # not paused meanwhile
                    self._port.write(reply)
        finally:
            timer.close()

    def _hold(self, reply: bytes) -> None:
        self._replies.put_nowait((self._due, reply))


class LineUnit(SimUnit):
    """A unit on an emulated RTU line (`EmulatedLine`), which it tells of each request."""

    def __init__(self, unit_id: int, *, line: EmulatedLine, max_address: int) -> None:
        super().__init__(unit_id, max_address=max_address)
        self.line = line

    def record(self, pdu: ModbusPDU) -> None:
        super().record(pdu)
        self.line.arrived(self.requests[-1])


class _Counter:
    """Read requests and registers read by one unit, counted from its request log."""

    def __init__(self, unit: SimUnit) -> None:
        self.unit = unit
        self.registers = 0
        self._seen = 0

    def totals(self) -> list[int]:
        log = self.unit.requests
        self.registers += sum(r.count for r in log[self._seen :] if r.function_code in (3, 4))
        self._seen = len(log)
        return [self.unit.read_count, self.registers]


class Plant:
    def __init__(self, spec: PlantSpec) -> None:
        self.spec = spec
        size = spec.points * values.WIDTH[spec.kind] + _SPARE_REGISTERS
        emulated = spec.transport == "rtu" and spec.emulate_line
        self.line = EmulatedLine(spec.baudrate) if emulated else None
        if self.line is not None:
            self.units: list[SimUnit] = [
                LineUnit(n + 1, line=self.line, max_address=size) for n in range(spec.units)
            ]
        elif spec.transport == "rtu":
            self.units = [SimUnit(n + 1, max_address=size) for n in range(spec.units)]
        else:
            per = spec.units_per_connection
            self.units = [SimUnit(n % per + 1, max_address=size) for n in range(spec.units)]
        self._counters = [_Counter(unit) for unit in self.units]
        self.servers: list[PlantServer] = []

    def update(self, tick: int) -> None:
        """Every unit's values for wall-clock second `tick`."""
        points = self.spec.points
        for n, unit in enumerate(self.units):
            first = n * points
            unit.set_registers(
                "holding", 0, values.registers(self.spec.kind, tick, range(first, first + points))
            )

    async def serve(self, stack: contextlib.AsyncExitStack) -> list[int]:
        """Start the servers; return the TCP ports in unit order, one a connection (none
        for RTU)."""
        stack.push_async_callback(self.pause)
        if self.spec.transport == "rtu":
            assert self.spec.device is not None
            server = await serve_rtu(self.units, self.spec.device, self.spec.baudrate)
            self.servers.append(server)
            if self.line is not None:
                self.line.attach(server)
            return []
        per = self.spec.units_per_connection
        for first in range(0, len(self.units), per):
            server = await serve_tcp(self.units[first : first + per])
            self.servers.append(server)
        return [server.port for server in self.servers]

    async def pause(self) -> None:
        """Stop serving: close every server and its connections (counters stay)."""
        servers, self.servers = self.servers, []
        for server in reversed(servers):
            await server.stop()

    def stats(self) -> dict[str, Any]:
        return {
            "event": "stats",
            "time": time.time(),
            "units": [counter.totals() for counter in self._counters],
        }

    async def change_values(self) -> None:
        """At each wall-clock second, the values of that second."""
        while True:
            now = time.time()
            await asyncio.sleep(int(now) + 1 - now + _EARLY_WAKE_MARGIN)
            # Woken early (the loop's clock is not the wall clock): the same second again,
            # and the next turn sleeps the rest of it. A value is never served early.
            self.update(int(time.time()))


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def _commands(plant: Plant, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).strip():
        if line == b"stats":
            _say(plant.stats())
        elif line == b"pause":
            await plant.pause()
            _say({"event": "paused"})
        elif line == b"stop":
            break
        else:
            _say({"event": "error", "message": f"unknown command {line.decode()!r}"})
    stop.set()


async def run(spec: PlantSpec) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    plant = Plant(spec)
    plant.update(int(time.time()))
    async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as group:
        ports = await plant.serve(stack)
        _say({"event": "ready", "ports": ports})
        tasks = [
            group.create_task(plant.change_values(), name="values"),
            group.create_task(_commands(plant, stop), name="commands"),
        ]
        if plant.line is not None:
            tasks.append(group.create_task(plant.line.run(), name="line"))
        await stop.wait()
        for task in tasks:
            task.cancel()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m bench.plant SPEC_JSON")
    asyncio.run(run(PlantSpec.from_json(args[0])))


if __name__ == "__main__":
    main()
