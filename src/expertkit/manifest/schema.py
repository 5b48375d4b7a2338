"""The JSON Schema (Draft 7) of the manifest, generated from the typed model.

``expert-manifest.schema.json`` ships inside the package so editors and other tools (ajv,
check-jsonschema) can validate manifests. It is generated, never edited by hand:

    .venv/bin/python scripts/generate_schema.py

and a unit test fails when the committed file differs from what the typed model generates.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_FILE = "expert-manifest.schema.json"
DRAFT7 = "http://json-schema.org/draft-07/schema#"


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                value = value.replace("#/$defs/", "#/definitions/")
            out[key] = _rewrite_refs(value)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def generate_schema() -> dict[str, Any]:
    """Build the Draft 7 schema: ``schema_version`` picks the v1.0 or v2.0 definition."""
    from expertkit.manifest.model import ManifestV1, ManifestV2

    definitions: dict[str, Any] = {}
    for model in (ManifestV1, ManifestV2):
        generated = model.model_json_schema(mode="validation")
        definitions.update(generated.pop("$defs", {}))
        definitions[model.__name__] = generated
    schema = {
        "$schema": DRAFT7,
        "$id": "https://expertkit.dev/schemas/expert-manifest.schema.json",
        "title": "expertkit expert manifest",
        "description": "An expert: adapters on a base model, how to train them, how to decode and route.",
        "type": "object",
        "required": ["schema_version"],
        "properties": {"schema_version": {"enum": ["1.0", "2.0"]}},
        "if": {"properties": {"schema_version": {"const": "1.0"}}, "required": ["schema_version"]},
        "then": {"$ref": "#/definitions/ManifestV1"},
        "else": {"$ref": "#/definitions/ManifestV2"},
        "definitions": dict(sorted(definitions.items())),
    }
    rewritten: dict[str, Any] = _rewrite_refs(schema)
    return rewritten


def render_schema() -> str:
    """The schema file's exact text."""
    return json.dumps(generate_schema(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


@cache
def load_schema() -> dict[str, Any]:
    """The schema shipped in the package (what external tools see)."""
    text = resources.files("expertkit.manifest").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
