"""Optional preprocessing steps: expert hooks, whitespace normalisation, exact and near dedup.

Near-duplicate removal uses MinHash LSH from ``datasketch`` over word 5-gram shingles of the whole
conversation; the first example of a near-duplicate cluster is kept. Length filtering needs
tokens and so happens after rendering (:mod:`expertkit.data.prepare`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from expertkit.data.conversation import Conversation
from expertkit.errors import DataError
from expertkit.manifest.sections import NearDedup

_TRAILING_SPACES = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_WORDS = re.compile(r"\w+")
HookFunction = Callable[[Iterable[dict[str, Any]], Path], Iterable[dict[str, Any]]]


@dataclass(frozen=True)
class Hook:
    """An expert's ``preprocess(records, manifest_dir)`` function, loaded from its file."""

    path: Path
    function: HookFunction
    sha256: str
    version: str | None

    def apply(self, record: dict[str, Any], manifest_dir: Path) -> list[dict[str, Any]]:
        """The hook's output for one record (so a failure names that record)."""
        return list(self.function([record], manifest_dir))

    def lineage(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "version": self.version}


def load_hook(path: Path) -> Hook:
    if not path.is_file():
        raise DataError(f"preprocessing hook {path} does not exist", "fix `preprocessing.hook` in the manifest")
    spec = importlib.util.spec_from_file_location(f"expertkit_hook_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise DataError(f"cannot import preprocessing hook {path}", "it must be a Python file")
    module: ModuleType = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the hook is user code: report, never a traceback
        raise DataError(f"preprocessing hook {path} failed to import: {exc!r}", "fix the hook") from exc
    function = getattr(module, "preprocess", None)
    if not callable(function):
        raise DataError(f"preprocessing hook {path} defines no preprocess(records, manifest_dir)", "add it")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Hook(path, function, digest, getattr(module, "__version__", None))


def normalise_text(text: str) -> str:
    """NFC, Unix newlines, no trailing spaces on lines, at most one blank line, stripped ends.

    Leading indentation is kept: it is meaningful in code answers.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return _BLANK_RUNS.sub("\n\n", _TRAILING_SPACES.sub("\n", text)).strip()


def normalise_conversation(conversation: Conversation) -> Conversation:
    def optional(value: str | None) -> str | None:
        return normalise_text(value) if value is not None else None

    messages = tuple(
        replace(
            m,
            content=normalise_text(m.content),
            think=optional(m.think),
            cite=optional(m.cite),
            context=optional(m.context),
        )
        for m in conversation.messages
    )
    return replace(conversation, messages=messages)


@dataclass
class ExactDedup:
    seen: set[str] = field(default_factory=set)

    def is_duplicate(self, conversation: Conversation) -> bool:
        digest = conversation.content_hash()
        if digest in self.seen:
            return True
        self.seen.add(digest)
        return False


class NearDedupIndex:
    """MinHash LSH over word 5-grams: is this conversation a near-copy of one already kept?"""

    def __init__(self, settings: NearDedup) -> None:
        from datasketch import MinHashLSH

        self.settings = settings
        self.lsh = MinHashLSH(threshold=settings.threshold, num_perm=settings.num_perm)
        self.count = 0

    def is_duplicate(self, conversation: Conversation) -> bool:
        from datasketch import MinHash

        words = _WORDS.findall(" ".join(m.content.lower() for m in conversation.messages))
        shingles = {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}
        minhash = MinHash(num_perm=self.settings.num_perm, seed=1)
        minhash.update_batch([s.encode("utf-8") for s in shingles])
        if self.lsh.query(minhash):
            return True
        self.lsh.insert(str(self.count), minhash)
        self.count += 1
        return False
