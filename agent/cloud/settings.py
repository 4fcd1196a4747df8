"""Settings the cloud may change: validation of a requested value, and its register form.

Pure functions over the declarations in `[[config_groups]]`: nothing here talks to a
device. A value that fails `Setting.accept` is never written anywhere.
"""

from __future__ import annotations

import math
import struct

from agent.config.model import AgentTarget, RegisterTarget
from agent.config.model import Setting as Declared
from agent.errors import AgentError, RejectedInput
from agent.sources.modbus.decode import (
    INTEGER_RANGES,
    decode_registers,
    encode_registers,
    unscale_value,
)
from agent.sources.modbus.points import register_count
from agent.sources.source import places, scale

JsonScalar = bool | int | float | str
LOG_LEVELS = ("debug", "info", "warning", "error")


class RejectedSetting(RejectedInput):
    """A requested value the declaration does not allow."""


class UnreportableValue(AgentError):
    """The device holds a value the cloud cannot be told (NaN or an infinity)."""


class RegisterSetting:
    """A declared setting written to a device's coil or holding registers."""

    def __init__(self, declared: Declared, target: RegisterTarget) -> None:
        self.group = declared.group
        self.id = declared.id
        self.declared = declared
        self.target = target
        self.count = 1 if target.table.is_bits else register_count(target.type, target.length)
        self._scaled = declared.scale is not None or declared.offset is not None

    def accept(self, value: object) -> JsonScalar:
        """The value to apply, normalised; RejectedSetting with the reason otherwise."""
        kind = self.target.type
        if kind == "bool":
            if value is True or value is False:
                return value
            if type(value) is int and value in (0, 1):
                return bool(value)
            raise RejectedSetting(f"{self.id}: expected true/false or 1/0, got {value!r}")
        if kind in ("string", "hex"):
            return self._accept_text(value)
        number = _number(value)
        if number is None:
            raise RejectedSetting(f"{self.id}: expected a number, got {value!r}")
        if (
            not kind.startswith("float")
            and not self._scaled
            and isinstance(number, float)
            and not number.is_integer()
        ):
            raise RejectedSetting(f"{self.id}: expected a whole number, got {value!r}")
        _check_bounds(self.declared, number)
        if kind in INTEGER_RANGES and not self._scaled:
            low, high = INTEGER_RANGES[kind]
            if not low <= number <= high:
                raise RejectedSetting(f"{self.id}: {number!r} does not fit {kind}")
        _check_choice(self.declared, number)
        try:
            self.encode(number)
        except ValueError as exc:
            raise RejectedSetting(f"{self.id}: {exc}") from None
        return number

    def _accept_text(self, value: object) -> JsonScalar:
        if not isinstance(value, str):
            raise RejectedSetting(f"{self.id}: expected a string, got {value!r}")
        _check_choice(self.declared, value)
        pattern = self.declared.pattern
        if pattern is not None and not pattern.fullmatch(value):
            raise RejectedSetting(f"{self.id}: {value!r} does not match the pattern")
        try:
            encode_registers(
                value,
                self.target.type,
                byte_order=self.target.byte_order,
                length=self._text_length(),
            )
        except ValueError as exc:
            raise RejectedSetting(f"{self.id}: {exc}") from None
        return value

    def encode(self, value: JsonScalar) -> list[int] | bool:
        """Registers to write (or the coil state) for an accepted value."""
        target = self.target
        if target.table.is_bits:
            return bool(value)
        if target.type == "bool":
            return [1 if value else 0]
        if target.type in ("string", "hex"):
            return encode_registers(
                str(value), target.type, byte_order=target.byte_order, length=self._text_length()
            )
        if not isinstance(value, int | float):
            raise ValueError(f"{self.id}: a number is needed, got {value!r}")
        raw: int | float = value
        scale, offset = self.declared.scale, self.declared.offset
        if self._scaled:
            if target.type.startswith("float"):
                raw = (value - (offset or 0.0)) / (scale or 1.0)
            else:
                raw = unscale_value(value, scale=scale, offset=offset, point_type=target.type)
        return encode_registers(raw, target.type, byte_order=target.byte_order)

    def decode(self, raw: list[int] | list[bool], *, form: str | None = None) -> JsonScalar:
        """The value a device holds, as it is reported to the cloud.

        `form` is how the cloud wrote the expected value ("integer" for 1/0 coils),
        so that expected and reported compare equal in the cloud.
        """
        target = self.target
        if target.table.is_bits or target.type == "bool":
            state = bool(raw[0])
            as_integer = (form or self.declared.value_type or "integer") == "integer"
            return int(state) if as_integer else state
        value = decode_registers([int(r) for r in raw], target.type, byte_order=target.byte_order)
        if isinstance(value, bool | str):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise UnreportableValue(f"{self.id}: the device holds {value}, which JSON cannot carry")
        if target.type == "float32" and isinstance(value, float):
            value = _shortest_float32(value)
        # A float read back has the places of its shortest decimal (float32: see above).
        return scale(
            value,
            scale=self.declared.scale,
            offset=self.declared.offset,
            raw_places=places(value) if isinstance(value, float) else 0,
        )

    def _text_length(self) -> int | None:
        """Registers a string or hex value takes: a hex value without `length` is read as
        one register, so it is written as one register too."""
        return self.count if self.target.type == "hex" else self.target.length


class AgentSetting:
    """A declared setting of the agent itself: a device's interval, a bucket's delay, the
    log level."""

    def __init__(self, declared: Declared, target: AgentTarget) -> None:
        self.group = declared.group
        self.id = declared.id
        self.declared = declared
        self.target = target

    def accept(self, value: object) -> JsonScalar:
        """The value to apply, normalised; RejectedSetting with the reason otherwise."""
        if self.target.knob == "log.level":
            if not isinstance(value, str) or value not in LOG_LEVELS:
                raise RejectedSetting(f"{self.id}: expected one of {', '.join(LOG_LEVELS)}")
            return value
        number = _number(value)
        if number is None:
            raise RejectedSetting(f"{self.id}: expected a number of seconds, got {value!r}")
        if not _fits_float(number):
            raise RejectedSetting(f"{self.id}: {number!r} is out of range")
        if self.target.knob == "device.interval" and number <= 0:
            raise RejectedSetting(f"{self.id}: an interval must be above 0")
        if number < 0:
            raise RejectedSetting(f"{self.id}: must not be negative")
        _check_bounds(self.declared, number)
        _check_choice(self.declared, number)
        return number


Setting = RegisterSetting | AgentSetting


def setting_for(declared: Declared) -> Setting:
    if isinstance(declared.target, AgentTarget):
        return AgentSetting(declared, declared.target)
    return RegisterSetting(declared, declared.target)


def _check_bounds(declared: Declared, number: int | float) -> None:
    low, high = declared.min, declared.max
    if low is not None and number < low:
        raise RejectedSetting(f"{declared.id}: {number!r} is below the minimum {low:g}")
    if high is not None and number > high:
        raise RejectedSetting(f"{declared.id}: {number!r} is above the maximum {high:g}")


def _check_choice(declared: Declared, value: JsonScalar) -> None:
    allowed = declared.enum
    if allowed is not None and value not in allowed:
        raise RejectedSetting(f"{declared.id}: {value!r} is not one of {list(allowed)!r}")


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
