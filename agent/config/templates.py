"""Device templates: one register map for many units.

A device that says `template = "meter"` gets the template's points, then its own. A
device point whose id is a template point's changes that point: with no `address` it
sets only what `CHANGEABLE` lists (where the reading goes and how often, not how the
registers are read); with an `address` it replaces the point whole. The template's
`byte_order`, `max_gap`, `max_registers`, `max_bits` and `one_request_per_point` apply
where the device does not set its own.

`{device}` and `{unit}` in a template point's id or bucket become the device's name and
unit, so that twenty meters can share one bucket with ids of their own.

`apply` is pure: `agent.config.checks` uses it to check every device as it will run,
keeping for each point where it was written (`origins`), and `agent.config.resolve`
uses it again on a file that passed. Templates come from the file's `[templates.*]`
tables and from the files its `include` names (agent.config.load).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.registers import Problems
from agent.config.schema import DeviceConfig, PointConfig, TemplateConfig

# What a device may change in a template's point without giving its address again.
CHANGEABLE = frozenset({"id", "bucket", "deadband", "max_silence", "interval", "alias", "unit"})

# Device keys a template may give, for the devices that do not set them.
INHERITED = ("byte_order", "max_gap", "max_registers", "max_bits", "one_request_per_point")


@dataclass(frozen=True)
class Applied:
    """A device with its template applied, and where each of its points was written."""

    device: DeviceConfig
    origins: list[str]  # per point: its key, e.g. "templates.meter.points[2]" or "points[0]"
    problems: Problems  # (key under the device, message)


def apply(device: DeviceConfig, templates: Mapping[str, TemplateConfig]) -> Applied:
    """`device` as it runs; a device with no template is returned as it is."""
    own = [f"points[{index}]" for index in range(len(device.points))]
    if device.template is None:
        return Applied(device, own, [])
    template = templates.get(device.template)
    if template is None:
        known = ", ".join(sorted(templates)) or "none"
        return Applied(
            device.model_copy(update={"points": []}),
            [],
            [("template", f"no template named {device.template!r} (templates: {known})")],
        )
    points, origins, problems = _merged_points(device, template)
    inherited = {
        key: getattr(template, key)
        for key in INHERITED
        if key not in device.model_fields_set and getattr(template, key) is not None
    }
    return Applied(
        device.model_copy(update={"points": points, "template": None, **inherited}),
        origins,
        problems,
    )


def _merged_points(
    device: DeviceConfig, template: TemplateConfig
) -> tuple[list[PointConfig], list[str], Problems]:
    """The template's points, as this device changes them, then the device's new ones."""
    assert device.template is not None
    names = {"device": device.name, "unit": str(device.unit)}
    points = [_named(point, names) for point in template.points]
    origins = [f"templates.{device.template}.points[{index}]" for index in range(len(points))]
    index_of = {point.id: index for index, point in enumerate(points)}
    index_of.update({point.id: index for index, point in enumerate(template.points)})
    problems: Problems = []
    for own, point in enumerate(device.points):
        at = index_of.get(point.id)
        if at is None and point.address is None:
            problems.append(
                (
                    f"points[{own}].address",
                    f"required key is missing (template {device.template!r} has no point "
                    f"{point.id!r} to change)",
                )
            )
            continue
        if at is None:
            points.append(point)
            origins.append(f"points[{own}]")
            continue
        if point.address is None:
            changed = point.model_fields_set - CHANGEABLE
            if changed:
                problems.append(
                    (
                        f"points[{own}].{sorted(changed)[0]}",
                        f"changes how template point {point.id!r} is read: give its "
                        f"`address` to replace it, or change only {_changeable()}",
                    )
                )
                continue
            point = points[at].model_copy(update=_given(point))
        points[at] = _named(point, names)
        origins[at] = f"points[{own}]"
    return points, origins, problems


def _named(point: PointConfig, names: Mapping[str, str]) -> PointConfig:
    """A template point with `{device}` and `{unit}` filled in its id and bucket."""
    update: dict[str, Any] = {}
    for key in ("id", "bucket"):
        value = getattr(point, key)
        if value is not None and "{" in value:
            update[key] = _fill(value, names)
    return point.model_copy(update=update) if update else point


def _fill(text: str, names: Mapping[str, str]) -> str:
    for name, value in names.items():
        text = text.replace("{" + name + "}", value)
    return text


def _given(point: PointConfig) -> dict[str, Any]:
    return {key: getattr(point, key) for key in point.model_fields_set if key != "id"}


def _changeable() -> str:
    return ", ".join(f"`{key}`" for key in sorted(CHANGEABLE - {"id"}))
