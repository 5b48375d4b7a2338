"""Regenerate the files generated from the typed manifest model: the shipped JSON Schema
(src/expertkit/manifest/expert-manifest.schema.json) and the field reference (docs/manifest.md)."""

from pathlib import Path

from expertkit.manifest.reference import DOC_FILE, render_markdown
from expertkit.manifest.schema import SCHEMA_FILE, render_schema

root = Path(__file__).resolve().parent.parent
for target, text in (
    (root / "src" / "expertkit" / "manifest" / SCHEMA_FILE, render_schema()),
    (root / DOC_FILE, render_markdown()),
):
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
