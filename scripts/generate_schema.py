"""Regenerate src/expertkit/manifest/expert-manifest.schema.json from the typed manifest model."""

from pathlib import Path

from expertkit.manifest.schema import SCHEMA_FILE, render_schema

target = Path(__file__).resolve().parent.parent / "src" / "expertkit" / "manifest" / SCHEMA_FILE
target.write_text(render_schema(), encoding="utf-8")
print(f"wrote {target}")
