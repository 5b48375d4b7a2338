"""Load an expert on its base model, checked against its lock before any weight is attached.

The base model must be the one the expert was trained on (weights hash, architecture,
vocabulary); the chat template must render the probe conversation to the same tokens as in
training unless template drift is allowed. Only then is the PEFT adapter attached.
"""

from __future__ import annotations

import warnings as py_warnings
from dataclasses import dataclass, field
from typing import Any

from expertkit.errors import ModelLoadError
from expertkit.models.fingerprint import fingerprint
from expertkit.models.load import DType, load_model
from expertkit.models.resolve import ResolvedModel, resolve_model
from expertkit.models.tokens import add_control_tokens
from expertkit.package.lock import check_base_model, check_template, lock_from_meta
from expertkit.package.references import ExpertFiles, resolve_expert
from expertkit.package.signing import PublicKey


@dataclass(frozen=True)
class LoadOptions:
    dtype: DType = "float32"
    device: str = "cpu"
    allow_template_drift: bool = False
    base: str | None = None  # another directory holding the same base model
    keys: list[PublicKey] | None = None
    require_signature: bool = False


@dataclass
class LoadedExpert:
    files: ExpertFiles
    model: Any  # a peft.PeftModel with the expert's adapter, named after the expert
    tokenizer: Any
    base: ResolvedModel
    soft_prompts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.files.loaded.manifest.name


def _lock_of(files: ExpertFiles, warnings: list[str]) -> dict[str, Any] | None:
    if files.lock is not None:
        return files.lock
    meta = files.training_meta()
    if meta is None:
        warnings.append(f"{files.root}: no expert.lock.json or training_meta.json; base model and template unchecked")
        return None
    return lock_from_meta(meta)


def _soft_prompts(files: ExpertFiles) -> dict[str, Any]:
    from safetensors.torch import load_file

    prompts = {}
    for prompt in files.loaded.manifest.soft_prompts:
        path = files.soft_prompt_dir / f"{prompt.name}.safetensors"
        if not path.is_file():
            raise ModelLoadError(f"soft prompt {prompt.name!r} is configured but {path} is missing")
        prompts[prompt.name] = load_file(str(path))["prompt_embeddings"]
    return prompts


def load_expert(reference: str, options: LoadOptions | None = None) -> LoadedExpert:
    """Resolve, check against the lock, load the base model and attach the adapter.

    Raises:
        PackageError: the reference is unknown, or the package fails verification.
        LockMismatchError: another base model, or chat-template drift without permission.
        ModelLoadError: the base model or adapter cannot be loaded.
    """
    options = options or LoadOptions()
    files = resolve_expert(reference, options.keys, options.require_signature)
    entry = files.loaded.manifest.base_models[0]
    resolved = resolve_model(options.base or entry.name, files.loaded.root)
    warnings: list[str] = []
    lock = _lock_of(files, warnings)
    if lock is not None:
        check_base_model(lock, fingerprint(resolved.path), str(files.root))
    model, tokenizer = load_model(resolved, options.dtype, options.device)
    dataset = files.loaded.manifest.training.dataset if files.loaded.manifest.training else None
    add_control_tokens(tokenizer, dataset.special_tokens if dataset else [])
    if lock is not None:
        drift = check_template(lock, tokenizer, str(files.root), options.allow_template_drift)
        warnings += [drift] if drift else []
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    from peft import PeftModel

    with py_warnings.catch_warnings():  # PEFT reads a property transformers 5 deprecated: not the user's concern
        py_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = PeftModel.from_pretrained(model, str(files.adapter_dir), adapter_name=files.loaded.manifest.name)
    peft_model.eval()
    return LoadedExpert(files, peft_model, tokenizer, resolved, _soft_prompts(files), warnings)
