"""Base models: resolution (embedded, local dir, GGUF, hub cache), conversion, fingerprints, loading."""

from expertkit.models.fingerprint import Fingerprint, fingerprint
from expertkit.models.info import ModelInfo, ModelListing, list_models, model_info
from expertkit.models.load import load_model, load_tokenizer
from expertkit.models.pull import prepare_model, pull_model
from expertkit.models.registry import DEFAULT_MODEL, EMBEDDED_MODELS
from expertkit.models.resolve import ResolvedModel, resolve_model

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "Fingerprint",
    "ModelInfo",
    "ModelListing",
    "ResolvedModel",
    "fingerprint",
    "list_models",
    "load_model",
    "load_tokenizer",
    "model_info",
    "prepare_model",
    "pull_model",
    "resolve_model",
]
