"""The manifest field reference (``docs/manifest.md``, ``expert-cli manifest explain PATH``), generated
from the typed model's JSON Schema so it cannot drift: every field's path, type, default, allowed
values and one line of meaning.

Regenerate the document with ``.venv/bin/python scripts/generate_schema.py`` (it writes the schema
and this reference together); a unit test fails when the committed file is stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from expertkit.errors import UsageError

DOC_FILE = "docs/manifest.md"


@dataclass(frozen=True)
class FieldDoc:
    path: str  # JSON-ish path: training.config.batch_size, base_models[].adapters[].r, routing.patterns[]
    type: str
    default: str
    allowed: str
    description: str

    def to_json(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("path", "type", "default", "allowed", "description")}


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``node`` with a ``$ref`` or a nullable ``anyOf`` unwrapped, and the definition name it came from."""
    name = None
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:
            node = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = {**definitions[name], **{k: v for k, v in node.items() if k != "$ref"}}
    return node, name


def _type(node: dict[str, Any], definitions: dict[str, Any]) -> str:
    if "anyOf" in node:
        return " | ".join(dict.fromkeys(_type(_resolve(o, definitions)[0], definitions) for o in node["anyOf"]))
    if "enum" in node or "const" in node:
        return "string" if all(isinstance(v, str) for v in node.get("enum", [node.get("const")])) else "enum"
    kind = node.get("type", "object" if "properties" in node else "any")
    if kind == "array":
        return f"list of {_type(_resolve(node.get('items', {}), definitions)[0], definitions)}"
    if kind == "object" and "additionalProperties" in node and "properties" not in node:
        value = node["additionalProperties"]
        inner = _type(_resolve(value, definitions)[0], definitions) if isinstance(value, dict) else "any"
        return f"map of {inner}"
    return str(kind)


def _allowed(node: dict[str, Any], definitions: dict[str, Any]) -> str:
    if node.get("type") == "array":
        return _allowed(_resolve(node.get("items", {}), definitions)[0], definitions)
    values = node.get("enum") or ([node["const"]] if "const" in node else [])
    if values:
        return ", ".join(str(v) for v in values if v is not None)
    bounds = [f"{word} {node[key]}" for key, word in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
              ("exclusiveMaximum", "<"), ("minLength", "length ≥"), ("maxLength", "length ≤"),
              ("minItems", "items ≥"), ("maxItems", "items ≤"), ("pattern", "matches")) if key in node]  # fmt: skip
    return "; ".join(bounds)


def _walk(node: dict[str, Any], path: str, definitions: dict[str, Any], seen: tuple[str, ...]) -> list[FieldDoc]:
    docs: list[FieldDoc] = []
    for name, raw in node.get("properties", {}).items():
        child, ref = _resolve(raw, definitions)
        if "anyOf" in child:  # a union of several shapes: describe the field, do not descend
            child_path = f"{path}.{name}" if path else name
            docs.append(_doc(child_path, raw, child, definitions))
            continue
        child_path = f"{path}.{name}" if path else name
        docs.append(_doc(child_path, raw, child, definitions))
        if ref in seen:
            continue
        nested = (*seen, ref) if ref else seen
        if "properties" in child:
            docs += _walk(child, child_path, definitions, nested)
        elif child.get("type") == "array":
            item, item_ref = _resolve(child.get("items", {}), definitions)
            if "properties" in item and item_ref not in seen:
                docs += _walk(item, f"{child_path}[]", definitions, (*nested, item_ref) if item_ref else nested)
    return docs


def _doc(path: str, raw: dict[str, Any], node: dict[str, Any], definitions: dict[str, Any]) -> FieldDoc:
    default = json.dumps(raw["default"], ensure_ascii=False) if "default" in raw else "—"
    description = (raw.get("description") or node.get("description") or "").strip().splitlines()
    allowed = _allowed(node, definitions)
    return FieldDoc(path, _type(raw, definitions), default, allowed, " ".join(d.strip() for d in description))


def field_reference() -> list[FieldDoc]:
    """Every field of a v2.0 manifest, in schema order."""
    from expertkit.manifest.schema import generate_schema

    definitions = generate_schema()["definitions"]
    root, _ = _resolve({"$ref": "#/definitions/ManifestV2"}, definitions)
    return _walk(root, "", definitions, ("ManifestV2",))


def explain(path: str) -> list[FieldDoc]:
    """The fields at ``path`` and below (``training.dataset.checks``; ``[]`` optional after lists).

    Raises:
        UsageError: no field has that path; the hint lists the top-level sections.
    """
    wanted = path.strip().replace("[]", "").strip(".")
    rows = [d for d in field_reference() if d.path.replace("[]", "") == wanted
            or d.path.replace("[]", "").startswith(f"{wanted}.")]  # fmt: skip
    if not rows:
        sections = sorted({d.path.split(".")[0].replace("[]", "") for d in field_reference()})
        raise UsageError(f"no manifest field {path!r}", f"top-level fields: {', '.join(sections)}")
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or " "


def render_markdown() -> str:
    """``docs/manifest.md``'s exact text."""
    lines = [
        "# Manifest field reference",
        "",
        "Generated from the typed model (`src/expertkit/manifest/`) by `.venv/bin/python scripts/generate_schema.py`;",
        "do not edit by hand (a test fails when it is stale). `expert-cli manifest explain PATH` prints the same rows",
        "for one path. Paths use `[]` for list items; a v1.0 manifest is normalised to this v2.0 shape on load.",
    ]
    docs = field_reference()
    nested = {d.path.split(".")[0].replace("[]", "") for d in docs if "." in d.path}
    section = None
    for doc in docs:
        top = doc.path.split(".")[0].replace("[]", "")
        top = top if top in nested else "top level"
        if top != section:
            section = top
            title = top if top == "top level" else f"`{top}`"
            lines += ["", f"## {title}", "", "| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        cells = (f"`{doc.path}`", doc.type, doc.default, doc.allowed, doc.description)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
