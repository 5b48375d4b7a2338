"""The strict base every manifest section derives from.

Unknown keys are rejected (``extra="forbid"``) so a misspelt key is never silently dropped, and
keys starting with ``_`` (``_comment``) are allowed anywhere and ignored. The JSON Schema file is
generated from these models, so the same two rules appear there as ``additionalProperties: false``
plus ``patternProperties: {"^_": {}}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

COMMENT_KEY_PATTERN = "^_"


def _allow_comment_keys(schema: dict[str, Any]) -> None:
    schema["patternProperties"] = {COMMENT_KEY_PATTERN: {}}


def unset_means(default: Any, **constraints: Any) -> Any:
    """A field a manifest may leave out, and what leaving it out means: the typed model is the one
    place the default lives (the JSON Schema, docs/manifest.md and ``manifest explain`` show it). The
    value stays ``None`` when unset, so a resolved setting can still say it came from the default."""
    return Field(default=None, json_schema_extra={"default": default}, **constraints)


class Section(BaseModel):
    """A manifest object: strict keys, comments allowed, values validated on assignment."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=_allow_comment_keys,
        validate_assignment=True,
        # Strict types so the typed model and the JSON Schema agree: "5" is not an integer
        # and 1 is not a boolean in either.
        strict=True,
        # A string literal under a field is its description (in the JSON Schema, --help, docs/manifest.md).
        use_attribute_docstrings=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_comment_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}
        return data

    @classmethod
    def default_of(cls, name: str) -> Any:
        """What leaving ``name`` out of the manifest means (declared with :func:`unset_means`)."""
        extra = cls.model_fields[name].json_schema_extra
        return extra.get("default") if isinstance(extra, dict) else cls.model_fields[name].default

    def setting(self, name: str) -> Any:
        """``name``'s value, or its declared default when the manifest leaves it out."""
        value = getattr(self, name)
        return self.default_of(name) if value is None else value
