"""The strict base every manifest section derives from.

Unknown keys are rejected (``extra="forbid"``) so a misspelt key is never silently dropped, and
keys starting with ``_`` (``_comment``) are allowed anywhere and ignored. The JSON Schema file is
generated from these models, so the same two rules appear there as ``additionalProperties: false``
plus ``patternProperties: {"^_": {}}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

COMMENT_KEY_PATTERN = "^_"


def _allow_comment_keys(schema: dict[str, Any]) -> None:
    schema["patternProperties"] = {COMMENT_KEY_PATTERN: {}}


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
