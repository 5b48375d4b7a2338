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
    rope_scaling: RopeScaling | str | None = None
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


class _ManifestCommon(Section):
    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    description: str = Field(min_length=1)
    license: str | None = None
    author: str | None = None
    readme: str | None = Field(default=None, description="README file, relative to the manifest.")
    license_file: str | None = Field(default=None, description="LICENSE file, relative to the manifest.")
    soft_prompts: list[SoftPrompt] = Field(default_factory=list)
    training: Training | None = None


class ManifestV1(_ManifestCommon):
    """Legacy single-model manifest."""

    schema_version: Literal["1.0"]
    base_model: BaseModelRef
    adapters: list[Adapter] = Field(min_length=1)


class ManifestV2(_ManifestCommon):
    """Current manifest: one or more base models, each with its own adapters."""

    schema_version: Literal["2.0"]
    base_models: list[BaseModelEntry] = Field(min_length=1)
    capabilities: list[str] = Field(default_factory=list)
    constraints: Constraints | None = None
    routing: Routing | None = None
    perf: Perf | None = None
    runtime: Runtime | None = None
    evaluation: Evaluation | None = None

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
