"""What a compiled grammar is cached by (the tokenizer's identity and the grammar's key), and the
bounded, thread-safe cache each backend keeps."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any


def tokenizer_key(tokenizer: Any, vocab_size: int) -> str:
    """What a compiled grammar depends on in a tokenizer: its source, size and added tokens.

    Equal tokenizers loaded twice share compiled grammars (a grammar can be compiled in a
    background thread from its own tokenizer copy while the model loads).
    """
    added = sorted((str(k), int(v)) for k, v in tokenizer.get_added_vocab().items())
    ident = f"{getattr(tokenizer, 'name_or_path', '')}\0{len(tokenizer)}\0{vocab_size}\0{added}"
    return hashlib.sha256(ident.encode()).hexdigest()


class CompileCache:
    """Compiled grammars, least recently used first out, bounded by count and by bytes.

    Clients choose ``response_format`` schemas, so the cache must not grow with them; thread-safe,
    because compiles run on a compile thread while the generation thread reads.
    """

    def __init__(self, max_entries: int = 64, max_bytes: int = 256 << 20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: tuple[str, str], value: Any, size: int) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
                self._bytes -= self._items.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes
