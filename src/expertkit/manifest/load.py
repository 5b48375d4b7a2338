"""Read a manifest file, check it against the schema, and normalise v1.0 to the v2.0 shape."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from expertkit.errors import ManifestError
from expertkit.layout import MANIFEST_FILE
from expertkit.manifest.model import SCHEMA_VERSIONS, BaseModelEntry, ManifestV1, ManifestV2
from expertkit.manifest.report import Problem, describe, json_path
from expertkit.manifest.schema import load_schema
from expertkit.manifest.schema_errors import schema_problems

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class LoadedManifest:
    """A valid manifest in the v2.0 shape, with where it came from."""

    manifest: ManifestV2
    path: Path
    source_version: str

    @property
    def root(self) -> Path:
        """The directory relative paths in the manifest are resolved against."""
        return self.path.parent


def manifest_file(target: Path) -> Path:
    """``target`` itself, or ``target/manifest.json`` when it is a directory."""
    return target / MANIFEST_FILE if target.is_dir() else target


def no_manifest(target: Path) -> ManifestError:
    """The error for a manifest that is not there: the exact path looked at, and how to get one."""
    looked = manifest_file(target).resolve()
    return ManifestError(
        f"no manifest at {looked}",
        "pass the expert directory (the one holding manifest.json) with --expert DIR, "
        "or create an expert: expert-cli init NAME",
        exit_code=2,
    )


def read_manifest_json(path: Path) -> tuple[Any, list[Problem]]:
    """Parse the file as JSON; any failure becomes a problem at ``$`` instead of an exception."""

    def fail(message: str, expected: str = "", found: str = "") -> tuple[Any, list[Problem]]:
        return None, [Problem("$", message, expected, found)]

    if not path.exists():
        return fail(f"file not found: {path}", "an existing manifest.json")
    if path.is_dir():
        return fail(f"{path} is a directory", "a manifest file (or use --expert DIR)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return fail(f"cannot read {path}: {exc.strerror}")
    if len(raw) > MAX_MANIFEST_BYTES:
        return fail("file too large for a manifest", f"at most {MAX_MANIFEST_BYTES} bytes", f"{len(raw)} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return fail(f"not UTF-8 text (byte {exc.start} cannot be decoded)", "a UTF-8 JSON file", "binary data")
    try:
        return json.loads(text), []
    except json.JSONDecodeError as exc:
        return fail(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", "valid JSON")
    except RecursionError:
        return fail("JSON nested too deeply", "a manifest object")


def _version_problem(data: Any) -> Problem | None:
    if not isinstance(data, dict):
        return Problem("$", "a manifest must be a JSON object", "an object", describe(data))
    version = data.get("schema_version")
    if version in SCHEMA_VERSIONS:
        return None
    if "schema_version" not in data:
        guess = "1.0" if "base_model" in data else "2.0"
        return Problem(
            "$.schema_version",
            f"missing required key 'schema_version'; this looks like a v{guess} manifest:"
            f' add "schema_version": "{guess}"',
            "'1.0' or '2.0'",
            "nothing",
        )
    return Problem("$.schema_version", "unsupported schema version", "'1.0' or '2.0'", describe(version))


def structural_problems(data: Any) -> list[Problem]:
    """Schema problems of parsed JSON. Empty means the typed model will accept it too."""
    version_problem = _version_problem(data)
    if version_problem is not None:
        return [version_problem]
    return schema_problems(data, load_schema())


def normalise_v1(manifest: ManifestV1) -> ManifestV2:
    """The v2.0 shape of a v1.0 manifest: its base model with its adapters becomes base_models[0]."""
    base = manifest.base_model.model_dump(exclude_unset=True)
    entry = BaseModelEntry.model_validate(
        {**base, "adapters": [a.model_dump(exclude_unset=True) for a in manifest.adapters]}
    )
    common = manifest.model_dump(exclude={"schema_version", "base_model", "adapters"}, exclude_unset=True)
    return ManifestV2.model_validate(
        {**common, "schema_version": "2.0", "base_models": [entry.model_dump(exclude_unset=True)]}
    )


def parse_manifest(data: dict[str, Any]) -> tuple[ManifestV2, str]:
    """Typed manifest (v2.0 shape) and its source schema version. Call only after structural checks."""
    version = data["schema_version"]
    try:
        if version == "1.0":
            return normalise_v1(ManifestV1.model_validate(data)), version
        return ManifestV2.model_validate(data), version
    except ValidationError as exc:  # the schema and the model disagree: a bug, but never a traceback
        first = exc.errors()[0]
        raise ManifestError(f"{json_path(first['loc'])}: {first['msg']}", "please report this manifest") from exc


def load_manifest(target: Path) -> LoadedManifest:
    """Load and structurally validate a manifest (file or expert directory).

    Raises:
        ManifestError: listing every structural problem, each with its JSON path.
    """
    path = manifest_file(target)
    if not path.exists():
        raise no_manifest(target)
    data, problems = read_manifest_json(path)
    if not problems:
        problems = structural_problems(data)
    if problems:
        listing = "\n".join("  " + p.render() for p in problems)
        raise ManifestError(f"{path} is not a valid manifest:\n{listing}", f"run: expert-cli validate {path}")
    manifest, version = parse_manifest(data)
    return LoadedManifest(manifest=manifest, path=path.resolve(), source_version=version)
