"""Evaluation sets in their upstream formats, each read by the loader registered under its name
(one module per format, registered here; another format registers with :func:`register_set_loader`)."""

from __future__ import annotations

from pathlib import Path

from expertkit.errors import DataError
from expertkit.eval.sets.base import EvalItem, Loader, Task
from expertkit.eval.sets.bfcl import load_bfcl, load_bfcl_irrelevance
from expertkit.eval.sets.defog import load_defog
from expertkit.eval.sets.geoquery import GEOQUERY_DB, load_geoquery, sqlite_schema
from expertkit.eval.sets.jsonl import load_jsonl
from expertkit.eval.sets.spider import load_spider
from expertkit.eval.sets.text2cypher import load_text2cypher
from expertkit.registry import Registry

__all__ = [
    "GEOQUERY_DB",
    "SET_LOADERS",
    "EvalItem",
    "Loader",
    "Task",
    "load_set",
    "register_set_loader",
    "sqlite_schema",
]

SET_LOADERS: Registry[Loader] = Registry()


def register_set_loader(name: str, loader: Loader) -> None:
    """Make ``loader(path, answers) -> list[EvalItem]`` the reader of ``--format name``."""
    SET_LOADERS.register(name)(loader)


for _name, _loader in (
    ("spider", load_spider),
    ("geoquery", load_geoquery),
    ("defog", load_defog),
    ("bfcl", load_bfcl),
    ("bfcl-irrelevance", load_bfcl_irrelevance),
    ("text2cypher", load_text2cypher),
    ("jsonl", load_jsonl),
):
    register_set_loader(_name, _loader)


def load_set(path: Path, format_name: str, answers: Path | None = None) -> list[EvalItem]:
    if format_name not in SET_LOADERS:
        raise DataError(f"unknown set format {format_name!r}", f"choose one of: {', '.join(SET_LOADERS)}")
    if not path.exists():
        raise DataError(f"evaluation set {path} does not exist", "check --set")
    return SET_LOADERS[format_name](path, answers)
