"""Tool calls read out of generated text, also while it is still being generated.

:class:`CallScanner` walks the text once, character by character, tracking JSON strings, escapes
and nesting, and records for each call object the tool's name and the exact span of its
``arguments`` value. A stream can then send the name as soon as it is complete and the arguments
as they grow, and the pieces join into exactly the string a non-streamed answer carries (the same
scanner produces both). Partial-JSON parsers re-serialise what they have parsed and guess at
unfinished values; spans of the generated text need no guessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from expertkit.runtime.tools.contract import Call


@dataclass
class _Open:
    """A call object being scanned: its key and value state, and the spans found so far."""

    key: str | None = None
    key_start: int = -1
    value_start: int = -1
    name: str | None = None
    arguments: tuple[int, int] | None = None


@dataclass
class CallScanner:
    """Incremental reader of ``{"name": ..., "arguments": {...}}`` objects, alone or in a list."""

    text: str = ""
    position: int = 0
    stack: list[str] = field(default_factory=list)  # "{" or "["
    in_string: bool = False
    escaped: bool = False
    string_start: int = -1
    calls: list[_Open] = field(default_factory=list)
    current: _Open | None = None
    awaiting_value: bool = False

    def feed(self, text: str) -> None:
        """Scan ``text`` (the whole text generated so far; only the new part is read)."""
        self.text = text
        while self.position < len(text):
            self._step(text[self.position])
            self.position += 1

    def _call_depth(self) -> int:
        return 2 if self.stack[:1] == ["["] else 1

    def _at_call_level(self) -> bool:
        return self.current is not None and len(self.stack) == self._call_depth()

    def _step(self, char: str) -> None:
        if self.in_string:
            self._string_char(char)
            return
        if self.awaiting_value and not char.isspace():
            self.awaiting_value = False
            assert self.current is not None
            self.current.value_start = self.position
        if char == '"':
            self.in_string, self.string_start = True, self.position
        elif char in "{[":
            self._open(char)
        elif char in "}]":
            self._close()
        elif char == ":" and self._at_call_level():
            self.awaiting_value = True
        elif char == "," and self._at_call_level():
            self._value_done()

    def _string_char(self, char: str) -> None:
        if self.escaped:
            self.escaped = False
        elif char == "\\":
            self.escaped = True
        elif char == '"':
            self.in_string = False
            self._string_done(self.text[self.string_start : self.position + 1])

    def _string_done(self, literal: str) -> None:
        if not self._at_call_level():
            return
        assert self.current is not None
        if self.current.value_start < 0:  # a key
            self.current.key = json.loads(literal)
        elif self.current.key == "name" and self.current.name is None:
            self.current.name = json.loads(literal)
            self._value_done()

    def _open(self, char: str) -> None:
        self.stack.append(char)
        if char == "{" and len(self.stack) == self._call_depth() and self.current is None:
            self.current = _Open()
            self.calls.append(self.current)

    def _close(self) -> None:
        if self._at_call_level():
            self.current = None
        if self.stack:
            self.stack.pop()
        if self._at_call_level():
            assert self.current is not None
            if self.current.key == "arguments" and self.current.value_start >= 0:
                self.current.arguments = (self.current.value_start, self.position + 1)
            self._value_done()

    def _value_done(self) -> None:
        assert self.current is not None
        self.current.key, self.current.value_start = None, -1

    def names(self) -> list[str | None]:
        return [c.name for c in self.calls]

    def arguments_so_far(self, index: int) -> str:
        """Call ``index``'s arguments text generated so far (all of it once the value is closed)."""
        found = self.calls[index]
        if found.arguments is not None:
            return self.text[found.arguments[0] : found.arguments[1]]
        if found.key == "arguments" and found.value_start >= 0:
            return self.text[found.value_start :]
        return ""


def parse_calls(text: str) -> list[Call] | None:
    """The calls in a complete answer, or ``None`` when it is not a (list of) call object(s)."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = body if isinstance(body, list) else [body]
    if not items or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return None
    if not all(isinstance(i.get("arguments", {}), dict) for i in items):
        return None
    scanner = CallScanner()
    scanner.feed(text)
    if len(scanner.calls) != len(items) or scanner.names() != [i["name"] for i in items]:
        spans = [json.dumps(i.get("arguments", {}), ensure_ascii=False) for i in items]
    else:
        spans = [scanner.arguments_so_far(n) or "{}" for n in range(len(items))]
    return [Call(item["name"], span) for item, span in zip(items, spans, strict=True)]
