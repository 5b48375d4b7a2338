"""Grammar-constrained decoding: which grammar an expert asks for, compiled once, as a token mask.

Backends are chosen by name from :data:`GRAMMAR_BACKENDS`; the built-in ones (XGrammar for GBNF and
JSON, llguidance for Lark) are registered here, and another registers with
:func:`register_grammar_backend`. A compiled grammar is cached per (tokenizer, grammar) so a server
compiles each expert's grammar once; every generation gets its own matcher.
"""

from __future__ import annotations

from typing import Any

from expertkit.registry import Registry
from expertkit.runtime.grammar.bitmask import apply_bitmask
from expertkit.runtime.grammar.cache import CompileCache, tokenizer_key
from expertkit.runtime.grammar.errors import GrammarError
from expertkit.runtime.grammar.llguidance_backend import LLGuidanceBackend
from expertkit.runtime.grammar.spec import (
    DEFAULT_BACKEND,
    CompiledGrammar,
    GrammarBackend,
    GrammarKind,
    GrammarSpec,
    grammar_for,
)
from expertkit.runtime.grammar.xgrammar_backend import XGrammarBackend

__all__ = [
    "GRAMMAR_BACKENDS",
    "CompileCache",
    "CompiledGrammar",
    "GrammarBackend",
    "GrammarError",
    "GrammarKind",
    "GrammarSpec",
    "apply_bitmask",
    "backend",
    "compile_grammar",
    "grammar_for",
    "register_grammar_backend",
    "tokenizer_key",
]

GRAMMAR_BACKENDS: Registry[type] = Registry()


def register_grammar_backend(name: str, backend_class: type) -> None:
    """Make ``backend_class`` (a :class:`GrammarBackend` constructed with no arguments) available by ``name``."""
    GRAMMAR_BACKENDS.register(name)(backend_class)


register_grammar_backend("xgrammar", XGrammarBackend)
register_grammar_backend("llguidance", LLGuidanceBackend)


_BACKENDS: dict[str, GrammarBackend] = {}


def backend(name: str = "xgrammar") -> GrammarBackend:
    """The named backend, created once per process (it owns the compile cache)."""
    if name not in GRAMMAR_BACKENDS:
        raise GrammarError(f"unknown grammar backend {name!r}", f"available: {', '.join(GRAMMAR_BACKENDS)}")
    if name not in _BACKENDS:
        _BACKENDS[name] = GRAMMAR_BACKENDS[name]()
    return _BACKENDS[name]


def compile_grammar(tokenizer: Any, vocab_size: int, spec: GrammarSpec) -> CompiledGrammar:
    """Compile ``spec`` with the backend for its kind (cached per tokenizer and grammar)."""
    return backend(DEFAULT_BACKEND[spec.kind]).compile(tokenizer, vocab_size, spec)
