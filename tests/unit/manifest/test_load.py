"""Loading and v1.0 → v2.0 normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertkit.errors import ManifestError
from expertkit.manifest import ManifestV2, load_manifest, normalise_v1
from expertkit.manifest.model import ManifestV1
from unit.manifest.helpers import VALID_DIR, load_valid, mutate, write_manifest


def test_v1_is_normalised_to_the_v2_shape() -> None:
    loaded = load_manifest(VALID_DIR / "v1_full.json")
    manifest = loaded.manifest
    assert isinstance(manifest, ManifestV2)
    assert loaded.source_version == "1.0"
    assert manifest.schema_version == "2.0"
    (entry,) = manifest.base_models
    assert entry.name == "Qwen/Qwen3-0.6B"
    assert entry.quantization == "int4"
    assert entry.rope_scaling == "yarn-128k"
    assert [a.type for a in entry.adapters] == ["ia3"]
    assert entry.adapters[0].feedforward_modules == ["down_proj"]
    assert [p.name for p in manifest.soft_prompts] == ["json_format"]
    assert manifest.training is not None and manifest.training.decoding is not None
    assert manifest.training.decoding.grammar_type == "json"


def test_v1_and_equivalent_v2_normalise_to_the_same_manifest() -> None:
    v1 = load_valid("v1_minimal.json")
    v2 = {k: v for k, v in v1.items() if k not in ("base_model", "adapters")}
    v2 |= {"schema_version": "2.0", "base_models": [{**v1["base_model"], "adapters": v1["adapters"]}]}
    assert normalise_v1(ManifestV1.model_validate(v1)) == ManifestV2.model_validate(v2)


def test_comment_keys_are_allowed_and_dropped() -> None:
    manifest = load_manifest(VALID_DIR / "v2_full.json").manifest
    assert manifest.perf is not None and manifest.perf.vram_mb_overhead == 18
    assert "_comment" not in manifest.model_dump()


def test_expert_directory_resolves_to_its_manifest(tmp_path: Path) -> None:
    write_manifest(tmp_path, load_valid("v2_minimal.json"))
    loaded = load_manifest(tmp_path)
    assert loaded.path == (tmp_path / "manifest.json").resolve()
    assert loaded.manifest.model_names() == ["SmolLM2-135M-Instruct"]


def test_invalid_manifest_raises_with_every_path(tmp_path: Path) -> None:
    data = mutate(mutate(load_valid("v2_minimal.json"), "version", "x"), "name", "Bad Name")
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(write_manifest(tmp_path, data))
    assert "$.name" in excinfo.value.message and "$.version" in excinfo.value.message
    assert "expert-cli validate" in excinfo.value.hint
