"""Stop sequences enforced on decoded *text*, across token boundaries.

Tokens are decoded incrementally (the whole generated id list, so multi-byte characters and
merges come out right); a stop string that straddles two tokens still stops generation, and
neither it nor anything after it is returned. Text that could still be the start of a stop
string is held back from streaming until it is decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StopResult:
    text: str  # the text to return so far (stop string excluded)
    stopped: bool
    stop: str | None = None


class StopMatcher:
    def __init__(self, tokenizer: Any, stops: tuple[str, ...], hidden_ids: frozenset[int] | None = None) -> None:
        self.tokenizer = tokenizer
        # None: hide every special token (the tokenizer's own view); else only these ids
        self.hidden_ids = hidden_ids
        self.stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self._length = 0
        self.lengths: list[int] = []  # the decoded text's length after each token (before a stop cuts it)
        self.emitted = 0
        self.search_from = 0  # occurrences before this were declined (inside a grammar literal)

    def full_text(self) -> str:
        if self.hidden_ids is None:
            return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        shown = [i for i in self.ids if i not in self.hidden_ids]
        return str(self.tokenizer.decode(shown, skip_special_tokens=False))

    def push(self, token_id: int) -> StopResult:
        self.ids.append(token_id)
        result = self.check()
        self.lengths.append(self._length)
        return result

    def check(self) -> StopResult:
        text = self.full_text()
        self._length = len(text)
        hits = [(at, s) for s in self.stops if (at := text.find(s, self.search_from)) >= 0]
        if hits:
            at, stop = min(hits)
            return StopResult(text[:at], True, stop)
        return StopResult(text, False)

    def decline(self, result: StopResult) -> StopResult:
        """Ignore the stop string just found (e.g. a ';' inside a SQL string) and look further on."""
        self.search_from = len(result.text) + 1
        return self.check()

    def stream_delta(self, result: StopResult) -> str:
        """New text safe to show now: excludes a tail that may be the start of a stop string."""
        safe = len(result.text) if result.stopped else len(result.text) - self._held_back(result.text)
        if text := result.text[self.emitted : max(safe, self.emitted)]:
            self.emitted += len(text)
        return text

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    best = max(best, k)
                    break
        return best
