"""The expert manifest: typed model, JSON Schema, loading, v1→v2 normalisation and validation."""

from expertkit.manifest.load import MANIFEST_FILE, LoadedManifest, load_manifest, normalise_v1
from expertkit.manifest.model import BaseModelEntry, ManifestV1, ManifestV2
from expertkit.manifest.report import Problem, ValidationReport
from expertkit.manifest.validate import validate_manifest

__all__ = [
    "MANIFEST_FILE",
    "BaseModelEntry",
    "LoadedManifest",
    "ManifestV1",
    "ManifestV2",
    "Problem",
    "ValidationReport",
    "load_manifest",
    "normalise_v1",
    "validate_manifest",
]
