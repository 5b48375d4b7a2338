"""The shipped JSON Schema and the typed model are one source of truth and agree on every fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator
from pydantic import ValidationError

from expertkit.manifest.model import MODELS_BY_VERSION
from expertkit.manifest.schema import load_schema, render_schema
from expertkit.manifest.schema_errors import StrictDraft7Validator
from unit.manifest.helpers import VALID_DIR, load_valid, mutate
from unit.manifest.test_invalid_manifests import CASES

VALID = sorted(p.name for p in VALID_DIR.glob("*.json"))
SCHEMA_FILE = Path(__file__).resolve().parents[3] / "src" / "expertkit" / "manifest" / "expert-manifest.schema.json"


def typed_accepts(data: object) -> bool:
    if not isinstance(data, dict) or data.get("schema_version") not in MODELS_BY_VERSION:
        return False
    try:
        MODELS_BY_VERSION[data["schema_version"]].model_validate(data)
    except ValidationError:
        return False
    return True


def schema_accepts(data: object) -> bool:
    return StrictDraft7Validator(load_schema()).is_valid(data)


def test_committed_schema_matches_the_typed_model() -> None:
    # Regenerate with: .venv/bin/python scripts/generate_schema.py
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render_schema()


def test_schema_is_a_valid_draft7_schema() -> None:
    Draft7Validator.check_schema(load_schema())
    assert load_schema()["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize("name", VALID)
def test_both_accept_valid_fixtures(name: str) -> None:
    data = load_valid(name)
    assert schema_accepts(data)
    assert typed_accepts(data)
    assert Draft7Validator(load_schema()).is_valid(data)  # plain Draft 7 tools (ajv, check-jsonschema) too


# Structural cases are those whose problem the schema itself reports; semantic ones pass both.
STRUCTURAL = [
    c
    for c in CASES
    if c[0]
    not in {
        "adapter-no-rank",
        "adapter-no-alpha",
        "adapter-rank-disagree",
        "adapter-norm-target",
        "adapter-lm-head-target",
        "adapter-ff-on-dora",
        "soft-prompt-text-no-init-text",
        "grammar-file-missing",
        "warmup-both",
        "dataset-missing-file",
        "dataset-path-and-datasets",
        "share-beside-weight",
        "routing-bad-regex",
        "readme-missing",
    }
]


@pytest.mark.parametrize(("path", "value"), [c[1:3] for c in STRUCTURAL], ids=[c[0] for c in STRUCTURAL])
def test_both_reject_structurally_invalid(path: str, value: object) -> None:
    data = mutate(load_valid(), path, value)
    assert not schema_accepts(data)
    assert not typed_accepts(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 100) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "name",
    "version",
    "description",
    "base_models[0].adapters[0].r",
    "base_models[0].adapters[0].type",
    "training.decoding.temperature",
    "training.config.bf16",
    "training.config.max_seq_length",
    "soft_prompts[0].init",
    "routing.priority",
    "base_models[0].rope_scaling",
    "perf.supported_batch_sizes",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=json_values, base=st.sampled_from(VALID))
def test_schema_and_model_agree_on_random_mutations(field: str, value: object, base: str) -> None:
    data = load_valid(base)
    try:
        data = mutate(data, field, value)
    except (KeyError, IndexError, TypeError):
        return  # this fixture has no such field
    assert schema_accepts(data) == typed_accepts(data), json.dumps(data)[:300]
