"""agent.pipeline.expressions: the derived-point language, its refusals, and Python as oracle."""

from __future__ import annotations

import ast
import builtins
import functools
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from agent.pipeline.expressions import (
    EvaluationError,
    Expression,
    ExpressionError,
    Kind,
    compile_expression,
)

KNOWN: dict[str, Kind] = {
    "a": "number",
    "b": "number",
    "c": "number",
    "x": "number",
    "y": "number",
    "p_l1": "number",
    "p_l2": "number",
    "p_l3": "number",
    "raw_hi": "number",
    "raw_lo": "number",
    "level_m": "number",
    "density": "number",
    "flag": "boolean",
    "alarm": "boolean",
}
VALUES: dict[str, int | float | bool] = {
    "a": 7,
    "b": 2,
    "c": 0.5,
    "x": 5,
    "y": 0,
    "p_l1": 1.5,
    "p_l2": 2.25,
    "p_l3": 3.0,
    "raw_hi": 1,
    "raw_lo": 3,
    "level_m": 2.0,
    "density": 1.0,
    "flag": True,
    "alarm": False,
}


def evaluate(text: str, **values: int | float | bool) -> int | float | bool:
    return compile_expression(text, KNOWN)({**VALUES, **values})


def refusal(text: str, known: Mapping[str, Kind] = KNOWN) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, known)
    return caught.value


# --- the language, construct by construct ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p_l1 + p_l2 + p_l3", 6.75),
        ("(raw_hi * 65536 + raw_lo) * 0.1", (1 * 65536 + 3) * 0.1),
        ("level_m * 1000 / (density * 9.81)", 2.0 * 1000 / (1.0 * 9.81)),
        ("a + b", 9),
        ("a - b", 5),
        ("a * b", 14),
        ("a / b", 3.5),
        ("a // b", 3),
        ("-a // b", -4),
        ("a % b", 1),
        ("-a % b", 1),
        ("a ** b", 49),
        ("b ** -1", 0.5),
        ("c ** 2", 0.25),
        ("-a", -7),
        ("+a", 7),
        ("a - b - 1", 4),
        ("a - (b - 1)", 6),
        ("2 ** 3 ** 2", 512),
        ("0x10 + 1_000 + 1e-3", 1016.001),
        ("min(a, b)", 2),
        ("max(a, b, c)", 7),
        ("min(a, b, c, -1)", -1),
        ("abs(b - a)", 5),
        ("round(c * 5)", 2),
        ("round(p_l2, 1)", 2.2),
        ("round(a, 2)", 7),
        ("a if flag else b", 7),
        ("a if alarm else b", 2),
        ("a if alarm else b if flag else c", 2),
    ],
)
def test_numbers_are_computed_as_python_computes_them(text: str, expected: int | float) -> None:
    actual = evaluate(text)

    assert (type(expected), expected) == (type(actual), actual)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a > b", True),
        ("a < b", False),
        ("a >= 7", True),
        ("a <= 6", False),
        ("a == 7.0", True),
        ("a != b", True),
        ("0 < x < 10", True),
        ("0 < x < 5", False),
        ("b < a > c", True),
        ("flag == True", True),
        ("flag != alarm", True),
        ("flag and alarm", False),
        ("flag or alarm", True),
        ("flag and not alarm and a > b", True),
        ("alarm or alarm or flag", True),
        ("not flag", False),
        ("True", True),
        ("flag if a > b else alarm", True),
    ],
)
def test_comparisons_and_logic_give_booleans(text: str, expected: bool) -> None:
    assert expected is evaluate(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("a + b", "number"),
        ("a > b", "boolean"),
        ("flag", "boolean"),
        ("a if flag else b", "number"),
        ("round(c)", "number"),
    ],
)
def test_the_kind_of_the_result_is_known_at_compile_time(text: str, kind: Kind) -> None:
    assert kind == compile_expression(text, KNOWN).kind


def test_the_inputs_are_the_points_read_each_once_in_order_of_appearance() -> None:
    expression = compile_expression("b + a * b + max(c, a) if flag else x", KNOWN)

    assert ("b", "a", "c", "flag", "x") == expression.inputs


def test_an_expression_of_constants_reads_nothing() -> None:
    expression = compile_expression("2 ** 10 - 24", KNOWN)

    assert ((), 1000) == (expression.inputs, expression({}))


def test_an_expression_is_called_again_and_again_with_new_values() -> None:
    expression = compile_expression("p_l1 + p_l2 + p_l3", KNOWN)

    assert [6, 60.0] == [
        expression({"p_l1": 1, "p_l2": 2, "p_l3": 3}),
        expression({"p_l1": 10.0, "p_l2": 20, "p_l3": 30}),
    ]


def test_a_long_run_of_one_level_is_evaluated_left_to_right() -> None:
    """0.5 is lost against 1e16: Python's order gives 1.5 where another order gives 2.0."""
    assert [1.5, 100.0] == [
        evaluate("c + 1e16 - 1e16 + c + c + c"),
        evaluate(" + ".join(["c"] * 200)),
    ]


def test_an_expression_may_span_lines_inside_brackets() -> None:
    assert 14 == evaluate("(a\n    * b)\n")


# --- point ids: plain and quoted ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "point_id"),
    [
        ("`meter-1.power` * 2", "meter-1.power"),
        ("2*`meter-1.power`", "meter-1.power"),
        ("`if` * 2", "if"),
        ("`None` * 2", "None"),
        ("`1st` * 2", "1st"),
        ("`odd``name` * 2", "odd`name"),
        ("`plain` * 2", "plain"),
        ("plain * 2", "plain"),
        ("température * 2", "température"),
        ("ﬁ * 2", "ﬁ"),
    ],
)
def test_ids_that_are_not_plain_names_are_written_in_backticks(text: str, point_id: str) -> None:
    expression = compile_expression(text, {point_id: "number"})

    assert ((point_id,), 42) == (expression.inputs, expression({point_id: 21}))


def test_a_plain_id_is_looked_up_as_written_not_as_python_folds_it() -> None:
    error = refusal("ﬁ + 1", {"fi": "number"})

    assert str(error).startswith("unknown point 'ﬁ' at column 1")


def test_a_point_may_be_named_like_a_function() -> None:
    assert 3 == compile_expression("min(min, max)", {"min": "number", "max": "number"})(
        {"min": 3, "max": 4}
    )


def test_a_quoted_id_is_never_called() -> None:
    error = refusal("`min`(a, b)", {"min": "number", **KNOWN})

    assert "not allowed: a call to '`min`'" in str(error)


def test_a_placeholder_cannot_be_written_by_the_user() -> None:
    error = refusal("`a` + _q0", KNOWN)

    assert str(error).startswith("unknown point '_q0' at column 7")


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("`a", "a backtick at column 1 is not closed", 0),
        ("a + `b` + `", "a backtick at column 11 is not closed", 10),
        ("`` + a", "an empty quoted id `` at column 1", 0),
        ("`a`b", "syntax error at column 4: invalid syntax", 3),
    ],
)
def test_bad_quoting_is_refused(text: str, message: str, offset: int) -> None:
    error = refusal(text)

    assert (message, offset) == (str(error), error.offset)


# --- what is refused, and how it is said ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "not allowed: a call to '__import__' (only min, max, abs, round)"),
        ("__import__('os').system('true')", "not allowed: a call to '__import__('os').system'"),
        ("open('/etc/passwd')", "not allowed: a call to 'open'"),
        ("().__class__", "not allowed: attribute access (x.y)"),
        ("x.real", "not allowed: attribute access (x.y)"),
        ("x[0]", "not allowed: subscripts (x[i])"),
        ("lambda: 1", "not allowed: lambda"),
        ("[i for i in x]", "not allowed: comprehensions"),
        ("(i for i in x)", "not allowed: comprehensions"),
        ("[a, b]", "not allowed: lists"),
        ("(a, b)", "not allowed: tuples"),
        ("{a: b}", "not allowed: dicts"),
        ('"a"', "not allowed: strings"),
        ("b'a'", "not allowed: strings"),
        ("f'{x}'", "not allowed: f-strings"),
        ("1j", "not allowed: complex numbers"),
        ("None", "not allowed: None"),
        ("...", "not allowed: Ellipsis"),
        ("(y := 1)", "not allowed: assignment (:=)"),
        ("min(*x)", "not allowed: starred arguments (*x)"),
        ("round(x, ndigits=1)", "not allowed: keyword arguments (name=value)"),
        ("x.__class__.__bases__[0].__subclasses__()", "not allowed: a call to"),
        ("a & b", "not allowed: `&` (for booleans write `and`)"),
        ("a | b", "not allowed: `|`"),
        ("a ^ b", "not allowed: `^`"),
        ("a << b", "not allowed: `<<`"),
        ("a >> b", "not allowed: `>>`"),
        ("a @ b", "not allowed: `@`"),
        ("~a", "not allowed: `~`"),
        ("a is b", "not allowed: `is` (write `==`)"),
        ("a is not b", "not allowed: `is not`"),
        ("a in b", "not allowed: `in`"),
        ("a not in b", "not allowed: `not in`"),
        ("a # the a", "not allowed: comments (#)"),
        ("2 ** 100000", "`**` with an exponent above 64"),
        ("9 ** 9 ** 9", "`**` with an exponent above 64"),
        ("x ** 65", "`**` with an exponent above 64"),
        ("x ** 64.5", "`**` with an exponent above 64"),
        ("x ** -65", "`**` with an exponent below -64"),
        ("x ** (2 ** 7)", "`**` with an exponent above 64"),
        ("1e999", "a number beyond the float range"),
        ("1" + "0" * 309, "a number beyond the float range"),
        ("round(x, 16)", "the digits of `round(x, n)` must be a whole number from 0 to 15"),
        ("round(x, -1)", "the digits of `round(x, n)`"),
        ("round(x, 1.5)", "the digits of `round(x, n)`"),
        ("round(x, True)", "the digits of `round(x, n)`"),
        ("round(x, b)", "the digits of `round(x, n)`"),
        ("round(x, 1, 2)", "`round` takes one or two arguments, not 3"),
        ("round()", "`round` takes one or two arguments, not 0"),
        ("min(x)", "`min` needs at least two arguments"),
        ("max()", "`max` needs at least two arguments"),
        ("abs(a, b)", "`abs` takes one argument, not 2"),
        ("a +* b", "syntax error at column 4: invalid syntax"),
        ("a +", "syntax error at the end: invalid syntax"),
        ("a b", "syntax error at column 3: invalid syntax"),
        ("", "the expression is empty"),
        (" \n ", "the expression is empty"),
        ("a +\x00 b", "a control character '\\x00' at column 4"),
        ("a\r+ b", "a control character '\\r' at column 2"),
    ],
)
def test_anything_outside_the_language_is_refused_with_a_clear_message(
    text: str, message: str
) -> None:
    assert message in str(refusal(text))


def test_nesting_is_limited_to_32_levels() -> None:
    assert 5 == evaluate("(" * 32 + "x" + ")" * 32)
    assert -5 == evaluate("-" * 31 + "x")

    too_deep = ["(" * 33 + "x" + ")" * 33, "-" * 32 + "x", "(" * 200 + "x" + ")" * 200]
    messages = [str(refusal(text)) for text in too_deep]

    assert [
        "nesting deeper than 32 at column 33",
        "nesting deeper than 32 at column 33",
        "nesting deeper than 32 at column 33",
    ] == messages


def test_a_5000_character_expression_is_refused_before_it_is_parsed() -> None:
    error = refusal("+".join(["x"] * 2500))

    assert ("the expression is 4999 characters long; at most 1000 are allowed", None) == (
        str(error),
        error.offset,
    )


def test_a_1000_character_expression_is_accepted_and_1001_refused() -> None:
    text = "+".join(["x"] * 500) + " "
    assert (1000, 2500) == (len(text), evaluate(text))

    assert "at most 1000" in str(refusal(text + " "))


def test_exponents_up_to_64_either_way_are_allowed() -> None:
    assert [2**64, 2.0**-64, 1.5**64] == [
        evaluate("b ** 64"),
        evaluate("b ** -64"),
        evaluate("1.5 ** 64"),
    ]


# --- unknown points ------------------------------------------------------------------------------


def test_an_unknown_point_is_named_with_the_known_ones() -> None:
    error = refusal("p_l1 + p_l2 + p_l4", {"p_l1": "number", "p_l2": "number", "p_l3": "number"})

    assert ("unknown point 'p_l4' at column 15 (known: p_l1, p_l2, p_l3)", 14) == (
        str(error),
        error.offset,
    )


def test_known_ids_are_listed_as_they_must_be_written() -> None:
    error = refusal("meter", {"meter-1.power": "number", "if": "boolean", "b": "number"})

    assert "(known: b, `if`, `meter-1.power`)" in str(error)


def test_a_long_list_of_known_ids_is_cut_short_with_a_guess() -> None:
    known: dict[str, Kind] = {f"filler_{index:02}": "number" for index in range(30)}
    known["pressure"] = "number"

    message = str(refusal("presure * 2", known))

    assert message.startswith("unknown point 'presure' at column 1 (did you mean pressure? known:")
    assert message.endswith("filler_18, filler_19, and 11 more)")


def test_an_unknown_point_when_none_is_known() -> None:
    assert "unknown point 'x' at column 1 (no points are known here)" == str(refusal("x", {}))


def test_an_unquoted_id_that_needs_backticks_gets_a_hint() -> None:
    message = str(refusal("meter-1.power * 2", {"meter-1.power": "number"}))

    assert message == (
        "syntax error at column 8: invalid decimal literal; "
        "the point id 'meter-1.power' is written in backticks: `meter-1.power`"
    )


# --- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "alarm + 1",
            "`+` needs a number, but 'alarm' is a boolean at column 1 (write '1 if alarm else 0')",
        ),
        (
            "2 * (a > b)",
            "`*` needs a number, but 'a > b' is a boolean at column 6 (write '1 if a > b else 0')",
        ),
        ("-flag", "`-` needs a number, but 'flag' is a boolean at column 2"),
        ("flag ** 2", "`**` needs a number, but 'flag' is a boolean at column 1"),
        ("abs(flag)", "`abs` needs a number, but 'flag' is a boolean at column 5"),
        ("max(a, flag)", "`max` needs a number, but 'flag' is a boolean at column 8"),
        ("round(flag)", "`round` needs a number, but 'flag' is a boolean at column 7"),
        ("a and flag", "`and` needs a boolean, but 'a' is a number at column 1 (write 'a != 0')"),
        ("flag or b", "`or` needs a boolean, but 'b' is a number at column 9"),
        ("not a", "`not` needs a boolean, but 'a' is a number at column 5"),
        (
            "1 if a else 2",
            "the condition of `... if ... else ...` needs a boolean, but 'a' is a number at column 6",
        ),
        (
            "1 if flag else alarm",
            "the branches of `... if ... else ...` differ in kind: '1' is a number, 'alarm' a boolean at column 1",
        ),
        ("flag < alarm", "`<` needs a number, but 'flag' is a boolean at column 1"),
        ("0 < a < flag", "`<` needs a number, but 'flag' is a boolean at column 9"),
        ("flag == 1", "`==` compares a boolean with a number: 'flag' with '1' at column 1"),
    ],
)
def test_type_errors_are_found_at_compile_time(text: str, message: str) -> None:
    assert str(refusal(text)).startswith(message)


def test_errors_are_located_in_the_text_as_written() -> None:
    known: dict[str, Kind] = {"meter-1.power": "number", "é": "number", "a": "number"}

    offsets = [
        refusal(text, known).offset
        for text in ["`meter-1.power` + nope", "é + é + nope", "  a + nope", "(a +\n nope)"]
    ]

    assert [18, 8, 6, 6] == offsets
    assert str(refusal("(a +\n nope)", known)).startswith(
        "unknown point 'nope' at line 2, column 2"
    )


# --- evaluation errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values", "reason"),
    [
        ("a / y", {}, "division by zero"),
        ("a // y", {}, "division by zero"),
        ("a % y", {}, "division by zero"),
        ("c / (y * 1.0)", {}, "division by zero"),
        ("y ** -1", {}, "division by zero"),
        ("x * 1e308", {}, "the result is infinite (inf)"),
        ("x * 1e308 - x * 1e308", {}, "the result is not a number (nan)"),
        ("x ** a", {"a": 65}, "the exponent 65 is outside -64..64"),
        ("x ** a", {"a": -65}, "the exponent -65 is outside -64..64"),
        ("x ** 64", {"x": 2**20}, "1048576 ** 64 is beyond the float range"),
        ("x ** 64", {"x": 1e10}, "a number beyond the float range (overflow)"),
        ("(-x) ** 0.5", {}, "(-5) ** 0.5 is not a real number"),
        ("x * x", {"x": 2**600}, "the result is beyond the float range"),
        ("round(x * 1e308 * 10)", {}, "a number beyond the float range (overflow)"),
        ("round(x * 1e308 * 10 - x * 1e308 * 10)", {}, "a math domain error"),
        ("x / b", {"x": 2**1100}, "a number beyond the float range (overflow)"),
    ],
)
def test_evaluation_errors_say_why(text: str, values: dict[str, int | float], reason: str) -> None:
    expression = compile_expression(text, KNOWN)

    with pytest.raises(EvaluationError) as caught:
        expression({**VALUES, **values})

    assert reason in str(caught.value)


def test_every_power_on_the_way_stays_within_the_float_range() -> None:
    """131071 ** 63 is about 2 ** 1071: refused even where Python would carry on."""
    expression = compile_expression("x ** 63 > 0", KNOWN)

    with pytest.raises(EvaluationError, match=r"131071 \*\* 63 is beyond the float range"):
        expression({"x": 131071})


def test_an_evaluation_error_names_the_expression_and_its_inputs() -> None:
    expression = compile_expression("p_l1 / (p_l2 - p_l3)", KNOWN)

    with pytest.raises(EvaluationError) as caught:
        expression({"p_l1": 1, "p_l2": 2, "p_l3": 2})

    assert (
        "cannot evaluate 'p_l1 / (p_l2 - p_l3)' with p_l1=1, p_l2=2, p_l3=2: division by zero",
        ZeroDivisionError,
    ) == (str(caught.value), type(caught.value.__cause__))
    assert isinstance(caught.value, ArithmeticError)


def test_an_intermediate_infinity_is_allowed_as_python_allows_it() -> None:
    assert 0.0 == evaluate("1 / (x * 1e308)")


@pytest.mark.parametrize(
    ("text", "x", "expected"),
    [
        ("x != 0 and 1 / x > 1", 0, False),
        ("x == 0 or 1 / x > 1", 0, True),
        ("0 if x == 0 else 1 / x", 0, 0),
        ("0 != x < 1 / x", 0, False),
        ("x > 0 or 1 / 0 > 0", 1, True),
    ],
)
def test_only_what_python_would_evaluate_is_evaluated(text: str, x: int, expected: object) -> None:
    assert expected == evaluate(text, x=x)


def test_a_constant_that_always_fails_fails_when_it_is_reached() -> None:
    expression = compile_expression("x > 0 or 1 / 0 > 0", KNOWN)

    with pytest.raises(EvaluationError, match="division by zero"):
        expression({"x": 0})


def test_errors_are_the_standard_kinds() -> None:
    assert issubclass(ExpressionError, ValueError)
    assert issubclass(EvaluationError, ArithmeticError)


# --- nothing is run ------------------------------------------------------------------------------


def test_the_text_is_parsed_to_a_tree_and_never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real_compile = builtins.compile
    compiled: list[int] = []

    def tree_only(source: Any, filename: Any, mode: Any, flags: int = 0, **more: Any) -> Any:
        compiled.append(flags & ast.PyCF_ONLY_AST)
        assert flags & ast.PyCF_ONLY_AST, "only ast.parse may compile"
        return real_compile(source, filename, mode, flags, **more)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval and exec are never used")

    monkeypatch.setattr(builtins, "compile", tree_only)
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)

    result = compile_expression("max(p_l1, p_l2) * 2 if flag else 0", KNOWN)(VALUES)

    assert (4.5, [ast.PyCF_ONLY_AST]) == (result, compiled)


# --- Python as the oracle ------------------------------------------------------------------------

NUMBER_POINTS = ("n0", "n1", "n2")
BOOLEAN_POINTS = ("b0", "b1")
ORACLE_KNOWN: dict[str, Kind] = {
    **dict.fromkeys(NUMBER_POINTS, "number"),
    **dict.fromkeys(BOOLEAN_POINTS, "boolean"),
}
FLOAT_MAX = sys.float_info.max


@dataclass(frozen=True)
class Text:
    """One generated expression, for the module and for Python's eval (`**` as `_pow`)."""

    ours: str
    oracle: str


def _pow(base: Any, exponent: Any) -> Any:
    """Python's `**` with the module's documented rules: an exponent in -64..64, a real
    result, an int result within the float range."""
    if not -64 <= exponent <= 64:
        raise OverflowError("exponent")
    result = base**exponent
    if isinstance(result, complex):
        raise ValueError("complex")
    if isinstance(result, int) and abs(result) > FLOAT_MAX:
        raise OverflowError("int")
    return result


ORACLE_GLOBALS: dict[str, Any] = {
    "__builtins__": {},
    "_pow": _pow,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
}


def _same(text: str) -> Text:
    return Text(text, text)


def _wrapped(template: str, *parts: Text) -> Text:
    return Text(
        template.format(*(part.ours for part in parts)),
        template.format(*(part.oracle for part in parts)),
    )


def _joined(separators: list[str], parts: list[Text]) -> Text:
    ours, oracle = parts[0].ours, parts[0].oracle
    for separator, part in zip(separators, parts[1:], strict=False):
        ours += f" {separator} {part.ours}"
        oracle += f" {separator} {part.oracle}"
    return Text(f"({ours})", f"({oracle})")


def _call(name: str, parts: list[Text]) -> Text:
    return Text(
        f"{name}({', '.join(part.ours for part in parts)})",
        f"{name}({', '.join(part.oracle for part in parts)})",
    )


_LITERALS = st.one_of(
    st.integers(-100, 100),
    st.sampled_from([0.0, -0.0, 0.5, 2.5, 1e-3, 1e300, 1e308, -1e308, -7.25, 3]),
).map(lambda number: _same(f"({number!r})"))
_NUMBER_LEAVES = st.one_of(st.sampled_from(NUMBER_POINTS).map(_same), _LITERALS)
_BOOLEAN_LEAVES = st.sampled_from([*BOOLEAN_POINTS, "True", "False"]).map(_same)


def _run(strategy: st.SearchStrategy[Text], operators: list[str]) -> st.SearchStrategy[Text]:
    """`a + b - c ...`: a run of one level, unbracketed inside."""
    return st.integers(2, 6).flatmap(
        lambda size: st.builds(
            _joined,
            st.lists(st.sampled_from(operators), min_size=size - 1, max_size=size - 1),
            st.lists(strategy, min_size=size, max_size=size),
        )
    )


@functools.cache
def _numbers(depth: int) -> st.SearchStrategy[Text]:
    if depth == 0:
        return _NUMBER_LEAVES
    inner, tests = _numbers(depth - 1), _booleans(depth - 1)
    exponents = st.one_of(
        st.sampled_from([-4, -1, 0, 1, 2, 3, 8, 63, 64, 0.5, -0.5, 1.5]).map(
            lambda number: _same(f"({number})")
        ),
        inner,
    )
    return st.one_of(
        _NUMBER_LEAVES,
        st.builds(lambda a: _wrapped("(-{})", a), inner),
        st.builds(lambda a: _wrapped("(+{})", a), inner),
        _run(inner, ["+", "-"]),
        _run(inner, ["*", "/", "//", "%"]),
        st.builds(
            lambda a, b: Text(f"({a.ours} ** {b.ours})", f"_pow({a.oracle}, {b.oracle})"),
            inner,
            exponents,
        ),
        st.builds(_call, st.sampled_from(["min", "max"]), st.lists(inner, min_size=2, max_size=4)),
        st.builds(lambda a: _wrapped("abs({})", a), inner),
        st.builds(lambda a: _wrapped("round({})", a), inner),
        st.builds(lambda a, n: _wrapped(f"round({{}}, {n})", a), inner, st.integers(0, 15)),
        st.builds(lambda a, t, b: _wrapped("({} if {} else {})", a, t, b), inner, tests, inner),
    )


@functools.cache
def _booleans(depth: int) -> st.SearchStrategy[Text]:
    if depth == 0:
        return _BOOLEAN_LEAVES
    inner, numbers = _booleans(depth - 1), _numbers(depth - 1)
    return st.one_of(
        _BOOLEAN_LEAVES,
        _run(numbers, ["<", "<=", ">", ">=", "==", "!="]),
        st.builds(lambda a, b: _wrapped("({} == {})", a, b), inner, inner),
        st.builds(lambda a, b: _wrapped("({} != {})", a, b), inner, inner),
        _run(inner, ["and"]),
        _run(inner, ["or"]),
        st.builds(lambda a: _wrapped("(not {})", a), inner),
        st.builds(lambda a, t, b: _wrapped("({} if {} else {})", a, t, b), inner, inner, inner),
    )


_NUMBER_VALUES = st.one_of(
    st.integers(-1000, 1000),
    st.integers(-(2**70), 2**70),
    st.floats(-1e6, 1e6),
    st.floats(1e300, FLOAT_MAX) | st.floats(-FLOAT_MAX, -1e300),  # to overflow on the way
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 0.0, 1, -1, 2, 1e308, -1e308, 5e-324, 2**1000]),
)
_VALUES = st.fixed_dictionaries(
    {
        **dict.fromkeys(NUMBER_POINTS, _NUMBER_VALUES),
        **dict.fromkeys(BOOLEAN_POINTS, st.booleans()),
    }
)
FAILS = object()


def python_outcome(text: str, values: Mapping[str, object]) -> object:
    """What Python gives for `text` (trusted, generated here), or FAILS where the module
    must raise EvaluationError."""
    try:
        result = eval(text, ORACLE_GLOBALS, dict(values))  # our own generated text
    except (ZeroDivisionError, OverflowError, ValueError):
        return FAILS
    if isinstance(result, float) and not math.isfinite(result):
        return FAILS
    if isinstance(result, int) and abs(result) > FLOAT_MAX:
        return FAILS
    return result


def _compiled(text: Text) -> Expression:
    assume(len(text.ours) <= 1000)
    outcome = _compiled_or_refused(text.ours)
    if isinstance(outcome, Expression):
        return outcome
    # The generator writes nothing else the module refuses, but may fold an exponent out of range.
    assert "`**` with an exponent" in str(outcome), (text.ours, str(outcome))
    reject()


def _compiled_or_refused(text: str) -> Expression | ExpressionError:
    try:
        return compile_expression(text, ORACLE_KNOWN)
    except ExpressionError as exc:
        return exc


def _check_against_python(text: Text, values: dict[str, int | float | bool]) -> None:
    expression = _compiled(text)
    expected = python_outcome(text.oracle, values)
    if expected is FAILS:
        with pytest.raises(EvaluationError):
            expression(values)
        return
    actual = expression(values)
    assert (type(expected), expected) == (type(actual), actual), text.ours


_ORACLE_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_ORACLE_SETTINGS
@given(_numbers(3), _VALUES)
def test_a_number_expression_evaluates_as_python_does(
    text: Text, values: dict[str, int | float | bool]
) -> None:
    _check_against_python(text, values)


@_ORACLE_SETTINGS
@given(_booleans(3), _VALUES)
def test_a_boolean_expression_evaluates_as_python_does(
    text: Text, values: dict[str, int | float | bool]
) -> None:
    _check_against_python(text, values)


_TOKEN_WORDS = (  # what the fuzzing text is made of, space-separated
    "n0 n1 n2 b0 b1 1 0 2.5 1e308 True None 's' `n0` ` + - * / // % ** < == and or "
    "not if else ( ) [ ] { } , . : := lambda min max abs round __class__ open @ ~ | # \\ é "
    "for in is"
)
_TOKENS = st.sampled_from([*_TOKEN_WORDS.split(), "\n", "\x00"])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(_TOKENS, max_size=12).map(" ".join),
        st.lists(_TOKENS, max_size=12).map("".join),
        st.text(max_size=30),
    ),
    _VALUES,
)
def test_any_text_is_compiled_or_refused_and_evaluated_or_failed(
    text: str, values: dict[str, int | float | bool]
) -> None:
    expression = _compiled_or_refused(text)
    if isinstance(expression, ExpressionError):
        assert expression.offset is None or 0 <= expression.offset <= len(text)
        return
    try:
        result = expression(values)
    except EvaluationError:
        return
    expected_type: dict[Kind, tuple[type, ...]] = {"number": (int, float), "boolean": (bool,)}
    assert isinstance(result, expected_type[expression.kind])


def test_the_oracle_agrees_on_a_few_known_cases() -> None:
    """The oracle itself: Python's answers where the module must fail."""
    outcomes: list[Callable[[], object]] = [
        lambda: python_outcome("(1 / 0)", {}),
        lambda: python_outcome("_pow(2, 65)", {}),
        lambda: python_outcome("_pow(-8, 0.5)", {}),
        lambda: python_outcome("(1e308 * 10)", {}),
        lambda: python_outcome("_pow(70000, 64)", {}),
    ]

    assert [FAILS] * 5 == [outcome() for outcome in outcomes]
