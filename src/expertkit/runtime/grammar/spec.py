"""Which grammar an expert asks for (``training.decoding``), read once and bounded, as a
:class:`GrammarSpec`; and what a backend must provide (:class:`GrammarBackend`)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from expertkit.grammars import grammar_text
from expertkit.manifest.sections import DecodingConfig
from expertkit.runtime.generate import TokenMask
from expertkit.runtime.grammar.errors import GrammarError
from expertkit.safepath import UnsafePathError, read_bounded, read_contained

GrammarKind = Literal["gbnf", "lark", "json", "json_schema"]
# Which backend compiles each kind: XGrammar for GBNF and JSON (microsecond masks for JSON),
# llguidance for Lark (the shipped SQL and Cypher grammars; see llguidance_backend).
DEFAULT_BACKEND: dict[str, str] = {
    "gbnf": "xgrammar",
    "lark": "llguidance",
    "json": "xgrammar",
    "json_schema": "xgrammar",
}


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


_LINE = re.compile(r"line (\d+), column (\d+): (.*)", re.S)


def compile_error(spec: GrammarSpec, exc: Exception) -> GrammarError:
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
