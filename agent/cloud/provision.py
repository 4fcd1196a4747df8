"""The cloud's schema from the gateway's config: which data buckets and data shapes the
config will publish into, compared with what the thing has.

`wanted(config)` is every bucket the agent publishes into (the devices', the
instruments', the health bucket) with each point's data shape: its id, value type,
alias and unit. `compare(wanted, have)` gives the changes, each one of:

- create: a bucket (with its shapes) or a shape the thing lacks;
- replace: a shape of another value type, alias or unit. The API cannot update a shape:
  it must be deleted and created again, which loses its history, so only `--force` does;
- delete: a shape or bucket the config no longer has (only `--prune` does).

Pure: the REST calls are in `agent.cloud.rest`, the command in `agent.service.cloud`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agent.config import Config
from agent.config.model import Aggregate
from agent.errors import PaasError
from agent.pipeline.readings import ValueType

_PRUNED = "(not in the config: apply --prune deletes it)"


@dataclass(frozen=True)
class Shape:
    value_type: str
    alias: str | None = None
    unit: str | None = None

    def body(self, shape_id: str) -> dict[str, Any]:
        """As the API takes it (Create Data Shape, and a bucket's dataShapes)."""
        body: dict[str, Any] = {"id": shape_id, "valueType": self.value_type}
        if self.alias is not None:
            body["alias"] = self.alias
        if self.unit is not None:
            body["unit"] = self.unit
        return body

    def differs(self, other: Shape) -> list[str]:
        """What differs, for the plan: e.g. ["valueType integer → float"]."""
        found = []
        if self.value_type != other.value_type:
            found.append(f"valueType {other.value_type} → {self.value_type}")
        for name in ("alias", "unit"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and mine != theirs:
                found.append(f"{name} {theirs!r} → {mine!r}")
        return found


Buckets = dict[str, dict[str, Shape]]  # bucket id → shape id → shape


@dataclass(frozen=True)
class Change:
    action: Literal["create", "replace", "delete"]
    bucket: str
    shape: str | None  # None: the bucket as a whole
    wanted: Shape | None = None
    had: Shape | None = None
    shapes: Mapping[str, Shape] = field(default_factory=dict)  # a bucket to create: its shapes

    def line(self) -> str:
        if self.shape is None:
            sign = {"create": "+", "delete": "-", "replace": "-/+"}[self.action]
            size = f" ({len(self.shapes)} shapes)" if self.action == "create" else ""
            return f"  {sign} bucket {self.bucket}{size}"
        if self.action == "create":
            assert self.wanted is not None
            return f"      + {self.shape}  {_described(self.wanted)}"
        if self.action == "replace":
            assert self.wanted is not None
            assert self.had is not None
            return (
                f"      -/+ {self.shape}  {', '.join(self.wanted.differs(self.had))}"
                "  (the API cannot update a shape: apply --force deletes and re-creates it, "
                "losing its history)"
            )
        assert self.had is not None
        return f"      - {self.shape}  {self.had.value_type}  {_PRUNED}"


def _described(shape: Shape) -> str:
    extra = [
        f"{name} {value!r}"
        for name, value in (("alias", shape.alias), ("unit", shape.unit))
        if value
    ]
    return shape.value_type + (f" ({', '.join(extra)})" if extra else "")


class _Published(Protocol):
    """A Modbus point or a derived point, as far as its shapes go."""

    @property
    def id(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def shape(self) -> ValueType: ...
    @property
    def alias(self) -> str | None: ...
    @property
    def unit(self) -> str | None: ...
    @property
    def publish(self) -> bool: ...
    @property
    def aggregate(self) -> Aggregate | None: ...


def wanted(config: Config, health: Mapping[str, ValueType]) -> Buckets:
    """Every bucket and data shape the config publishes into; `health`: the health
    bucket's shapes (agent.service.health), if the config has one."""
    buckets: Buckets = {}
    published: list[_Published] = [p for _, d in config.all_devices() for p in d.points]
    published += [p for i in config.instruments for p in i.points]
    published += config.derived
    for point in published:
        shapes = buckets.setdefault(point.bucket, {})
        if point.publish:
            shapes[point.id] = Shape(point.shape, point.alias, point.unit)
        if point.aggregate is not None:
            outputs = aggregate_shapes(point.id, point.aggregate, point.shape)
            for output, value_type in outputs.items():
                shapes[output] = Shape(value_type, point.alias, point.unit)
    if config.health.bucket is not None:
        shapes = buckets.setdefault(config.health.bucket, {})
        shapes.update({shape_id: Shape(kind) for shape_id, kind in health.items()})
    return {bucket: shapes for bucket, shapes in buckets.items() if shapes}


# An aggregate's value type by function: None, the point's own.
_AGGREGATE_TYPE: dict[str, ValueType | None] = {
    "avg": "float",
    "integral": "float",
    "count": "integer",
    "min": None,
    "max": None,
    "first": None,
    "last": None,
    "sum": None,
}


def aggregate_shapes(point_id: str, aggregate: Aggregate, shape: ValueType) -> dict[str, ValueType]:
    """Each published id of a point's aggregate, with its value type."""
    return {
        output: _AGGREGATE_TYPE.get(function) or shape
        for function, output in aggregate.ids(point_id)
    }


def have(listed: list[Any]) -> Buckets:
    """The thing's buckets, from List Data Buckets' `data`."""
    buckets: Buckets = {}
    for bucket in listed:
        shapes = buckets.setdefault(str(_field(bucket, "id", "a data bucket")), {})
        for shape in _field(bucket, "dataShapes", "a data bucket", default=[]) or []:
            shapes[str(_field(shape, "id", "a data shape"))] = Shape(
                str(shape.get("valueType")), shape.get("alias"), shape.get("unit")
            )
    return buckets


def _field(item: Any, key: str, what: str, *, default: Any = None) -> Any:
    """`item[key]` of a listed object; PaasError (said, not a traceback) if it is not one."""
    if not isinstance(item, dict) or (default is None and key not in item):
        raise PaasError(f"the platform listed {what} without {key!r}: {str(item)[:80]!r}")
    return item.get(key, default)


def compare(want: Buckets, got: Buckets) -> list[Change]:
    """The changes that make `got` what the config wants, bucket by bucket, in order."""
    changes: list[Change] = []
    for bucket, shapes in want.items():
        if bucket not in got:
            changes.append(Change("create", bucket, None, shapes=shapes))
            continue
        changes += _shape_changes(bucket, shapes, got[bucket])
    changes += [Change("delete", bucket, None) for bucket in got if bucket not in want]
    return changes


def _shape_changes(
    bucket: str, want: Mapping[str, Shape], got: Mapping[str, Shape]
) -> list[Change]:
    changes = []
    for shape_id, shape in want.items():
        had = got.get(shape_id)
        if had is None:
            changes.append(Change("create", bucket, shape_id, wanted=shape))
        elif shape.differs(had):
            changes.append(Change("replace", bucket, shape_id, wanted=shape, had=had))
    changes += [
        Change("delete", bucket, shape_id, had=had)
        for shape_id, had in got.items()
        if shape_id not in want
    ]
    return changes


def render(changes: list[Change], got: Buckets) -> list[str]:
    """A terraform-style plan: a bucket's header, then its changes."""
    if not changes:
        return ["The thing's data buckets and shapes match the config: nothing to do."]
    lines: list[str] = []
    shown: set[str] = set()
    for change in changes:
        if change.shape is not None and change.bucket not in shown:
            lines.append(f"  ~ bucket {change.bucket}")
        shown.add(change.bucket)
        lines.append(change.line())
        if change.action == "create" and change.shape is None:
            lines += [f"      + {sid}  {_described(s)}" for sid, s in change.shapes.items()]
        if change.action == "delete" and change.shape is None:
            lines[-1] += f" ({len(got.get(change.bucket, {}))} shapes) {_PRUNED}"
    counts = {
        action: sum(c.action == action for c in changes)
        for action in ("create", "replace", "delete")
    }
    lines.append(
        f"Plan: {counts['create']} to create, {counts['replace']} to replace (--force), "
        f"{counts['delete']} to delete (--prune)."
    )
    return lines
