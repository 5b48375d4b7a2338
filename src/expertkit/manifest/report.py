"""What ``validate`` finds: problems with a JSON path, what was expected and what was found."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(parts: Any) -> str:
    """Render path parts as a JSONPath such as ``$.base_models[0].adapters[1].r``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.match(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def describe(value: Any, limit: int = 60) -> str:
    """A short, type-revealing rendering of a found value for messages."""
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    if isinstance(value, dict):
        return f"object with keys {sorted(value)[:6]}" if value else "empty object"
    if isinstance(value, list):
        return f"array of {len(value)} item{'s' if len(value) != 1 else ''}"
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{kind} {text}" if kind != "null" else "null"


@dataclass(frozen=True)
class Problem:
    """One finding. ``path`` is a JSONPath into the manifest (``$`` for the whole file)."""

    path: str
    message: str
    expected: str = ""
    found: str = ""
    severity: Severity = "error"

    def render(self) -> str:
        detail = []
        if self.expected:
            detail.append(f"expected {self.expected}")
        if self.found:
            detail.append(f"found {self.found}")
        suffix = f" ({'; '.join(detail)})" if detail else ""
        return f"{self.path}: {self.message}{suffix}"


@dataclass
class ValidationReport:
    """Every problem found in one manifest, errors and warnings together."""

    source: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, problems: list[Problem]) -> None:
        self.problems.extend(problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "valid": self.ok,
            "errors": [asdict(p) for p in self.errors],
            "warnings": [asdict(p) for p in self.warnings],
            "notes": list(self.notes),
        }
