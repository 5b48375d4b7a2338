"""``expert.lock.json``: what an expert was trained with, re-checked whenever it is loaded.

The lock pins the base model (weights hash, architecture, vocabulary size), the exact chat
template text, the token ids of a fixed probe conversation (:mod:`expertkit.models.template_probe`),
the special and added tokens, the sha256 of every other file in the package, the libraries used in
training and the training data's lineage hash. At load time a different base model is an error,
and a different chat template is an error unless drift is explicitly allowed; the message names
the first probe token that differs. This is the train/serve template mismatch users keep hitting
(LLaMA-Factory #10530, #2509) turned into a check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from expertkit.errors import ExpertkitError
from expertkit.layout import LOCK_FILE
from expertkit.models.fingerprint import Fingerprint, text_sha256
from expertkit.models.template_probe import first_difference, probe_record

LOCK_VERSION = 1
REQUIRED_KEYS = ("lock_version", "expert", "base_model", "chat_template", "probe", "special_tokens", "files")


class LockMismatchError(ExpertkitError):
    """The base model or chat template at hand is not the one the expert was trained with."""


@dataclass(frozen=True)
class LockInputs:
    """Everything :func:`build_lock` records; gathered by the packager."""

    expert: dict[str, str]
    base_name: str
    fingerprint: Fingerprint
    chat_template: str | None
    probe: dict[str, Any]
    special_tokens: dict[str, Any]
    adapter: dict[str, Any]
    files: dict[str, str]
    training: dict[str, Any] | None = None
    packaged_with: dict[str, str] = field(default_factory=dict)


def build_lock(inputs: LockInputs) -> dict[str, Any]:
    fp = inputs.fingerprint
    return {
        "lock_version": LOCK_VERSION,
        "expert": inputs.expert,
        "base_model": {
            "name": inputs.base_name,
            "weights_sha256": fp.weights_sha256,
            "architecture": fp.architecture,
            "model_type": fp.model_type,
            "vocab_size": fp.vocab_size,
            "num_parameters": fp.num_parameters,
        },
        "chat_template": {"sha256": text_sha256(inputs.chat_template), "text": inputs.chat_template},
        "probe": inputs.probe,
        "special_tokens": inputs.special_tokens,
        "adapter": inputs.adapter,
        "files": dict(sorted(inputs.files.items())),
        "training": inputs.training,
        "packaged_with": inputs.packaged_with,
    }


def lock_bytes(lock: dict[str, Any]) -> bytes:
    return (json.dumps(lock, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def parse_lock(raw: bytes, where: str) -> dict[str, Any]:
    """The lock as a dict, or a clear error naming what is wrong with it."""
    try:
        lock = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LockMismatchError(f"{where}: {LOCK_FILE} is not valid JSON: {exc}", "re-package the expert") from exc
    if not isinstance(lock, dict):
        raise LockMismatchError(f"{where}: {LOCK_FILE} is not a JSON object", "re-package the expert")
    missing = [key for key in REQUIRED_KEYS if key not in lock]
    if missing:
        raise LockMismatchError(f"{where}: {LOCK_FILE} lacks {', '.join(missing)}", "re-package the expert")
    if lock["lock_version"] != LOCK_VERSION:
        raise LockMismatchError(
            f"{where}: {LOCK_FILE} has lock_version {lock['lock_version']!r}; this expertkit reads {LOCK_VERSION}",
            "upgrade expertkit or re-package the expert",
        )
    return lock


def check_base_model(lock: dict[str, Any], fp: Fingerprint, where: str) -> None:
    """Refuse a base model whose weights, architecture or vocabulary differ from the lock's."""
    locked = lock["base_model"]
    for key, current in (
        ("weights_sha256", fp.weights_sha256),
        ("architecture", fp.architecture),
        ("vocab_size", fp.vocab_size),
    ):
        if locked.get(key) != current:
            raise LockMismatchError(
                f"{where}: the base model differs from the one this expert was trained on: "
                f"{key} is {current!r}, the lock says {locked.get(key)!r} ({locked.get('name')})",
                "load the expert on the base model it was trained with",
            )


def check_template(lock: dict[str, Any], tokenizer: Any, where: str, allow_drift: bool = False) -> str | None:
    """Compare the tokenizer's chat template and probe tokenisation with the lock's.

    Returns:
        ``None`` when they match; with ``allow_drift``, the description of the drift (a warning).

    Raises:
        LockMismatchError: they differ and drift is not allowed; the message shows the first
            differing probe token.
    """
    if lock.get("chat_template") is None:  # an unpackaged expert whose meta recorded no template
        return None
    current_sha = text_sha256(getattr(tokenizer, "chat_template", None))
    locked_sha = lock["chat_template"].get("sha256")
    difference = first_difference(lock["probe"], probe_record(tokenizer)) if lock.get("probe") else None
    if difference is None and current_sha == locked_sha:
        return None
    detail = (
        difference.describe()
        if difference
        else "the template text changed but renders the probe conversation to the same tokens"
    )
    message = f"{where}: chat template drift since training: {detail}"
    if allow_drift:
        return message
    raise LockMismatchError(
        message,
        "serve with the template the expert was trained with, or pass --allow-template-drift to accept the change",
    )


def lock_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The checkable part of a lock, from an unpackaged expert's ``training_meta.json``."""
    return {
        "base_model": meta.get("base_model", {}),
        "chat_template": {"sha256": meta["chat_template_sha256"]} if "chat_template_sha256" in meta else None,
        "probe": meta.get("template_probe"),
    }
