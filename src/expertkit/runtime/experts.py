"""Load one expert on its base model, checked against its lock before its adapter is attached.

The base model must be the one the expert was trained on (weights hash, architecture,
vocabulary); the chat template must render the probe conversation to the same tokens as in
training unless template drift is allowed. :class:`expertkit.runtime.engine.Engine` does the
work; this is the one-expert convenience.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from expertkit.models.load import transformers_tokenizer
from expertkit.models.resolve import ResolvedModel
from expertkit.package.references import ExpertFiles
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions

__all__ = ["LoadOptions", "LoadedExpert", "load_expert"]


@dataclass
class LoadedExpert:
    files: ExpertFiles
    model: Any  # a peft.PeftModel with the expert's adapter, named after the expert
    tokenizer: Any
    base: ResolvedModel
    soft_prompt: Any = None
    warnings: list[str] = field(default_factory=list)
    engine: Engine | None = None

    @property
    def name(self) -> str:
        return self.files.loaded.manifest.name


def load_expert(reference: str, options: LoadOptions | None = None) -> LoadedExpert:
    """Resolve, check against the lock, load the base model and attach the adapter.

    Raises:
        PackageError: the reference is unknown, or the package fails verification.
        LockMismatchError: another base model, or chat-template drift without permission.
        ModelLoadError: the base model or adapter cannot be loaded.
    """
    engine = Engine.for_experts([reference], options)
    expert = next(iter(engine.experts.values()))
    tokenizer = transformers_tokenizer(engine.tokenizer)  # callers of a loaded model read transformers' own
    return LoadedExpert(expert.files, engine.model, tokenizer, engine.base, expert.soft_prompt, expert.warnings, engine)
