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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertkit.errors import ExpertkitError
from expertkit.layout import LOCK_FILE
from expertkit.models.fingerprint import Fingerprint, text_sha256
from expertkit.models.template_probe import first_difference, probe_record
from expertkit.training_meta import BaseModelRecord, ModelIdentity, TrainingMeta

LOCK_VERSION = 1
REQUIRED_KEYS = ("lock_version", "expert", "base_model", "chat_template", "probe", "special_tokens", "files")


class LockMismatchError(ExpertkitError):
    """The base model or chat template at hand is not the one the expert was trained with."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept, so a lock read and written again is unchanged


class LockedExpert(_Part):
    name: str
    version: str


class LockedBaseModel(ModelIdentity):
    model_type: str | None = None


class LockedTemplate(_Part):
    sha256: str | None = None
    text: str | None = None


class ExpertLock(_Part):
    """``expert.lock.json``; the file is ``to_bytes()`` (sorted keys, so it is deterministic)."""

    lock_version: int
    expert: LockedExpert
    base_model: LockedBaseModel
    chat_template: LockedTemplate
    probe: dict[str, Any] | None
    special_tokens: dict[str, Any]
    adapter: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str]
    training: dict[str, Any] | None = None
    packaged_with: dict[str, str] = Field(default_factory=dict)

    def trained_with(self) -> TrainedWith:
        return TrainedWith(self.base_model, self.chat_template, self.probe)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


@dataclass(frozen=True)
class TrainedWith:
    """The checkable part of a lock: what the base model and chat template must be at load time.
    A packaged expert's comes from its lock, an unpackaged one's from its ``training_meta.json``;
    ``template`` is ``None`` when nothing recorded it (then the template is not checked)."""

    base_model: LockedBaseModel
    template: LockedTemplate | None
    probe: dict[str, Any] | None


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


def build_lock(inputs: LockInputs) -> ExpertLock:
    fp = inputs.fingerprint
    return ExpertLock(
        lock_version=LOCK_VERSION,
        expert=LockedExpert.model_validate(inputs.expert),
        base_model=LockedBaseModel(
            name=inputs.base_name,
            weights_sha256=fp.weights_sha256,
            architecture=fp.architecture,
            model_type=fp.model_type,
            vocab_size=fp.vocab_size,
            num_parameters=fp.num_parameters,
        ),
        chat_template=LockedTemplate(sha256=text_sha256(inputs.chat_template), text=inputs.chat_template),
        probe=inputs.probe,
        special_tokens=inputs.special_tokens,
        adapter=inputs.adapter,
        files=dict(sorted(inputs.files.items())),
        training=inputs.training,
        packaged_with=inputs.packaged_with,
    )


def parse_lock(raw: bytes, where: str) -> ExpertLock:
    """The lock, or a clear error naming what is wrong with it (the key path for a wrong type)."""
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
    try:
        return ExpertLock.model_validate(lock)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise LockMismatchError(f"{where}: {LOCK_FILE}: {path}: {first['msg']}", "re-package the expert") from exc


def check_base_model(trained: TrainedWith, fp: Fingerprint, where: str) -> None:
    """Refuse a base model whose weights, architecture or vocabulary differ from the lock's."""
    locked = trained.base_model
    for key, current in (
        ("weights_sha256", fp.weights_sha256),
        ("architecture", fp.architecture),
        ("vocab_size", fp.vocab_size),
    ):
        if getattr(locked, key) != current:
            raise LockMismatchError(
                f"{where}: the base model differs from the one this expert was trained on: "
                f"{key} is {current!r}, the lock says {getattr(locked, key)!r} ({locked.name})",
                "load the expert on the base model it was trained with",
            )


def check_template(trained: TrainedWith, tokenizer: Any, where: str, allow_drift: bool = False) -> str | None:
    """Compare the tokenizer's chat template and probe tokenisation with the lock's.

    Returns:
        ``None`` when they match; with ``allow_drift``, the description of the drift (a warning).

    Raises:
        LockMismatchError: they differ and drift is not allowed; the message shows the first
            differing probe token.
    """
    if trained.template is None:  # an unpackaged expert whose meta recorded no template
        return None
    current_sha = text_sha256(getattr(tokenizer, "chat_template", None))
    difference = first_difference(trained.probe, probe_record(tokenizer)) if trained.probe else None
    if difference is None and current_sha == trained.template.sha256:
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


def lock_from_meta(meta: TrainingMeta) -> TrainedWith:
    """The checkable part of a lock, from an unpackaged expert's ``training_meta.json``."""
    base: BaseModelRecord = meta.base_model
    template = LockedTemplate(sha256=meta.chat_template_sha256) if meta.records_template else None
    return TrainedWith(LockedBaseModel.model_validate(base.model_dump()), template, meta.template_probe)
