"""Names used on disk: one normalisation function, used everywhere."""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[._\s/]+")
_DISALLOWED = re.compile(r"[^a-z0-9-]")
_HYPHENS = re.compile(r"-{2,}")


def normalise_model_name(name: str) -> str:
    """Turn a model name into the directory name the seeds use.

    Lower case; dots, underscores, slashes and spaces become hyphens; anything else that is not
    a letter, digit or hyphen is dropped. A hub id keeps only its repository part.

    Example:
        >>> normalise_model_name("Qwen3-0.6B")
        'qwen3-0-6b'
        >>> normalise_model_name("Qwen/Qwen3-0.6B")
        'qwen3-0-6b'
        >>> normalise_model_name("SmolLM2-135M-Instruct")
        'smollm2-135m-instruct'
    """
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if base.lower().endswith(".gguf"):
        base = base[: -len(".gguf")]
    lowered = _SEPARATORS.sub("-", base.lower())
    cleaned = _HYPHENS.sub("-", _DISALLOWED.sub("", lowered)).strip("-")
    return cleaned or "model"
