"""The manifest as one typed model, in both schema versions.

v1.0 has one ``base_model`` and ``adapters`` at the root; v2.0 has ``base_models[]`` each with its
own adapters, plus routing, perf, runtime, constraints, capabilities and evaluation. Loading turns
v1.0 into the v2.0 shape (:func:`expertkit.manifest.load.normalise_v1`) so the rest of the code
sees only :class:`ManifestV2`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from expertkit.errors import UsageError
from expertkit.manifest.base import Section
from expertkit.manifest.sections import (
    Adapter,
    Constraints,
    Evaluation,
    Perf,
    RopeScaling,
    Routing,
    Runtime,
    SoftPrompt,
    Training,
)
from expertkit.naming import normalise_model_name

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# Semantic Versioning 2.0.0, the regex the spec itself publishes.
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class BaseModelRef(Section):
    """Which base model an expert is built on and how it is loaded."""

    name: str = Field(min_length=1, description="Embedded name, local directory, GGUF file or hub id.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="Expected weights hash.")
    quantization: Literal["none", "int8", "int4"] | None = None
    """Load the base model quantized for training (QLoRA, CUDA only): none, int8 or int4."""
    rope_scaling: RopeScaling | str | None = None
    """RoPE scaling to extend the context (a transformers rope_scaling object or a type name)."""
    prompt_template: Literal["chatml", "qwen3", "llama3", "gemma", "mistral", "phi3"] | None = Field(
        default=None,
        description=(
            "The chat-template family of the base model's own template, checked against the model by validate. "
            "It never replaces that template: expertkit always renders with the model's own (pinned in the lock)."
        ),
    )


class BaseModelEntry(BaseModelRef):
    """v2.0: a base model with the adapters trained for it."""

    adapters: list[Adapter] = Field(min_length=1)
    """The adapters trained on this base model (a package holds one)."""


class _ManifestCommon(Section):
    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    """The expert's name: lower case, used in packages, the store and the API's model field."""
    version: str = Field(pattern=SEMVER_PATTERN)
    """Semantic version of the expert (packages and the store keep several)."""
    description: str = Field(min_length=1)
    """One sentence saying what the expert does."""
    license: str | None = None
    """SPDX identifier of the expert's license, e.g. Apache-2.0."""
    author: str | None = None
    """Who made the expert."""
    readme: str | None = Field(default=None, description="README file, relative to the manifest.")
    license_file: str | None = Field(default=None, description="LICENSE file, relative to the manifest.")
    soft_prompts: list[SoftPrompt] = Field(default_factory=list)
    """Trainable virtual tokens prepended to every prompt (prompt tuning), beside or instead of an adapter."""
    training: Training | None = None
    """How to train the expert (config, dataset) and how to decode with it (decoding)."""


class ManifestV1(_ManifestCommon):
    """Legacy single-model manifest."""

    schema_version: Literal["1.0"]
    """The manifest format: 1.0 (one base model) or 2.0 (several)."""
    base_model: BaseModelRef
    """v1.0: the one base model the expert adapts."""
    adapters: list[Adapter] = Field(min_length=1)
    """v1.0: the adapters trained on the base model."""


class ManifestV2(_ManifestCommon):
    """Current manifest: one or more base models, each with its own adapters."""

    schema_version: Literal["2.0"]
    """The manifest format: 1.0 (one base model) or 2.0 (several)."""
    base_models: list[BaseModelEntry] = Field(min_length=1)
    """The base models this expert is built for, each with its adapters."""
    capabilities: list[str] = Field(default_factory=list)
    """Short capability names (sql, json ...), for listing and routing."""
    constraints: Constraints | None = None
    """Rules about loading this expert beside others."""
    routing: Routing | None = None
    """How model 'auto' picks this expert: patterns, keywords, examples, threshold."""
    perf: Perf | None = None
    """Measured performance figures of the packaged expert (informational)."""
    runtime: Runtime | None = None
    """Hints for runtimes other than expertkit's (informational)."""
    evaluation: Evaluation | None = None
    """Evaluation sets, metrics and the thresholds of the gate."""

    def model_names(self) -> list[str]:
        """The names of the base models, in manifest order."""
        return [entry.name for entry in self.base_models]

    def base_model(self, name: str | None = None) -> BaseModelEntry:
        """The entry for ``name``; with one base model, ``None`` picks it.

        Raises:
            UsageError: ``name`` is missing with several models, or matches none.
        """
        if name is None and len(self.base_models) == 1:
            return self.base_models[0]
        available = ", ".join(self.model_names())
        if name is None:
            raise UsageError(
                f"this manifest has {len(self.base_models)} base models", f"pick one with --model: {available}"
            )
        for entry in self.base_models:
            if entry.name == name or normalise_model_name(entry.name) == normalise_model_name(name):
                return entry
        raise UsageError(f"base model {name!r} is not in this manifest", f"available: {available}")


SCHEMA_VERSIONS = ("1.0", "2.0")
MODELS_BY_VERSION: dict[str, type[ManifestV1] | type[ManifestV2]] = {"1.0": ManifestV1, "2.0": ManifestV2}
