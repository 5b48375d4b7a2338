"""Grammars shipped with expertkit, read as package data: GBNF (llama.cpp syntax) for every
grammar, and Lark (llguidance) for SQL and Cypher, the form the runtime decodes with."""

from __future__ import annotations

from importlib import resources

GRAMMARS = ("json", "sql", "cypher")


def grammar_text(name: str, syntax: str = "gbnf") -> str:
    """The text of a shipped grammar (``json``, ``sql`` or ``cypher``) in GBNF (llama.cpp) or, for
    ``sql`` and ``cypher``, Lark (what the runtime decodes with, through llguidance)."""
    if name not in GRAMMARS:
        raise KeyError(f"no shipped grammar '{name}'; available: {', '.join(GRAMMARS)}")
    return resources.files(__name__).joinpath(f"{name}.{syntax}").read_text(encoding="utf-8")
