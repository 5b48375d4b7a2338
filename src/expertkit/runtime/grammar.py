"""Grammar-constrained decoding: which grammar an expert asks for, compiled once, as a token mask.

Backends are chosen by name from :data:`GRAMMAR_BACKENDS` (``xgrammar`` today; llguidance can
register beside it). A compiled grammar is cached per (tokenizer, grammar) so a server compiles
each expert's grammar once; every generation gets its own matcher.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from expertkit.errors import ExpertkitError
from expertkit.grammars import grammar_text
from expertkit.manifest.sections import DecodingConfig
from expertkit.registry import Registry
from expertkit.runtime.generate import TokenMask
from expertkit.safepath import UnsafePathError, read_bounded, read_contained

GrammarKind = Literal["gbnf", "lark", "json", "json_schema"]
# Which backend compiles each kind: XGrammar for GBNF and JSON (microsecond masks for JSON),
# llguidance for Lark (the shipped SQL and Cypher grammars; see grammar_llguidance).
DEFAULT_BACKEND: dict[str, str] = {
    "gbnf": "xgrammar",
    "lark": "llguidance",
    "json": "xgrammar",
    "json_schema": "xgrammar",
}


class GrammarError(ExpertkitError):
    """A grammar cannot be read or compiled."""


@dataclass(frozen=True)
class GrammarSpec:
    """What to constrain decoding with: GBNF text, any JSON, or a JSON Schema."""

    kind: GrammarKind
    text: str = ""
    source: str = ""  # where it came from, for error messages

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.kind}\0{self.text}".encode()).hexdigest()


def _shipped(name: str) -> GrammarSpec:
    """A grammar shipped with expertkit, in its fast Lark form."""
    return GrammarSpec("lark", grammar_text(name, "lark"), f"expertkit grammar '{name}'")


def grammar_for(decoding: DecodingConfig | None, root: Path, untrusted: bool = True) -> GrammarSpec | None:
    """The grammar an expert's manifest asks for (``use_grammar``), or ``None``.

    ``grammar_file`` (GBNF, relative to the expert) wins over ``grammar_type``; ``sql-<dialect>``
    and ``cypher`` use the grammars shipped with expertkit. The file is always read with a size
    bound, as a regular file; for an ``untrusted`` expert (packaged or installed) it must also lie
    inside ``root`` after symlinks are resolved.
    """
    if decoding is None or not decoding.use_grammar:
        return None
    if decoding.grammar_file:
        path = root / decoding.grammar_file
        kind: GrammarKind = "lark" if path.suffix == ".lark" else "gbnf"
        try:
            if untrusted:
                raw = read_contained(root, decoding.grammar_file, "training.decoding.grammar_file")
            else:
                raw = read_bounded(path, "training.decoding.grammar_file")
            return GrammarSpec(kind, raw.decode("utf-8"), str(path))
        except UnsafePathError as exc:
            raise GrammarError(exc.message, exc.hint) from exc
        except UnicodeDecodeError as exc:
            raise GrammarError(f"grammar file {path} is not UTF-8 text", "save it as UTF-8") from exc
        except OSError as exc:
            raise GrammarError(f"cannot read grammar file {path}: {exc.strerror}", "fix grammar_file") from exc
    grammar_type = decoding.grammar_type or ""
    if grammar_type == "json":
        return GrammarSpec("json", source="any JSON")
    if grammar_type == "json_schema":
        return GrammarSpec("json_schema", json.dumps(decoding.json_schema or {}, sort_keys=True), "json_schema")
    if grammar_type == "sql" or grammar_type.startswith("sql-"):
        return _shipped("sql")
    if grammar_type == "cypher":
        return _shipped("cypher")
    raise GrammarError(f"grammar_type {grammar_type!r} needs a grammar_file", "add training.decoding.grammar_file")


class CompiledGrammar(Protocol):
    def matcher(self) -> TokenMask: ...
    def accepts(self, text: str) -> bool: ...


class GrammarBackend(Protocol):
    def compile(self, tokenizer: Any, vocab_size: int, spec: GrammarSpec) -> CompiledGrammar: ...


GRAMMAR_BACKENDS: Registry[type] = Registry()


def tokenizer_key(tokenizer: Any, vocab_size: int) -> str:
    """What a compiled grammar depends on in a tokenizer: its source, size and added tokens.

    Equal tokenizers loaded twice share compiled grammars (a grammar can be compiled in a
    background thread from its own tokenizer copy while the model loads).
    """
    added = sorted((str(k), int(v)) for k, v in tokenizer.get_added_vocab().items())
    ident = f"{getattr(tokenizer, 'name_or_path', '')}\0{len(tokenizer)}\0{vocab_size}\0{added}"
    return hashlib.sha256(ident.encode()).hexdigest()


_LINE = re.compile(r"line (\d+), column (\d+): (.*)", re.S)


def _compile_error(spec: GrammarSpec, exc: Exception) -> GrammarError:
    text = str(exc)
    match = _LINE.search(text)
    if match:
        line, column, why = match.groups()
        lines = spec.text.splitlines()
        shown = lines[int(line) - 1].strip() if 0 < int(line) <= len(lines) else ""
        message = f"{spec.source}: line {line}, column {column}: {why.strip()}" + (f"\n  {shown}" if shown else "")
    else:
        message = f"{spec.source}: {text.strip().splitlines()[-1] if text.strip() else type(exc).__name__}"
    return GrammarError(message, "fix the grammar (llama.cpp GBNF syntax)")


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


_BACKENDS: dict[str, GrammarBackend] = {}


def backend(name: str = "xgrammar") -> GrammarBackend:
    """The named backend, created once per process (it owns the compile cache)."""
    # Importing the modules registers the built-in backends.
    import expertkit.runtime.grammar_llguidance
    import expertkit.runtime.grammar_xgrammar  # noqa: F401

    if name not in GRAMMAR_BACKENDS:
        raise GrammarError(f"unknown grammar backend {name!r}", f"available: {', '.join(GRAMMAR_BACKENDS)}")
    if name not in _BACKENDS:
        _BACKENDS[name] = GRAMMAR_BACKENDS[name]()
    return _BACKENDS[name]


def compile_grammar(tokenizer: Any, vocab_size: int, spec: GrammarSpec) -> CompiledGrammar:
    """Compile ``spec`` with the backend for its kind (cached per tokenizer and grammar)."""
    return backend(DEFAULT_BACKEND[spec.kind]).compile(tokenizer, vocab_size, spec)


_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """``logits`` with every token whose bit is 0 in ``bitmask`` (int32 words, 32 tokens each, the
    layout XGrammar and llguidance share) set to -inf. Plain tensor ops: no compile step, ~0.1 ms."""
    allowed = ((bitmask.reshape(-1, 1) >> _BIT_SHIFTS) & 1).reshape(-1)[: logits.shape[-1]].bool()
    if allowed.shape[0] < logits.shape[-1]:  # model rows beyond the tokenizer: never allowed
        allowed = torch.cat([allowed, allowed.new_zeros(logits.shape[-1] - allowed.shape[0])])
    return logits.masked_fill(~allowed, float("-inf"))
