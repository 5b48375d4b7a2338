"""Decoding settings in three levels: CLI flags (or request fields) > the expert's manifest
``training.decoding`` > built-in defaults. Every resolved value remembers where it came from, so
``--verbose`` and the server's debug log can show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypedDict

from expertkit.manifest.sections import DecodingConfig

# "cli": a command-line flag; "request": an API request's field; "context": lowered to what the
# context window leaves after the prompt.
Source = Literal["cli", "request", "manifest", "default", "context"]


class DecodingOverrides(TypedDict, total=False):
    """Values that win over the manifest's (CLI flags, API request fields); ``None`` or absent: no override."""

    temperature: float | None
    top_p: float | None
    top_k: int | None
    max_tokens: int | None
    stop_sequences: list[str] | tuple[str, ...] | None
    repetition_penalty: float | None
    seed: int | None


@dataclass(frozen=True)
class DecodingSettings:
    """Resolved decoding values; the defaults are the ones the manifest model declares."""

    temperature: float = DecodingConfig.default_of("temperature")
    top_p: float = DecodingConfig.default_of("top_p")
    top_k: int = DecodingConfig.default_of("top_k")
    max_tokens: int = DecodingConfig.default_of("max_tokens")
    stop_sequences: tuple[str, ...] = ()
    repetition_penalty: float = DecodingConfig.default_of("repetition_penalty")
    seed: int | None = None
    sources: dict[str, Source] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}
        values["stop_sequences"] = list(self.stop_sequences)
        return {name: {"value": value, "source": self.sources.get(name, "default")} for name, value in values.items()}


SETTING_NAMES = tuple(f.name for f in fields(DecodingSettings) if f.name != "sources")
DEFAULTS = DecodingSettings()
# manifest field → setting name, where they differ
_MANIFEST_NAMES = {"stop_sequences": "stop_sequences"}


def resolve_settings(
    overrides: DecodingOverrides | None, manifest: DecodingConfig | None, override_source: Source = "cli"
) -> DecodingSettings:
    """Resolve each setting: an override that is not ``None`` (reported as ``override_source``), else
    the manifest's, else the default."""
    given: dict[str, Any] = dict(overrides or {})
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for name in SETTING_NAMES:
        from_manifest = getattr(manifest, _MANIFEST_NAMES.get(name, name), None) if manifest else None
        if given.get(name) is not None:
            values[name], sources[name] = given[name], override_source
        elif from_manifest is not None:
            values[name], sources[name] = from_manifest, "manifest"
        else:
            values[name], sources[name] = getattr(DEFAULTS, name), "default"
    values["stop_sequences"] = tuple(values["stop_sequences"])
    return DecodingSettings(**values, sources=sources)
