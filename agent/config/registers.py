"""Rules for one register reference (a point's or a setting's `address`, `table`,
`type`, `length`, `bit`, `scale` and `offset`), and what they resolve to.

Pure functions of one `RegisterRef`: `agent.config.checks` reports their problems with
the key, `agent.config.resolve` uses them once the problems are none.
"""

from __future__ import annotations

import math
from typing import cast

from agent.config.schema import RegisterRef, SerialConfig, SerialPointConfig
from agent.pipeline.readings import ValueType
from agent.sources.modbus.points import (
    PointType,
    Table,
    natural_value_type,
    parse_classic_address,
    register_count,
)

Problems = list[tuple[str, str]]

# The data shape types a point may be published as, by what it decodes to.
SHAPES_FOR: dict[str, frozenset[str]] = {
    "integer": frozenset({"integer", "float", "string", "boolean", "hex"}),
    "float": frozenset({"float", "integer", "string"}),
    "bool": frozenset({"boolean", "integer", "string"}),
    "string": frozenset({"string"}),
    "hex": frozenset({"hex", "string"}),
}


def location(ref: RegisterRef) -> tuple[Table, int] | None:
    """(table, 0-based offset) of a register reference; None when it has none."""
    if ref.address is None:
        return None
    if isinstance(ref.address, str):
        if ref.table is not None:
            return None
        try:
            return parse_classic_address(ref.address)
        except ValueError:
            return None
    if ref.table is None or not 0 <= ref.address <= 65535:
        return None
    return ref.table, ref.address


def point_type(ref: RegisterRef, table: Table) -> PointType:
    """The register type: as given, else bool in a bit table and uint16 otherwise."""
    if ref.type is not None:
        return ref.type
    return "bool" if table.is_bits else "uint16"


def width(ref: RegisterRef, table: Table) -> int:
    """Registers (or bits) the value occupies."""
    return 1 if table.is_bits else register_count(point_type(ref, table), ref.length)


def shape(ref: RegisterRef, table: Table) -> ValueType:
    """The data shape type its readings are published as: the point's `value_type`, else
    boolean for a bit, else the register type's natural one."""
    given = getattr(ref, "value_type", None)
    if given is not None:
        return cast(ValueType, given)
    if ref.bit is not None:
        return "boolean"
    scaled = ref.scale is not None or ref.offset is not None
    return natural_value_type(point_type(ref, table), scaled=scaled)


def decodes_to(ref: RegisterRef, table: Table) -> str:
    kind = point_type(ref, table)
    if ref.bit is not None or kind == "bool":
        return "bool"
    if kind in ("string", "hex"):
        return kind
    return "float" if kind.startswith("float") else "integer"


def register_problems(ref: RegisterRef) -> Problems:
    """(key, message) pairs for a register reference on its own."""
    found = _address_problems(ref)
    where = location(ref)
    if where is None:
        return found
    table, offset = where
    kind = point_type(ref, table)
    if table.is_bits:
        if kind != "bool":
            found.append(("type", f"the {table} table holds bits: type must be bool"))
        if ref.bit is not None:
            found.append(
                (
                    "bit",
                    f"`bit` selects a bit of a register; the {table} table already holds "
                    "single bits",
                )
            )
    if kind == "string" and ref.length is None:
        found.append(("length", "type string needs `length` in registers"))
    if kind not in ("string", "hex") and ref.length is not None:
        found.append(("length", "`length` applies to string and hex only"))
    if offset + width(ref, table) > 65536:
        found.append(("address", "the value runs past the end of the table"))
    found += _scale_problems(ref, kind)
    return found


def _address_problems(ref: RegisterRef) -> Problems:
    if ref.address is None:
        return [("address", "required key is missing")]
    if isinstance(ref.address, str):
        if ref.table is not None:
            return [
                (
                    "address",
                    "with `table`, give a 0-based integer address; "
                    'a string address is classic notation ("40001")',
                )
            ]
        try:
            parse_classic_address(ref.address)
        except ValueError as exc:
            return [("address", str(exc))]
        return []
    if ref.table is None:
        return [("table", "an integer address needs `table` (coil, discrete, input or holding)")]
    if not 0 <= ref.address <= 65535:
        return [("address", f"{ref.address} is outside 0..65535")]
    return []


def _scale_problems(ref: RegisterRef, kind: PointType) -> Problems:
    found: Problems = []
    for key in ("scale", "offset"):
        value = getattr(ref, key)
        if value is not None and not math.isfinite(value):
            found.append((key, "must be a finite number"))
    scaled = ref.scale is not None or ref.offset is not None
    if ref.bit is not None and scaled:
        found.append(("scale", "a bit is true or false: scale and offset do not apply"))
    if ref.bit is not None and kind not in ("bool", "int16", "uint16"):
        found.append(("bit", "`bit` selects a bit of one register: use type bool"))
    if ref.scale == 0:
        found.append(("scale", "must not be 0"))
    if scaled and kind in ("bool", "string", "hex"):
        found.append(("scale", f"scale and offset apply to numbers, not {kind}"))
    return found


def instrument_shape(point: SerialPointConfig, instrument: SerialConfig) -> ValueType:
    """An instrument point's data shape type: its `value_type`, else a coordinate for the
    NMEA coordinate, an integer for satellites and fix quality, a float otherwise."""
    nmea = instrument.format == "nmea"
    if point.value_type is not None:
        return point.value_type
    if nmea and point.field == "coordinate":
        return "coordinate"
    if nmea and point.field in ("satellites", "fix_quality"):
        return "integer"
    return "float"
