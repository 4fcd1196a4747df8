"""Derived points: small arithmetic over other points' values, checked once, evaluated fast.

A derived point's value is an expression over the values of other points, e.g.
`p_l1 + p_l2 + p_l3` or `(raw_hi * 65536 + raw_lo) * 0.1`. `compile_expression` checks
the text once, at config load, against the points it may read and their kinds, and
returns an `Expression`: a callable that takes the current values and gives the result.

The language
    numbers       42, -7, 0.5, 1e-3, 0x10, 1_000 (no complex numbers, no strings)
    booleans      True, False
    points        p_l1, level_m; an id that is not a plain name is written in
                  backticks: `meter-1.power` (a backtick inside an id is doubled)
    arithmetic    + - * / // % ** and unary + -
    comparisons   == != < <= > >=, chained as in `0 < x < 10`
    logic         and, or, not
    conditional   a if condition else b
    functions     min(a, b, ...), max(a, b, ...), abs(x), round(x), round(x, n)

Point ids are TOML ids and may hold characters a Python name cannot (`-`, `.`), or be
a Python keyword (`if`, `None`). Those are written in backticks; before parsing, each
quoted id is replaced by a placeholder name the text cannot contain, so the parser
never sees the id itself. Plain ids are looked up as written: Python would NFKC-fold
a name (`ﬁ` to `fi`), so the lookup takes the spelling from the text.

Types are checked at compile time, with a message that names the culprit:
    - arithmetic, ordering comparisons and the functions take numbers only; a
      boolean is not counted as 0/1 (write `1 if alarm else 0`);
    - `and`, `or`, `not` and a conditional's condition take booleans only (write
      `x != 0`);
    - `==` and `!=` compare two numbers or two booleans;
    - a conditional's branches are of one kind, which is the kind of its result;
    - comparisons, `and`, `or`, `not` give booleans; everything else numbers.

Results follow Python: `+ - * // %` of ints and `**` of an int to a non-negative int
stay ints, `/` gives a float, `round(x)` an int and `round(x, n)` the type of `x`.
`and`, `or`, a chained comparison and a conditional evaluate only what Python would.
Evaluation raises `EvaluationError` for a division by zero, an overflow, a math domain
error (a negative number to a fractional power, rounding an infinity), an exponent
outside -64..64, and a result that is not finite or, for an int, beyond the float range
(about ±1.8e308). Sub-expressions may pass through infinities, as in Python
(`1 / (x * 1e308)` can be 0.0); the final result may not.

Limits, all refused at compile time: at most 1000 characters, nesting at most 32 deep
(brackets, and operators inside operators; a run of one precedence level such as
`a + b - c + d` counts once), a constant exponent outside -64..64, `round`'s digits
outside 0..15, and a literal beyond the float range. A constant part that fails
(`1 / 0`) is not refused: like any other failure it raises when it is evaluated, so
`x > 0 or 1 / 0 > 0` behaves as Python would.

Why a small compiler here rather than simpleeval:
    - no dependency, and a language small enough to read in one sitting: the whitelist
      is the grammar above, with nothing to switch off (simpleeval's defaults include
      strings, `in`, bit operators and attribute access to whatever names it is
      given; it has needed fixes for sandbox escapes, e.g. through generator frames,
      danthedeckie/simpleeval#138);
    - static checks at config load: unknown ids (listed with the known ones) and type
      errors are config errors, found before the first poll instead of at run time
      (simpleeval resolves names when it evaluates);
    - speed: the tree becomes nested closures once (points read by key, constants
      folded), so an evaluation is a few calls rather than a tree walk per poll
      (simpleeval interprets the tree on each evaluation).
Nothing here passes user text to eval or exec: `ast.parse` only builds a tree, and
only the node types above are turned into closures; anything else is refused.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import math
import operator
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

Kind = Literal["number", "boolean"]
Scalar: TypeAlias = int | float | bool
Values: TypeAlias = Mapping[str, Scalar]
Evaluate: TypeAlias = Callable[[Values], Scalar]
Binary: TypeAlias = Callable[[Scalar, Scalar], Scalar]

MAX_LENGTH = 1000  # characters of source
MAX_NESTING = 32
MAX_EXPONENT = 64  # |exponent| of `**`
MAX_ROUND_DIGITS = 15

_LARGEST = sys.float_info.max
_LARGEST_BITS = 1024  # an int of this many bits or more is beyond the float range
_NESTED_UP_TO = 4  # a run of operators this long becomes nested closures; longer, a loop
_LISTED_KNOWN = 20  # known ids listed in an "unknown point" message
_SHOWN_CODE = 40  # characters of a sub-expression quoted in a message
_SHOWN_VALUES = 10  # input values quoted in an evaluation error


class ExpressionError(ValueError):
    """An expression refused at compile time; the message says what is wrong and where.

    `offset` is the 0-based character index in the text as written, or None when the
    text as a whole is at fault (empty, too long).
    """

    offset: int | None

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class EvaluationError(ArithmeticError):
    """An expression that cannot give a value for these inputs: division by zero, overflow,
    a math domain error, or a result that is not a finite number."""


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression: call it with the values of its `inputs`."""

    source: str
    inputs: tuple[str, ...]  # the point ids it reads, each once, in order of first appearance
    kind: Kind  # of the result
    _evaluate: Evaluate = field(repr=False, compare=False)
    input_kinds: tuple[Kind, ...] = ()  # each input's, as it was compiled against

    def __reduce__(self) -> tuple[Callable[..., Expression], tuple[str, dict[str, Kind]]]:
        """Pickled as its text and its inputs' kinds, compiled again when unpickled (a
        compiled expression is closures; agent.config.confined pickles the config)."""
        return compile_expression, (
            self.source,
            dict(zip(self.inputs, self.input_kinds, strict=True)),
        )

    def __call__(self, values: Mapping[str, int | float | bool]) -> int | float | bool:
        """The result for `values`, which hold every input; raises EvaluationError."""
        try:
            result = self._evaluate(values)
        except (ArithmeticError, ValueError) as exc:  # EvaluationError included
            raise EvaluationError(self._failure(values, _reason(exc))) from exc
        if -_LARGEST <= result <= _LARGEST:  # False for nan and infinities; True for booleans
            return result
        raise EvaluationError(self._failure(values, _out_of_range(result)))

    def _failure(self, values: Values, reason: str) -> str:
        shown = ", ".join(f"{name}={values[name]!r}" for name in self.inputs[:_SHOWN_VALUES])
        more = ", ..." if len(self.inputs) > _SHOWN_VALUES else ""
        given = f" with {shown}{more}" if shown else ""
        return f"cannot evaluate {self.source!r}{given}: {reason}"


def compile_expression(text: str, known: Mapping[str, Kind]) -> Expression:
    """`text` checked against the points it may read (`known`: id → kind) and compiled.

    Raises ExpressionError for anything outside the language, an unknown point, a type
    error or a limit passed.
    """
    source = _read(text)
    compiler = _Compiler(source, known)
    result = compiler.part(_parse(source, known), depth=1)
    inputs = compiler.inputs()
    return Expression(
        source=text,
        inputs=inputs,
        kind=result.kind,
        _evaluate=result.evaluate,
        input_kinds=tuple(known[name] for name in inputs),
    )


# --- reading the text: quoted ids, placeholders, positions ----------------------------------

_QUOTED = re.compile(r"`((?:[^`]|``)*)`")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newline are whitespace
_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}")


@dataclass(frozen=True, slots=True)
class _Span:
    """A quoted id in the text and the padded placeholder that stands for it."""

    python_start: int
    python_end: int
    text_start: int
    text_end: int


@dataclass(frozen=True, slots=True)
class _Source:
    """The text as written and as parsed (quoted ids replaced), with positions between."""

    text: str
    python: str
    quoted: Mapping[str, str]  # placeholder name → point id
    spans: tuple[_Span, ...]
    lead: int  # whitespace stripped from the front of python (eval mode allows no indent)

    def offset(self, lineno: int, column_bytes: int, *, end: bool = False) -> int:
        """The offset in `text` of an `ast` position (a line, and UTF-8 bytes into it)."""
        lines = self.python.split("\n")
        before = sum(len(line) + 1 for line in lines[: lineno - 1])
        line = lines[lineno - 1] if lineno <= len(lines) else ""
        column = len(line.encode()[:column_bytes].decode(errors="replace"))
        return self.original(before + column, end=end)

    def original(self, python_offset: int, *, end: bool = False) -> int:
        """The offset in `text` of an offset in `python`."""
        python_offset += self.lead
        moved = 0
        for span in self.spans:
            if python_offset < span.python_start:
                break
            if python_offset < span.python_end:
                return span.text_end if end else span.text_start
            moved = span.text_end - span.python_end
        return python_offset + moved

    def start(self, node: ast.expr | ast.keyword) -> int:
        return self.offset(node.lineno, node.col_offset)

    def segment(self, node: ast.expr) -> str:
        """The text of `node` as written."""
        end_lineno = node.end_lineno or node.lineno
        end_column = node.end_col_offset if node.end_col_offset is not None else node.col_offset
        return self.text[self.start(node) : self.offset(end_lineno, end_column, end=True)]

    def where(self, offset: int) -> str:
        return _where(self.text, offset)


def _where(text: str, offset: int) -> str:
    """ "column 7", or "line 2, column 3" in a text of several lines (both count from 1)."""
    line_start = text.rfind("\n", 0, offset) + 1
    column = offset - line_start + 1
    if "\n" not in text:
        return f"column {column}"
    return f"line {text.count(chr(10), 0, offset) + 1}, column {column}"


def _read(text: str) -> _Source:
    """The text checked for what the parser should never see, and its ids replaced."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"the expression is {len(text)} characters long; at most {MAX_LENGTH} are allowed"
        )
    if not text.strip():
        raise ExpressionError("the expression is empty")
    control = _CONTROL.search(text)
    if control is not None:
        where = _where(text, control.start())
        raise ExpressionError(f"a control character {control[0]!r} at {where}", control.start())
    source = _replace_quoted(text)
    comment = source.python.find("#")  # the text can hold no string, so this starts a comment
    if comment >= 0:
        offset = source.original(comment)
        raise ExpressionError(f"not allowed: comments (#) at {source.where(offset)}", offset)
    _check_brackets(source)
    return source


def _replace_quoted(text: str) -> _Source:
    """Each `quoted id` replaced by a placeholder name, padded with spaces so that it stays
    one token; the placeholders' prefix occurs nowhere in the text."""
    prefix = "_q"
    while prefix in text:
        prefix += "_"
    pieces: list[str] = []
    quoted: dict[str, str] = {}
    spans: list[_Span] = []
    done = 0  # characters of text consumed
    length = 0  # characters of python produced
    for match in _QUOTED.finditer(text):
        point_id = match[1].replace("``", "`")
        if not point_id:
            where = _where(text, match.start())
            raise ExpressionError(f"an empty quoted id `` at {where}", match.start())
        before = text[done : match.start()]
        _refuse_stray_backtick(text, done, before)
        placeholder = f"{prefix}{len(quoted)}"
        quoted[placeholder] = point_id
        pieces += [before, f" {placeholder} "]
        start = length + len(before)
        length = start + len(placeholder) + 2
        spans.append(_Span(start, length, match.start(), match.end()))
        done = match.end()
    _refuse_stray_backtick(text, done, text[done:])
    pieces.append(text[done:])
    python = "".join(pieces)
    stripped = python.lstrip(" \t\n")
    return _Source(text, stripped, quoted, tuple(spans), len(python) - len(stripped))


def _refuse_stray_backtick(text: str, offset: int, piece: str) -> None:
    if "`" in piece:
        at = offset + piece.index("`")
        raise ExpressionError(f"a backtick at {_where(text, at)} is not closed", at)


def _check_brackets(source: _Source) -> None:
    """Brackets nested at most MAX_NESTING deep: they make no node the compiler would
    count, and the parser has its own, larger, limit with a less helpful message."""
    depth = 0
    for index, char in enumerate(source.python):
        if char in _OPENING:
            depth += 1
            if depth > MAX_NESTING:
                offset = source.original(index)
                where = source.where(offset)
                raise ExpressionError(f"nesting deeper than {MAX_NESTING} at {where}", offset)
        elif char in _CLOSING:
            depth -= 1


def _parse(source: _Source, known: Mapping[str, Kind]) -> ast.expr:
    """The tree of one Python expression; nothing is compiled to code or run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings are about code we refuse anyway
            tree = ast.parse(source.python, mode="eval")
    except SyntaxError as exc:
        offset = _syntax_offset(source, exc)
        where = "the end" if offset == len(source.text) else source.where(offset)
        hint = _quoting_hint(source.python, known)
        raise ExpressionError(f"syntax error at {where}: {exc.msg}{hint}", offset) from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"nesting deeper than {MAX_NESTING}") from None
    return tree.body


def _syntax_offset(source: _Source, exc: SyntaxError) -> int:
    """Where in the text a syntax error is; the parser says column 0 for the end of input."""
    if exc.lineno is None or not exc.offset:
        return len(source.text)
    lines = source.python.split("\n")
    before = sum(len(line) + 1 for line in lines[: exc.lineno - 1])
    python_offset = min(before + exc.offset - 1, len(source.python))
    return min(source.original(python_offset), len(source.text))


# --- the compiler: a checked tree to closures -------------------------------------------------

_NO_VALUES: Values = {}


@dataclass(frozen=True, slots=True)
class _Part:
    """A compiled sub-expression. `constant` parts ignore the values and give `value`;
    `key` parts read that one point."""

    kind: Kind
    evaluate: Evaluate
    constant: bool = False
    value: Scalar = 0
    key: str | None = None


def _constant(kind: Kind, value: Scalar) -> _Part:
    return _Part(kind, lambda values: value, constant=True, value=value)


def _point(kind: Kind, key: str) -> _Part:
    return _Part(kind, operator.itemgetter(key), key=key)


def _folded(kind: Kind, evaluate: Evaluate, *parts: _Part) -> _Part:
    """`evaluate` as a part, worked out now if all its parts are constant and it succeeds;
    a failure is left to evaluation, where it may never be reached."""
    if all(part.constant for part in parts):
        try:
            return _constant(kind, evaluate(_NO_VALUES))
        except (ArithmeticError, ValueError):
            pass
    return _Part(kind, evaluate)


_ARITHMETIC: dict[type[ast.operator], tuple[str, Binary]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
}
_LEVEL: dict[type[ast.operator], int] = {  # operators of one level chain left to right
    ast.Add: 1,
    ast.Sub: 1,
    ast.Mult: 2,
    ast.Div: 2,
    ast.FloorDiv: 2,
    ast.Mod: 2,
}
_ORDERING: dict[type[ast.cmpop], tuple[str, Binary]] = {
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
}
_EQUALITY: dict[type[ast.cmpop], tuple[str, Binary]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
}
_REFUSED_OPERATORS: dict[type[ast.AST], str] = {
    ast.BitAnd: "`&` (for booleans write `and`)",
    ast.BitOr: "`|` (for booleans write `or`)",
    ast.BitXor: "`^` (for booleans write `!=`; for a power `**`)",
    ast.LShift: "`<<`",
    ast.RShift: "`>>`",
    ast.MatMult: "`@`",
    ast.Invert: "`~` (for booleans write `not`)",
    ast.Is: "`is` (write `==`)",
    ast.IsNot: "`is not` (write `!=`)",
    ast.In: "`in`",
    ast.NotIn: "`not in`",
}
_REFUSED_NODES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access (x.y)",
    ast.Subscript: "subscripts (x[i])",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.JoinedStr: "f-strings",
    ast.NamedExpr: "assignment (:=)",
    ast.Starred: "starred arguments (*x)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}
_FUNCTIONS = ("min", "max", "abs", "round")
_CONDITIONAL = "`... if ... else ...`"


class _Compiler:
    """One expression's tree checked node by node and turned into closures."""

    def __init__(self, source: _Source, known: Mapping[str, Kind]) -> None:
        self._source = source
        self._known = known
        self._reads: list[tuple[int, str]] = []

    def inputs(self) -> tuple[str, ...]:
        """The points read, each once, in the order they first appear in the text."""
        return tuple(dict.fromkeys(point_id for _, point_id in sorted(self._reads)))

    def part(self, node: ast.expr, depth: int) -> _Part:
        if depth > MAX_NESTING:
            raise self._error(node, f"nesting deeper than {MAX_NESTING}")
        return self._dispatch(node, depth)

    def _dispatch(self, node: ast.expr, depth: int) -> _Part:
        match node:
            case ast.Constant():
                return self._literal(node)
            case ast.Name():
                return self._name(node)
            case ast.UnaryOp():
                return self._unary(node, depth)
            case ast.BinOp(op=ast.Pow()):
                return self._power(node, depth)
            case ast.BinOp():
                return self._arithmetic(node, depth)
            case ast.BoolOp():
                return self._logic(node, depth)
            case ast.Compare():
                return self._comparison(node, depth)
            case ast.IfExp():
                return self._conditional(node, depth)
            case ast.Call():
                return self._call(node, depth)
        raise self._error(node, f"not allowed: {_describe(node)}")

    def _operand(self, node: ast.expr, depth: int, what: str, kind: Kind = "number") -> _Part:
        """`node` compiled, refused unless of `kind`, which `what` needs."""
        part = self.part(node, depth)
        if part.kind != kind:
            code = self._code(node)
            instead = f"{code} != 0" if kind == "boolean" else f"1 if {code} else 0"
            what = f"{what} needs a {kind}, but '{code}' is a {part.kind}"
            raise self._error(node, what, f" (write '{instead}')")
        return part

    def _literal(self, node: ast.Constant) -> _Part:
        value = node.value
        if isinstance(value, bool):
            return _constant("boolean", value)
        if isinstance(value, int | float):
            if -_LARGEST <= value <= _LARGEST:
                return _constant("number", value)
            raise self._error(node, "a number beyond the float range (about ±1.8e308)")
        raise self._error(node, f"not allowed: {_describe_constant(value)}")

    def _name(self, node: ast.Name) -> _Part:
        point_id = self._source.quoted.get(node.id)
        if point_id is None:
            point_id = self._source.segment(node)  # as written: node.id is NFKC-folded
        kind = self._known.get(point_id)
        if kind is None:
            raise self._error(
                node, f"unknown point {point_id!r}", _known_list(point_id, self._known)
            )
        self._reads.append((self._source.start(node), point_id))
        return _point(kind, point_id)

    def _unary(self, node: ast.UnaryOp, depth: int) -> _Part:
        if isinstance(node.op, ast.Not):
            operand = self._operand(node.operand, depth + 1, "`not`", "boolean")
            function = operand.evaluate
            return _folded("boolean", lambda values: not function(values), operand)
        if isinstance(node.op, ast.USub):
            operand = self._operand(node.operand, depth + 1, "`-`")
            function = operand.evaluate
            return _folded("number", lambda values: -function(values), operand)
        if isinstance(node.op, ast.UAdd):
            return self._operand(node.operand, depth + 1, "`+`")
        raise self._error(node, f"not allowed: {_REFUSED_OPERATORS[type(node.op)]}")

    def _power(self, node: ast.BinOp, depth: int) -> _Part:
        base = self._operand(node.left, depth + 1, "`**`")
        exponent = self._operand(node.right, depth + 1, "`**`")
        if exponent.constant and exponent.value > MAX_EXPONENT:
            raise self._error(node.right, f"`**` with an exponent above {MAX_EXPONENT}")
        if exponent.constant and exponent.value < -MAX_EXPONENT:
            raise self._error(node.right, f"`**` with an exponent below -{MAX_EXPONENT}")
        return _folded("number", _pair(_power, base, exponent), base, exponent)

    def _arithmetic(self, node: ast.BinOp, depth: int) -> _Part:
        """A run of operators of one level (`a + b - c`) as one level of nesting."""
        if type(node.op) not in _ARITHMETIC:
            raise self._error(node, f"not allowed: {_REFUSED_OPERATORS[type(node.op)]}")
        operands, operators = _run(node)
        symbols = [_ARITHMETIC[type(op)][0] for op in operators]
        parts = [
            self._operand(operand, depth + 1, f"`{symbols[max(index - 1, 0)]}`")
            for index, operand in enumerate(operands)
        ]
        functions = [_ARITHMETIC[type(op)][1] for op in operators]
        if len(functions) <= _NESTED_UP_TO:
            result = parts[0]
            for function, part in zip(functions, parts[1:], strict=True):
                result = _folded("number", _pair(function, result, part), result, part)
            return result
        rest = tuple(
            (function, part.evaluate) for function, part in zip(functions, parts[1:], strict=True)
        )
        return _folded("number", _left_to_right(parts[0].evaluate, rest), *parts)

    def _logic(self, node: ast.BoolOp, depth: int) -> _Part:
        conjunction = isinstance(node.op, ast.And)
        what = "`and`" if conjunction else "`or`"
        parts = [self._operand(value, depth + 1, what, "boolean") for value in node.values]
        functions = tuple(part.evaluate for part in parts)
        return _folded("boolean", _all_of(functions) if conjunction else _any_of(functions), *parts)

    def _comparison(self, node: ast.Compare, depth: int) -> _Part:
        for op in node.ops:
            if type(op) in _REFUSED_OPERATORS:
                raise self._error(node, f"not allowed: {_REFUSED_OPERATORS[type(op)]}")
        operands = [node.left, *node.comparators]
        parts = [self.part(operand, depth + 1) for operand in operands]
        functions = [
            self._comparator(op, operands[index : index + 2], parts[index : index + 2])
            for index, op in enumerate(node.ops)
        ]
        if len(functions) == 1:
            return _folded("boolean", _pair(functions[0], parts[0], parts[1]), *parts)
        rest = tuple(
            (function, part.evaluate) for function, part in zip(functions, parts[1:], strict=True)
        )
        return _folded("boolean", _chained(parts[0].evaluate, rest), *parts)

    def _comparator(
        self, op: ast.cmpop, nodes: Sequence[ast.expr], parts: Sequence[_Part]
    ) -> Binary:
        """The function of one comparison of a chain, with its operands' kinds checked."""
        if type(op) in _ORDERING:
            symbol, function = _ORDERING[type(op)]
            for operand, part in zip(nodes, parts, strict=True):
                if part.kind != "number":
                    code = self._code(operand)
                    what = f"`{symbol}` needs a number, but '{code}' is a boolean"
                    raise self._error(operand, what, f" (write '1 if {code} else 0')")
            return function
        symbol, function = _EQUALITY[type(op)]
        left, right = parts
        if left.kind != right.kind:
            what = f"`{symbol}` compares a {left.kind} with a {right.kind}"
            shown = f"'{self._code(nodes[0])}' with '{self._code(nodes[1])}'"
            raise self._error(nodes[0], f"{what}: {shown}")
        return function

    def _conditional(self, node: ast.IfExp, depth: int) -> _Part:
        body = self.part(node.body, depth + 1)
        test = self._operand(node.test, depth + 1, f"the condition of {_CONDITIONAL}", "boolean")
        orelse = self.part(node.orelse, depth + 1)
        if body.kind != orelse.kind:
            shown = (
                f"'{self._code(node.body)}' is a {body.kind}, "
                f"'{self._code(node.orelse)}' a {orelse.kind}"
            )
            raise self._error(node, f"the branches of {_CONDITIONAL} differ in kind: {shown}")
        when, then, otherwise = test.evaluate, body.evaluate, orelse.evaluate
        return _folded(
            body.kind,
            lambda values: then(values) if when(values) else otherwise(values),
            test,
            body,
            orelse,
        )

    def _call(self, node: ast.Call, depth: int) -> _Part:
        name = self._function_name(node.func)
        if name not in _FUNCTIONS:
            called = f"'{name if name is not None else self._code(node.func)}'"
            allowed = ", ".join(_FUNCTIONS)
            raise self._error(node, f"not allowed: a call to {called} (only {allowed})")
        if node.keywords:
            raise self._error(node.keywords[0], "not allowed: keyword arguments (name=value)")
        if name == "round":
            return self._round(node, depth)
        arguments = [self._operand(arg, depth + 1, f"`{name}`") for arg in node.args]
        if name == "abs":
            if len(arguments) != 1:
                raise self._error(node, f"`abs` takes one argument, not {len(arguments)}")
            function = arguments[0].evaluate
            return _folded("number", lambda values: abs(function(values)), *arguments)
        if len(arguments) < 2:
            raise self._error(node, f"`{name}` needs at least two arguments")
        extreme = min if name == "min" else max
        return _folded("number", _extreme(extreme, arguments), *arguments)

    def _round(self, node: ast.Call, depth: int) -> _Part:
        if not 1 <= len(node.args) <= 2:
            raise self._error(node, f"`round` takes one or two arguments, not {len(node.args)}")
        number = self._operand(node.args[0], depth + 1, "`round`")
        function = number.evaluate
        if len(node.args) == 1:
            return _folded("number", lambda values: round(function(values)), number)
        digits = self.part(node.args[1], depth + 1)
        if not (digits.constant and type(digits.value) is int and 0 <= digits.value <= 15):
            what = (
                f"the digits of `round(x, n)` must be a whole number from 0 to {MAX_ROUND_DIGITS}"
            )
            raise self._error(node.args[1], what)
        places = int(digits.value)
        return _folded("number", lambda values: round(function(values), places), number)

    def _function_name(self, node: ast.expr) -> str | None:
        """The name of a called function as written, or None if it is not a plain name."""
        if not isinstance(node, ast.Name) or node.id in self._source.quoted:
            return None
        return self._source.segment(node)

    def _code(self, node: ast.expr) -> str:
        """A sub-expression as written, quoted for a message."""
        code = " ".join(self._source.segment(node).split())
        if len(code) > _SHOWN_CODE:
            code = code[: _SHOWN_CODE - 3] + "..."
        return code

    def _error(self, node: ast.expr | ast.keyword, what: str, detail: str = "") -> ExpressionError:
        offset = self._source.start(node)
        hint = _quoting_hint(self._source.python, self._known)
        return ExpressionError(f"{what} at {self._source.where(offset)}{detail}{hint}", offset)


def _run(node: ast.BinOp) -> tuple[list[ast.expr], list[ast.operator]]:
    """The operands and operators of `a + b - c` (a left-nested run of one level), in order."""
    level = _LEVEL[type(node.op)]
    operands: list[ast.expr] = []
    operators: list[ast.operator] = []
    current: ast.expr = node
    while isinstance(current, ast.BinOp) and _LEVEL.get(type(current.op)) == level:
        operands.append(current.right)
        operators.append(current.op)
        current = current.left
    operands.append(current)
    return operands[::-1], operators[::-1]


# --- closures: the shapes an expression is evaluated through ----------------------------------


def _pair(function: Binary, left: _Part, right: _Part) -> Evaluate:
    """`function(left, right)`; points are read and constants given inline, not called."""
    left_key, right_key = left.key, right.key
    if left_key is not None and right_key is not None:
        return lambda values: function(values[left_key], values[right_key])
    if left_key is not None and right.constant:
        constant = right.value
        return lambda values: function(values[left_key], constant)
    first, second = left.evaluate, right.evaluate
    if right.constant:
        constant = right.value
        return lambda values: function(first(values), constant)
    if left.constant:
        constant = left.value
        return lambda values: function(constant, second(values))
    return lambda values: function(first(values), second(values))


def _left_to_right(first: Evaluate, rest: tuple[tuple[Binary, Evaluate], ...]) -> Evaluate:
    """`a + b - c + ...` in one frame, however long the run."""

    def evaluate(values: Values) -> Scalar:
        result = first(values)
        for function, operand in rest:
            result = function(result, operand(values))
        return result

    return evaluate


def _chained(first: Evaluate, rest: tuple[tuple[Binary, Evaluate], ...]) -> Evaluate:
    """`a < b < c`: each operand evaluated once, and no further than the first False."""

    def evaluate(values: Values) -> Scalar:
        left = first(values)
        for function, operand in rest:
            right = operand(values)
            if not function(left, right):
                return False
            left = right
        return True

    return evaluate


def _all_of(functions: tuple[Evaluate, ...]) -> Evaluate:
    if len(functions) == 2:
        first, second = functions
        return lambda values: first(values) and second(values)

    def evaluate(values: Values) -> Scalar:
        return all(function(values) for function in functions)

    return evaluate


def _any_of(functions: tuple[Evaluate, ...]) -> Evaluate:
    if len(functions) == 2:
        first, second = functions
        return lambda values: first(values) or second(values)

    def evaluate(values: Values) -> Scalar:
        return any(function(values) for function in functions)

    return evaluate


def _extreme(extreme: Callable[..., Scalar], arguments: Sequence[_Part]) -> Evaluate:
    """min(...) or max(...) of the arguments, compared as Python's builtins compare them."""
    functions = tuple(argument.evaluate for argument in arguments)
    if len(functions) == 2:
        first, second = functions
        return lambda values: extreme(first(values), second(values))
    if len(functions) == 3:  # three phases: a comprehension would cost more than the calls
        first, second, third = functions
        return lambda values: extreme(first(values), second(values), third(values))
    return lambda values: extreme([function(values) for function in functions])


def _power(base: Scalar, exponent: Scalar) -> Scalar:
    """`base ** exponent` with the exponent in range and the result a real number within the
    float range; an int result is refused before it is worked out if it would be far beyond."""
    if not -MAX_EXPONENT <= exponent <= MAX_EXPONENT:
        raise EvaluationError(
            f"the exponent {exponent!r} is outside -{MAX_EXPONENT}..{MAX_EXPONENT}"
        )
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and (abs(base).bit_length() - 1) * exponent >= _LARGEST_BITS
    ):
        raise EvaluationError(f"{_shown(base)} ** {_shown(exponent)} is beyond the float range")
    result: object = base**exponent
    if isinstance(result, complex):
        raise EvaluationError(f"{_shown(base)} ** {_shown(exponent)} is not a real number")
    assert isinstance(result, int | float)  # a float beyond the range raised OverflowError
    if isinstance(result, int) and not -_LARGEST <= result <= _LARGEST:
        raise EvaluationError(f"{_shown(base)} ** {_shown(exponent)} is beyond the float range")
    return result


# --- messages ----------------------------------------------------------------------------------


def _shown(number: Scalar) -> str:
    return f"({number!r})" if number < 0 else repr(number)


def _reason(exc: ArithmeticError | ValueError) -> str:
    if isinstance(exc, EvaluationError):
        return str(exc)
    if isinstance(exc, ZeroDivisionError):
        return "division by zero"
    if isinstance(exc, OverflowError):
        return "a number beyond the float range (overflow)"
    return f"a math domain error ({exc})"


def _out_of_range(result: Scalar) -> str:
    if isinstance(result, float) and math.isnan(result):
        return "the result is not a number (nan)"
    if isinstance(result, float):
        return f"the result is infinite ({result!r})"
    return "the result is beyond the float range (about ±1.8e308)"


def _describe(node: ast.AST) -> str:
    return _REFUSED_NODES.get(type(node), type(node).__name__)


def _describe_constant(value: object) -> str:
    if isinstance(value, str | bytes):
        return "strings"
    if isinstance(value, complex):
        return "complex numbers"
    return repr(value)


def _is_plain(point_id: str) -> bool:
    """Whether an id can be written without backticks."""
    return point_id.isidentifier() and not keyword.iskeyword(point_id)


def _written(point_id: str) -> str:
    """An id as an expression must write it."""
    if _is_plain(point_id):
        return point_id
    return "`" + point_id.replace("`", "``") + "`"


def _known_list(point_id: str, known: Mapping[str, Kind]) -> str:
    if not known:
        return " (no points are known here)"
    names = sorted(known)
    listed = ", ".join(_written(name) for name in names[:_LISTED_KNOWN])
    if len(names) <= _LISTED_KNOWN:
        return f" (known: {listed})"
    close = difflib.get_close_matches(point_id, names, n=3)
    guess = f"did you mean {', '.join(_written(name) for name in close)}? " if close else ""
    return f" ({guess}known: {listed}, and {len(names) - _LISTED_KNOWN} more)"


def _quoting_hint(python: str, known: Mapping[str, Kind]) -> str:
    """Advice when the text seems to hold, unquoted, a known id that needs backticks."""
    for point_id in sorted(known):
        if point_id.isidentifier() or not any(char.isalpha() for char in point_id):
            continue  # a keyword in the text is more likely the keyword; "1" the number
        if re.search(rf"(?<!\w){re.escape(point_id)}(?!\w)", python):
            return f"; the point id {point_id!r} is written in backticks: {_written(point_id)}"
    return ""
