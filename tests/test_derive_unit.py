"""agent.pipeline.derive: derived points worked out from their inputs' taps, chained in
declared order, and no value from a failed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.config import load_config
from agent.pipeline.derive import Calculator
from tests.test_computations import BASE

CONFIG = (
    BASE
    + """
[[modbus.devices]]
name = "meter"
unit = 1
bucket = "b"
points = [
  { id = "a", address = "40001", type = "float32" },
  { id = "b", address = "40003", type = "float32" },
]

[[derived]]
id = "s"
bucket = "d"
expression = "a + b"

[[derived]]
id = "t"
bucket = "d"
expression = "s * 2"
"""
)


def calculator(tmp_path: Path) -> tuple[Calculator, list[tuple[str, dict[str, object]]]]:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    emitted: list[tuple[str, dict[str, object]]] = []

    def emit(bucket: str, parts: list[bytes]) -> None:
        emitted.extend((bucket, json.loads(part)) for part in parts)

    return Calculator(load_config(path).derived, emit=emit, clock=lambda: 100.0), emitted


def test_inputs_through_their_taps_give_each_derived_point_in_declared_order(
    tmp_path: Path,
) -> None:
    calc, emitted = calculator(tmp_path)
    assert {"a", "b", "s"} == calc.inputs
    calc.tap("a")(1.5, 1_000)
    calc.tap("b")(2.0, 2_000)

    calc.evaluate()

    assert [
        ("d", {"id": "s", "value": 3.5, "timestamp": "2000"}),
        ("d", {"id": "t", "value": 7.0, "timestamp": "2000"}),  # from s, in the same pass
    ] == emitted


def test_a_failed_input_gives_no_value_down_the_chain(tmp_path: Path) -> None:
    calc, emitted = calculator(tmp_path)
    calc.tap("a")(1.5, 1_000)
    calc.tap("b")(None, 2_000)  # the read failed

    calc.evaluate()

    assert ([], 1) == (emitted, calc.skipped)  # s skipped; t not worked out without s


def test_each_point_is_worked_out_once_per_change_whatever_order_its_inputs_come(
    tmp_path: Path,
) -> None:
    calc, emitted = calculator(tmp_path)
    calc.tap("b")(2.0, 2_000)
    calc.tap("a")(1.0, 1_000)
    calc.tap("a")(1.5, 3_000)  # changed twice: worked out once, with the latest

    calc.evaluate()
    calc.evaluate()  # nothing changed since
    calc.tap("a")(0.5, 4_000)
    calc.evaluate()

    assert [
        ("s", 3.5, "3000"),
        ("t", 7.0, "3000"),
        ("s", 2.5, "4000"),
        ("t", 5.0, "4000"),
    ] == [(r["id"], r["value"], r["timestamp"]) for _, r in emitted]


Taps = list[tuple[str, object, int]]  # (input, value, timestamp), in order


def clocked(tmp_path: Path, config: str = CONFIG) -> tuple[Calculator, list[float], list[bytes]]:
    """A calculator of `config`'s derived points, its clock (set now[0], from 100.0) and
    what it emits."""
    path = tmp_path / "agent.toml"
    path.write_text(config)
    now = [100.0]
    emitted: list[bytes] = []
    calc = Calculator(
        load_config(path).derived,
        emit=lambda bucket, parts: emitted.extend(parts),
        clock=lambda: now[0],
    )
    return calc, now, emitted


def skipped_because(tmp_path: Path, taps: Taps, *, later: float = 0.0) -> tuple[str, int]:
    """Why `s` was given no value after `taps` and `later` seconds, and how many skips."""
    calc, now, emitted = clocked(tmp_path)
    for name, value, stamp in taps:
        calc.tap(name)(value, stamp)  # type: ignore[arg-type]  # a str: what no config lets in
    now[0] += later
    with capture_logs() as logs:
        calc.evaluate()
    assert [] == emitted
    (event,) = [e for e in logs if e["event"] == "derived_skipped" and e["point"] == "s"]
    return str(event["reason"]), calc.skipped


@pytest.mark.parametrize(
    ("taps", "later", "reason"),
    [
        ([("a", 1.0, 1_000)], 0.0, "no value of 'b' yet"),
        ([("a", 1.0, 1_000), ("b", None, 1_000)], 0.0, "the last read of 'b' failed"),
        ([("a", 1.0, 1_000), ("b", "2", 1_000)], 0.0, "'b' is not a number or a boolean"),
        ([("a", 1.0, 1_000), ("b", 2.0, 1_000)], 60.0, "'a' is 60 s old"),  # the first one
    ],
)
def test_each_unusable_input_is_skipped_and_logged_with_its_reason(
    tmp_path: Path, taps: Taps, later: float, reason: str
) -> None:
    assert (reason, 1) == skipped_because(tmp_path, taps, later=later)


def test_a_row_of_a_read_gives_its_inputs_as_their_taps_would(tmp_path: Path) -> None:
    by_taps, from_taps = calculator(tmp_path)
    by_row, from_row = calculator(tmp_path)
    assert by_row.rows(["x", "y"]) is None  # no input among them
    row = by_row.rows(["b", "x", "a"])
    assert row is not None
    assert ("a" in by_row, "x" in by_row) == (True, False)

    by_taps.tap("b")(2.0, 1_000)
    by_taps.tap("a")(1.5, 1_000)
    row([2.0, 7.0, 1.5], 1_000)
    by_taps.evaluate()
    by_row.evaluate()
    by_row.tap("b")(None, 2_000)  # a failed read comes point by point
    by_row.evaluate()

    assert (
        from_taps
        == from_row
        == [
            ("d", {"id": "s", "value": 3.5, "timestamp": "1000"}),
            ("d", {"id": "t", "value": 7.0, "timestamp": "1000"}),
        ]
    )
    assert 1 == by_row.skipped


def test_status_shows_each_derived_points_last_value_deadband_or_not(tmp_path: Path) -> None:
    banded = CONFIG.replace('expression = "s * 2"', 'expression = "s * 2"\ndeadband = 5')
    calc, now, _ = clocked(tmp_path, banded)
    assert [("s", None, None), ("t", None, None)] == [
        (v.id, v.value, v.age_s) for v in calc.point_views(now[0])
    ]
    calc.tap("a")(1.5, 1_000)
    calc.tap("b")(2.0, 1_000)
    calc.evaluate()
    now[0] = 101.0
    calc.tap("a")(2.0, 2_000)  # s 4.0; t 8.0, within its deadband of the 7.0 reported
    calc.evaluate()

    assert [("s", 4.0, 1.0), ("t", 7.0, 2.0)] == [
        (v.id, v.value, v.age_s) for v in calc.point_views(102.0)
    ]


@pytest.mark.parametrize(("later", "published"), [(2.0, True), (2.5, False)])
def test_an_input_as_old_as_max_input_age_is_used_and_an_older_one_is_not(
    tmp_path: Path, later: float, published: bool
) -> None:
    aged = CONFIG.replace('expression = "a + b"', 'expression = "a + b"\nmax_input_age = 2')
    calc, now, emitted = clocked(tmp_path, aged)
    calc.tap("a")(1.0, 1_000)
    now[0] += later
    calc.tap("b")(2.0, 2_000)

    calc.evaluate()

    assert (published, not published) == (bool(emitted), bool(calc.skipped))
