"""The checks of `[[derived]]` points and of aggregates, and what they resolve to.

A derived point's expression names other points by id (agent.pipeline.expressions):
Modbus points of any device, and derived points declared before it (so there are no
cycles). An id that two buckets share cannot be named (rename one). Only numbers and
booleans can be used; a point published as a string, hex or coordinate cannot.

An aggregate (`aggregate = { window, functions }`) applies to a point whose readings are
numbers; each function publishes its own id, `<id>_<function>` unless `names` says
otherwise, which must be free in the point's bucket like any point id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.config.registers import Problems
from agent.config.schema import AggregateConfig, DerivedConfig
from agent.pipeline.expressions import Expression, ExpressionError, Kind, compile_expression
from agent.pipeline.readings import ValueType

NUMBER_SHAPES = frozenset({"integer", "float"})
SHAPES_OF_KIND: dict[Kind, frozenset[str]] = {
    "number": frozenset({"float", "integer", "string"}),
    "boolean": frozenset({"boolean", "integer", "string"}),
}


@dataclass
class Inputs:
    """What a derived point may name: each id's kind, its interval, where it is declared."""

    kinds: dict[str, Kind | None] = field(default_factory=dict)  # None: not a number or boolean
    intervals: dict[str, float] = field(default_factory=dict)
    declared: dict[str, list[str]] = field(default_factory=dict)  # id -> the keys naming it
    _usable: dict[str, Kind] = field(default_factory=dict)  # kept as ids are added

    def add(self, point_id: str, shape: ValueType, interval: float, key: str) -> None:
        kind: Kind | None = None
        if shape in NUMBER_SHAPES:
            kind = "number"
        elif shape == "boolean":
            kind = "boolean"
        self.kinds[point_id] = kind
        self.intervals[point_id] = max(interval, self.intervals.get(point_id, 0.0))
        self.declared.setdefault(point_id, []).append(key)
        if kind is not None and len(self.declared[point_id]) == 1:
            self._usable[point_id] = kind
        else:
            self._usable.pop(point_id, None)

    def usable(self) -> dict[str, Kind]:
        """The ids an expression may name: declared once, a number or a boolean."""
        return self._usable


def aggregate_ids(point_id: str, aggregate: AggregateConfig) -> dict[str, str]:
    """function -> the id it publishes."""
    return {f: aggregate.names.get(f, f"{point_id}_{f}") for f in aggregate.functions}


def aggregate_problems(aggregate: AggregateConfig, shape: ValueType) -> Problems:
    """(sub-key, message) for a point's aggregate."""
    found: Problems = []
    if shape not in NUMBER_SHAPES:
        found.append(("aggregate", f"aggregates apply to numbers; this point is a {shape}"))
    unknown = set(aggregate.names) - set(aggregate.functions)
    if unknown:
        found.append(
            (
                "aggregate.names",
                f"names functions the aggregate lacks: {', '.join(sorted(unknown))}",
            )
        )
    return found


def compile_derived(config: DerivedConfig, inputs: Inputs) -> Expression:
    """The expression compiled against what it may name; raises ExpressionError."""
    known = inputs.usable()
    try:
        return compile_expression(config.expression, known)
    except ExpressionError as exc:
        raise ExpressionError(_explained(str(exc), config.expression, inputs)) from None


def _explained(message: str, text: str, inputs: Inputs) -> str:
    """An unknown name that is declared but cannot be used: why."""
    for point_id, kind in inputs.kinds.items():
        if point_id not in text or f"'{point_id}'" not in message:
            continue
        if len(inputs.declared[point_id]) > 1:
            where = ", ".join(inputs.declared[point_id])
            return f"{point_id!r} names points in several buckets ({where}): rename one"
        if kind is None:
            return f"{point_id!r} is not a number or a boolean: it cannot be computed with"
    return message


def derived_problems(config: DerivedConfig, inputs: Inputs) -> tuple[Problems, Expression | None]:
    """(sub-key, message) for one derived point, and its expression if it compiles."""
    try:
        expression = compile_derived(config, inputs)
    except ExpressionError as exc:
        return [("expression", str(exc))], None
    found: Problems = []
    shape = result_shape(config, expression)
    if shape not in SHAPES_OF_KIND[expression.kind]:
        found.append(
            (
                "value_type",
                f"the expression gives a {expression.kind}: it can be published as "
                f"{', '.join(sorted(SHAPES_OF_KIND[expression.kind]))}",
            )
        )
    if config.aggregate is not None:
        found += aggregate_problems(config.aggregate, shape)
    return found, expression


def result_shape(config: DerivedConfig, expression: Expression) -> ValueType:
    if config.value_type is not None:
        return config.value_type
    return "boolean" if expression.kind == "boolean" else "float"


def max_input_age(
    config: DerivedConfig, expression: Expression, intervals: Mapping[str, float]
) -> float:
    """The configured age, else twice the slowest input's interval."""
    if config.max_input_age is not None:
        return config.max_input_age
    return 2 * max((intervals.get(i, 1.0) for i in expression.inputs), default=1.0)
