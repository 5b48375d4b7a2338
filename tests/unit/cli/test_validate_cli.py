"""``expert-cli validate``: exit codes, JSON report, and no traceback for any input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from unit.manifest.helpers import VALID_DIR, load_valid, mutate, write_manifest

_register()
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_valid_manifest_exits_0() -> None:
    result = invoke("validate", "--manifest", str(VALID_DIR / "v2_full.json"), "--no-model-check")
    assert result.exit_code == 0, result.output
    assert "valid (0 error(s)" in result.output


def test_invalid_manifest_exits_1_with_paths(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, mutate(load_valid(), "training.decoding.top_k", -5))
    result = invoke("validate", "--expert", str(tmp_path))
    assert result.exit_code == 1
    assert "$.training.decoding.top_k: value out of range" in result.output
    assert str(path) in result.output


def test_conflicting_options_exit_2(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path), "--manifest", str(tmp_path / "m.json"))
    assert result.exit_code == 2
    assert "give one of PATH, --expert or --manifest" in result.output


def test_json_report(tmp_path: Path) -> None:
    write_manifest(tmp_path, mutate(load_valid(), "base_models[0].adapters[0].alpha", 12))
    result = invoke("validate", str(tmp_path), "--json")
    report = json.loads(result.output)
    assert result.exit_code == 0
    assert report["valid"] is True and report["errors"] == []
    assert report["warnings"][0]["path"] == "$.base_models[0].adapters[0].alpha"
    assert set(report["warnings"][0]) == {"path", "message", "expected", "found", "severity"}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\x00\xff\xfe garbage",
        b"[]",
        b"null",
        b'"text"',
        b'{"schema_version": 2}',
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=["empty", "truncated", "binary", "array", "null", "string", "version-number", "deep-nesting"],
)
def test_malformed_files_give_a_clean_report(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(content)
    result = invoke("validate", "--manifest", str(path), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["valid"] is False and report["errors"][0]["path"].startswith("$")


def test_directory_and_missing_file_give_a_clean_report(tmp_path: Path) -> None:
    for target in (tmp_path, tmp_path / "absent.json"):  # a directory without manifest.json, a missing file
        result = invoke("validate", "--manifest", str(target), "--json")
        assert result.exit_code == 2, result.output  # as the README says: 2 for usage
        assert "error: no manifest at" in result.stderr and "Traceback" not in result.output
    (tmp_path / "broken.json").write_text("{")
    result = invoke("validate", "--manifest", str(tmp_path / "broken.json"), "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["errors"][0]["path"] == "$"


json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=json_documents
    | st.fixed_dictionaries(
        {"schema_version": st.sampled_from(["1.0", "2.0"])},
        optional={
            "name": json_documents,
            "base_models": json_documents,
            "base_model": json_documents,
            "adapters": json_documents,
            "training": json_documents,
            "version": json_documents,
        },
    )
)
def test_random_json_never_crashes_validate(tmp_path: Path, document: object) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    result = runner.invoke(app, ["validate", "--manifest", str(path), "--json", "--no-model-check"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 1)
    assert "Traceback" not in result.output
    assert json.loads(result.output)["valid"] is (result.exit_code == 0)


def test_help_and_validate_do_not_import_torch(tmp_path: Path) -> None:
    write_manifest(tmp_path, load_valid("v2_minimal.json"))
    code = (
        "import sys\n"
        "from expertkit.cli import main\n"
        f"sys.argv = ['expert-cli', 'validate', {str(tmp_path)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH 0"
    helped = subprocess.run([sys.executable, "-m", "expertkit", "--help"], capture_output=True, text=True, check=True)
    assert "validate" in helped.stdout and "models" in helped.stdout
