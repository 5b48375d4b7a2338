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
    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.emitted = 0

    def full_text(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def push(self, token_id: int) -> StopResult:
        self.ids.append(token_id)
        text = self.full_text()
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            at, stop = min(hits)
            return StopResult(text[:at], True, stop)
        return StopResult(text, False)

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
