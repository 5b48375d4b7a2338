"""The example experts validate and point at the real shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertkit.manifest import validate_manifest
from expertkit.manifest.checks import referenced_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "experts"
NAMES = ["expert-json", "expert-neo4j", "expert-sql", "expert-typescript"]


def test_all_examples_are_present() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_example_validates(name: str) -> None:
    report, manifest = validate_manifest(EXAMPLES / name)
    assert report.ok, [p.render() for p in report.problems]
    assert manifest is not None and manifest.name == name


@pytest.mark.parametrize("name", ["expert-json", "expert-neo4j", "expert-sql"])
def test_example_trains_on_shared_data(name: str) -> None:
    _, manifest = validate_manifest(EXAMPLES / name)
    assert manifest is not None
    data_refs = [ref for path, ref in referenced_files(manifest) if path.startswith("$.training.dataset")]
    assert data_refs and all("shared/data" in ref for ref in data_refs if not ref.endswith(".py"))


def test_sql_preprocess_builds_create_table_schema() -> None:
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("preprocess", EXAMPLES / "expert-sql" / "preprocess.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = {
        "question": "How many  heads?",
        "query": "SELECT count(*)  FROM head",
        "db_id": "department_management",
    }
    (out,) = list(module.preprocess([record], EXAMPLES / "expert-sql"))
    assert out["schema"].startswith("CREATE TABLE department (\n  Department_ID INTEGER PRIMARY KEY,")
    assert "FOREIGN KEY (head_ID) REFERENCES head(head_ID)" in out["schema"]
    assert "Dialect: sqlite" in out["system"]
    assert (out["question"], out["query"]) == ("How many heads?", "SELECT count(*) FROM head")
    assert json.dumps(out)  # records stay JSON-serialisable


@pytest.mark.parametrize("name", ["expert-json", "expert-neo4j", "expert-sql"])
def test_every_example_hook_passes_conversations_through(name: str) -> None:
    """Sparring and generated data are conversations already; a hook written for the task's own
    records must pass them as they are (the JSON hook once failed a spar phase on a missing 'id')."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"preprocess_{name}", EXAMPLES / name / "preprocess.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    conversation = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": False}],
        "generator": "sparring",
    }
    assert list(module.preprocess([conversation], EXAMPLES / name)) == [conversation]
