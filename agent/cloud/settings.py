"""Settings the cloud may change: validation of a requested value, and its register form.

Pure functions over the declarations in `[[config_groups]]`: nothing here talks to a
device. A value that fails `Setting.accept` is never written anywhere.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from agent.config.model import SettingConfig
from agent.errors import AgentError, RejectedInput
from agent.sources.modbus.decode import (
    INTEGER_RANGES,
    decode_registers,
    encode_registers,
    scale_value,
    unscale_value,
)
from agent.sources.modbus.points import ByteOrder, PointType, Table, register_count

JsonScalar = bool | int | float | str
LOG_LEVELS = ("debug", "info", "warning", "error")


class RejectedSetting(RejectedInput):
    """A requested value the declaration does not allow."""


class UnreportableValue(AgentError):
    """The device holds a value the cloud cannot be told (NaN or an infinity)."""


@dataclass(frozen=True, slots=True)
class ModbusTarget:
    device: str
    table: Table
    address: int
    type: PointType
    length: int | None
    byte_order: ByteOrder

    @property
    def count(self) -> int:
        return 1 if self.table.is_bits else register_count(self.type, self.length)


class Setting:
    """One declared setting of one group."""

    def __init__(
        self, group: str, config: SettingConfig, *, device_byte_order: ByteOrder = "ABCD"
    ) -> None:
        self.group = group
        self.id = config.id
        self.config = config
        self.agent = config.agent
        self.target: ModbusTarget | None = None
        if config.agent is None:
            assert config.device is not None
            table, address = config.location
            self.target = ModbusTarget(
                config.device,
                table,
                address,
                config.point_type,
                config.length,
                config.byte_order or device_byte_order,
            )
        self._pattern = re.compile(config.pattern) if config.pattern is not None else None

    def accept(self, value: object) -> JsonScalar:
        """The value to apply, normalised; RejectedSetting with the reason otherwise."""
        if self.agent is not None:
            return self._accept_agent(value)
        assert self.target is not None
        kind = self.target.type
        if kind == "bool":
            if value is True or value is False:
                return value
            if type(value) is int and value in (0, 1):
                return bool(value)
            raise RejectedSetting(f"{self.id}: expected true/false or 1/0, got {value!r}")
        if kind in ("string", "hex"):
            if not isinstance(value, str):
                raise RejectedSetting(f"{self.id}: expected a string, got {value!r}")
            self._check_choice(value)
            if self._pattern is not None and not self._pattern.fullmatch(value):
                raise RejectedSetting(f"{self.id}: {value!r} does not match the pattern")
            try:
                encode_registers(
                    value, kind, byte_order=self.target.byte_order, length=self._text_length()
                )
            except ValueError as exc:
                raise RejectedSetting(f"{self.id}: {exc}") from None
            return value
        number = _number(value)
        if number is None:
            raise RejectedSetting(f"{self.id}: expected a number, got {value!r}")
        scaled = self.config.scale is not None or self.config.offset is not None
        if (
            not kind.startswith("float")
            and not scaled
            and isinstance(number, float)
            and not number.is_integer()
        ):
            raise RejectedSetting(f"{self.id}: expected a whole number, got {value!r}")
        self._check_bounds(number)
        self._check_choice(number)
        try:
            self.encode(number)
        except ValueError as exc:
            raise RejectedSetting(f"{self.id}: {exc}") from None
        return number

    def encode(self, value: JsonScalar) -> list[int] | bool:
        """Registers to write (or the coil state) for an accepted value."""
        assert self.target is not None
        target = self.target
        if target.table.is_bits:
            return bool(value)
        if target.type == "bool":
            return [1 if value else 0]
        if target.type in ("string", "hex"):
            return encode_registers(
                str(value), target.type, byte_order=target.byte_order, length=self._text_length()
            )
        assert isinstance(value, int | float)
        raw: int | float = value
        if self.config.scale is not None or self.config.offset is not None:
            if target.type.startswith("float"):
                raw = (value - (self.config.offset or 0.0)) / (self.config.scale or 1.0)
            else:
                raw = unscale_value(
                    value,
                    scale=self.config.scale,
                    offset=self.config.offset,
                    point_type=target.type,
                )
        return encode_registers(raw, target.type, byte_order=target.byte_order)

    def decode(self, raw: list[int] | list[bool], *, form: str | None = None) -> JsonScalar:
        """The value a device holds, as it is reported to the cloud.

        `form` is how the cloud wrote the expected value ("integer" for 1/0 coils),
        so that expected and reported compare equal in the cloud.
        """
        assert self.target is not None
        target = self.target
        if target.table.is_bits or target.type == "bool":
            state = bool(raw[0])
            as_integer = (form or self.config.value_type or "integer") == "integer"
            return int(state) if as_integer else state
        value = decode_registers([int(r) for r in raw], target.type, byte_order=target.byte_order)
        if isinstance(value, bool | str):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise UnreportableValue(f"{self.id}: the device holds {value}, which JSON cannot carry")
        if target.type == "float32" and isinstance(value, float):
            value = _shortest_float32(value)
        if self.config.scale is not None or self.config.offset is not None:
            value = scale_value(value, scale=self.config.scale, offset=self.config.offset)
            if isinstance(value, float):
                value = round(value, 10)
        return value

    def _text_length(self) -> int | None:
        """Registers a string or hex value takes: a hex value without `length` is read as
        one register, so it is written as one register too."""
        assert self.target is not None
        if self.target.type == "hex":
            return self.target.count
        return self.target.length

    def _accept_agent(self, value: object) -> JsonScalar:
        if self.agent == "log.level":
            if value not in LOG_LEVELS:
                raise RejectedSetting(f"{self.id}: expected one of {', '.join(LOG_LEVELS)}")
            assert isinstance(value, str)
            return value
        number = _number(value)
        if number is None:
            raise RejectedSetting(f"{self.id}: expected a number of seconds, got {value!r}")
        if not _fits_float(number):
            raise RejectedSetting(f"{self.id}: {number!r} is out of range")
        if self.agent is not None and self.agent.endswith(".interval") and number <= 0:
            raise RejectedSetting(f"{self.id}: an interval must be above 0")
        if number < 0:
            raise RejectedSetting(f"{self.id}: must not be negative")
        self._check_bounds(number)
        self._check_choice(number)
        return number

    def _check_bounds(self, number: int | float) -> None:
        low, high = self.config.min, self.config.max
        if low is not None and number < low:
            raise RejectedSetting(f"{self.id}: {number!r} is below the minimum {low:g}")
        if high is not None and number > high:
            raise RejectedSetting(f"{self.id}: {number!r} is above the maximum {high:g}")
        if (
            self.target is not None
            and self.target.type in INTEGER_RANGES
            and (self.config.scale is None and self.config.offset is None)
        ):
            type_low, type_high = INTEGER_RANGES[self.target.type]
            if not type_low <= number <= type_high:
                raise RejectedSetting(f"{self.id}: {number!r} does not fit {self.target.type}")

    def _check_choice(self, value: JsonScalar) -> None:
        allowed = self.config.enum
        if allowed is not None and value not in allowed:
            raise RejectedSetting(f"{self.id}: {value!r} is not one of {allowed!r}")


def form_of(value: object) -> str | None:
    """How the cloud wrote a coil's value: "integer" for 1/0, "boolean" for true/false."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return None


def _shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32: a setting of 0.1 written to a
    float32 register reads back as 0.10000000149011612, and is reported as 0.1."""
    packed = struct.pack(">f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == packed:
                return candidate
        except OverflowError:  # rounded past the largest float32
            continue
    return value


def _fits_float(number: int | float) -> bool:
    """False for an integer beyond float range (a 400-digit JSON number)."""
    try:
        float(number)
    except OverflowError:
        return False
    return True


def _number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
