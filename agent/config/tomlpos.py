"""Find the line of a TOML file where a configuration key path is written.

tomllib parses without positions, and pydantic reports a bad value by its key
path, e.g. ``('modbus', 0, 'devices', 1, 'points', 3, 'type')``. :func:`locate`
maps such a path back to a 1-based line so that a configuration error can name
the file, the key and the line.

It is used on error paths, possibly on text that tomllib already rejected, so
it never raises: on invalid TOML it makes a best guess. The text is read once:
a character scanner cuts it into tokens (strings and comments are consumed
whole, so brackets inside them are never structure) and a walker keeps a stack
of open containers (the current table, then any inline tables and arrays) to
give every key, header and array element its full path.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

Path = tuple[str | int, ...]

_PUNCTUATION = frozenset("[]{}=,.")
_BARE_WORD_STOP = frozenset(" \t\r\n#\"'") | _PUNCTUATION
_QUOTES = frozenset("\"'")


def locate(source: str, path: Sequence[str | int]) -> int | None:
    """1-based line where the value at `path` is written in the TOML text `source`.

    That is the line of the key of a ``key = value`` pair, of a ``[table]`` or
    ``[[array]]`` header, or where an element of an inline array starts. When
    the path does not exist in full (a missing or an extra key), the line of
    its deepest existing prefix; None when not even its first key exists.
    """
    lines = _Walker(source).walk()
    wanted = tuple(path)
    for depth in range(len(wanted), 0, -1):
        line = lines.get(wanted[:depth])
        if line is not None:
            return line
    return None


@dataclass(frozen=True, slots=True)
class _Token:
    """A piece of TOML: `word` is a bare word or a one-line string (a possible key)."""

    kind: Literal["newline", "punct", "word", "multiline"]
    text: str
    line: int


def _tokenize(source: str) -> Iterator[_Token]:
    """Cut `source` into tokens, dropping whitespace and comments."""
    pos, line, end = 0, 1, len(source)
    while pos < end:
        start, char = pos, source[pos]
        if char in " \t\r":
            pos += 1
        elif char == "#":
            newline = source.find("\n", pos)
            pos = end if newline < 0 else newline
        elif char == "\n" or char in _PUNCTUATION:
            yield _Token("newline" if char == "\n" else "punct", char, line)
            pos += 1
        elif char in _QUOTES and source.startswith(char * 3, pos):
            pos = _end_of_multiline_string(source, pos, char)
            yield _Token("multiline", source[start:pos], line)
        elif char in _QUOTES:
            pos, text = _one_line_string(source, pos, char)
            yield _Token("word", text, line)
        else:
            while pos < end and source[pos] not in _BARE_WORD_STOP:
                pos += 1
            yield _Token("word", source[start:pos], line)
        line += source.count("\n", start, pos)


def _end_of_multiline_string(source: str, pos: int, quote: str) -> int:
    """Position after the ``\"\"\"`` or ``'''`` string that opens at `pos`."""
    end, closer = len(source), quote * 3
    pos += len(closer)
    while pos < end:
        if quote == '"' and source[pos] == "\\":
            pos += 2
        elif source.startswith(closer, pos):
            pos += len(closer)
            # Up to two quotes may end the content right before the delimiter.
            for _ in range(2):
                if pos < end and source[pos] == quote:
                    pos += 1
            return pos
        else:
            pos += 1
    return end


def _one_line_string(source: str, pos: int, quote: str) -> tuple[int, str]:
    """Position after the one-line string that opens at `pos`, and its value.

    An unterminated string stops at the end of its line.
    """
    end, pos = len(source), pos + 1
    content_start = pos
    while pos < end and source[pos] not in (quote, "\n"):
        escaped_char = quote == '"' and source[pos] == "\\" and source[pos + 1 : pos + 2] != "\n"
        pos += 2 if escaped_char else 1
    pos = min(pos, end)
    raw = source[content_start:pos]
    if pos < end and source[pos] == quote:
        pos += 1
    if quote == '"' and "\\" in raw:
        try:
            return pos, str(tomllib.loads(f'k = "{raw}"')["k"])
        except ValueError:  # a bad escape: TOMLDecodeError is a ValueError
            return pos, raw
    return pos, raw


@dataclass(slots=True)
class _Frame:
    """An open container: the current table, an inline table or an array."""

    kind: Literal["table", "inline", "array"]
    path: Path
    expect_separator: bool = False  # an entry was read: skip to newline, `,` or closer
    count: int = 0  # elements seen so far, for an array


class _Walker:
    """Walks the tokens once and records the line of every path it meets."""

    def __init__(self, source: str) -> None:
        self._tokens = list(_tokenize(source))
        self._pos = 0
        self._stack = [_Frame("table", ())]
        self._lines: dict[Path, int] = {}
        self._implicit: set[Path] = set()  # tables created by a longer header or dotted key
        self._array_sizes: dict[Path, int] = {}  # [[array]] path -> elements so far

    def walk(self) -> dict[Path, int]:
        """Return the line of every path defined in the source."""
        while self._pos < len(self._tokens):
            token = self._tokens[self._pos]
            self._pos += 1
            frame = self._stack[-1]
            if frame.kind == "table":
                self._in_table(frame, token)
            else:
                self._in_inline_container(frame, token)
        return self._lines

    def _in_table(self, frame: _Frame, token: _Token) -> None:
        if token.kind == "newline":
            frame.expect_separator = False
        elif frame.expect_separator:
            return
        elif token.kind == "word":
            self._key_value(frame, token)
        else:
            if token.text == "[":
                self._header(frame, token)
            frame.expect_separator = True

    def _in_inline_container(self, frame: _Frame, token: _Token) -> None:
        if token.kind == "newline":
            return
        if token.kind == "punct" and token.text in ("]", "}"):
            self._close(token.text)
        elif frame.expect_separator:
            if token.kind == "punct" and token.text == ",":
                frame.expect_separator = False
        elif frame.kind == "inline":
            if token.kind == "word":
                self._key_value(frame, token)
        elif token.kind != "punct" or token.text in ("[", "{"):
            element = (*frame.path, frame.count)
            frame.count += 1
            self._define(element, token.line)
            self._open_value(frame, element, token)

    def _key_value(self, frame: _Frame, first: _Token) -> None:
        """Read `key = value` whose first key token is `first`."""
        frame.expect_separator = True
        keys = self._read_key(first, closer="=")
        if keys is None:
            return
        path = frame.path
        for key in keys[:-1]:
            path = (*path, key)
            self._imply(path, first.line)
        path = (*path, keys[-1])
        self._define(path, first.line)
        value = self._peek()
        if value is not None and (value.kind != "punct" or value.text in ("[", "{")):
            self._pos += 1
            self._open_value(frame, path, value)

    def _header(self, frame: _Frame, opener: _Token) -> None:
        """Read a `[table]` or `[[array]]` header and make it the current table."""
        is_array = self._accept("[")
        first = self._peek()
        if first is None or first.kind != "word":
            return
        self._pos += 1
        keys = self._read_key(first, closer="]")
        if keys is None or (is_array and not self._accept("]")):
            return
        path: Path = ()
        for key in keys[:-1]:
            path = (*path, key)
            self._imply(path, opener.line)
            if path in self._array_sizes:  # a key below the latest [[array]] element
                path = (*path, self._array_sizes[path] - 1)
        path = (*path, keys[-1])
        if is_array:
            size = self._array_sizes.get(path, 0)
            self._array_sizes[path] = size + 1
            if size == 0:
                self._define(path, opener.line)
            path = (*path, size)
        self._define(path, opener.line)
        frame.path = path

    def _read_key(self, first: _Token, closer: str) -> list[str] | None:
        """Read a dotted key from `first` up to and including `closer`; None if malformed."""
        keys = [first.text]
        while (token := self._peek()) is not None and token.kind == "punct":
            if token.text not in (closer, "."):
                return None  # left for the caller: it may close a container
            self._pos += 1
            if token.text == closer:
                return keys
            part = self._peek()
            if part is None or part.kind != "word":
                return None
            self._pos += 1
            keys.append(part.text)
        return None

    def _open_value(self, owner: _Frame, path: Path, first: _Token) -> None:
        """Start the value at `path` whose first token `first` was just read."""
        owner.expect_separator = True
        if first.kind == "punct":
            self._stack.append(_Frame("inline" if first.text == "{" else "array", path))

    def _close(self, closer: str) -> None:
        """Close the innermost container `closer` ends; ignore it if none is open."""
        kind = "inline" if closer == "}" else "array"
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].kind == kind:
                del self._stack[depth:]
                return

    def _peek(self) -> _Token | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _accept(self, punct: str) -> bool:
        token = self._peek()
        if token is None or token.kind != "punct" or token.text != punct:
            return False
        self._pos += 1
        return True

    def _define(self, path: Path, line: int) -> None:
        """Record where `path` is written; the first explicit definition wins."""
        if path not in self._lines or path in self._implicit:
            self._lines[path] = line
            self._implicit.discard(path)

    def _imply(self, path: Path, line: int) -> None:
        """Record a table created on the way to a longer key, unless already known."""
        if path not in self._lines:
            self._lines[path] = line
            self._implicit.add(path)
