"""The package lifecycle through ``expert-cli``: exit codes, files written, messages."""

from __future__ import annotations

import json
import stat
import tarfile
from pathlib import Path

from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.package.archive import write_archive

_register()


def invoke(*args: str, cwd: Path | None = None):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_package_sign_verify_install_list_remove(expert_dir: Path, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    result = invoke("package", "--manifest", str(expert_dir / "manifest.json"), "--output", str(dist), "--json")
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    package = Path(built["package"])
    assert package.is_file() and Path(built["checksum"]).read_text().startswith(built["sha256"])
    assert "expert.lock.json" not in built["files"] and "manifest.json" in built["files"]

    keys = tmp_path / "keys"
    result = invoke("keygen", "--out", str(keys))
    assert result.exit_code == 0 and "key id      ed25519:" in result.stdout
    assert stat.S_IMODE((keys / "expert.key").stat().st_mode) == 0o600
    assert invoke("keygen", "--out", str(keys)).exit_code == 1

    result = invoke("sign", str(package), "--key", str(keys / "expert.key"))
    assert result.exit_code == 0 and Path(str(package) + ".sig").is_file()

    result = invoke("verify", str(package), "--key", str(keys / "expert.pub"))
    assert result.exit_code == 0, result.output
    assert "7 files intact, signed by ed25519:" in result.stdout
    report = json.loads(invoke("verify", str(package), "--trusted-keys", str(keys), "--json").stdout)
    assert report["ok"] and report["trusted"] and report["expert"] == {"name": "expert-tiny", "version": "0.1.0"}

    result = invoke("validate", str(package))
    assert result.exit_code == 0, result.output
    assert "valid (0 error(s)" in result.stdout

    result = invoke("install", str(package), "--require-signature", "--trusted-keys", str(keys))
    assert result.exit_code == 0, result.output
    assert "installed expert-tiny@0.1.0, signed by ed25519:" in result.stdout and "(trusted)" in result.stdout
    assert "already installed" in invoke("install", str(package)).stdout

    listing = json.loads(invoke("list", "--json").stdout)
    assert [(e["name"], e["version"], e["adapter_type"], e["trusted"]) for e in listing] == [
        ("expert-tiny", "0.1.0", "lora", True)
    ]
    assert listing[0]["signer"].startswith("ed25519:") and listing[0]["installed_at"]
    assert "expert-tiny" in invoke("list").stdout

    assert invoke("remove", "expert-tiny@0.1.0").stdout.strip() == "removed expert-tiny@0.1.0"
    assert json.loads(invoke("list", "--json").stdout) == []
    result = invoke("remove", "expert-tiny")
    assert result.exit_code == 1 and "no installed expert 'expert-tiny'" in result.stderr


def test_verify_names_the_tampered_member_and_exits_1(built, tmp_path: Path) -> None:
    with tarfile.open(built.path, "r:gz") as tar:
        files = {i.name: tar.extractfile(i).read() for i in tar.getmembers()}
    files["grammar.gbnf"] = files["grammar.gbnf"].replace(b"SELECT", b"DELETE")
    write_archive(built.path, files)
    result = invoke("verify", str(built.path))
    assert result.exit_code == 1
    assert "member grammar.gbnf was modified" in result.stdout and "archive checksum mismatch" in result.stdout
    assert "failed verification" in result.stderr
    result = invoke("validate", str(built.path), "--json")
    assert result.exit_code == 1
    problems = [e["message"] for e in json.loads(result.stdout)["errors"]]
    assert any("member grammar.gbnf was modified" in p for p in problems)
    result = invoke("install", str(built.path))
    assert result.exit_code == 1 and "failed verification" in result.stderr and "Traceback" not in result.output


def test_package_errors_are_clean(expert_dir: Path, tmp_path: Path) -> None:
    (next((expert_dir / "weights").iterdir()) / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04.")
    result = invoke("package", "--manifest", str(expert_dir), "--output", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "refusing to package pickle files" in result.stderr and "Traceback" not in result.output
    result = invoke("package", "--manifest", str(expert_dir), "--weights", str(tmp_path / "none"))
    assert result.exit_code == 1 and "no trained weights in" in result.stderr
    result = invoke("sign", str(tmp_path / "nothing.expert"), "--key", str(tmp_path / "k"))
    assert result.exit_code == 1 and "no such package file" in result.stderr


def test_installing_an_expert_that_names_the_onnx_decoder_builds_its_graph(expert_dir: Path, tmp_path: Path) -> None:
    """The first answer after an install opens the graph the install built (no build, no torch
    needed); ``--no-prepare`` leaves it to the first answer."""
    from expertkit.home import expertkit_home

    manifest = json.loads((expert_dir / "manifest.json").read_text())
    (expert_dir / "manifest.json").write_text(
        json.dumps(manifest | {"runtime": {"decoder": "onnx", "quantize": "int8"}})
    )
    dist = tmp_path / "dist"
    assert invoke("package", "--manifest", str(expert_dir), "--output", str(dist), "--no-measure").exit_code == 0
    package = str(next(dist.glob("*.expert")))
    skipped = invoke("install", package, "--no-prepare")
    assert skipped.exit_code == 0 and "prepared" not in skipped.stdout
    assert not (expertkit_home() / "onnx").exists()
    result = invoke("install", package)  # already installed: the graph is still built
    assert result.exit_code == 0, result.output
    assert "already installed expert-tiny@0.1.0" in result.stdout
    assert "prepared: ONNX Runtime decoder (int8) built in" in result.stdout
    assert [p.name for p in (expertkit_home() / "onnx").iterdir() if (p / "model.onnx").is_file()]
    assert "prepared: ONNX Runtime decoder (int8) already built" in invoke("install", package).stdout
    answer = invoke("chat", "-e", "expert-tiny", "-p", "hi", "--max-tokens", "2", "--json")
    assert answer.exit_code == 0, answer.output
    assert "building the ONNX" not in answer.stderr
    assert json.loads(answer.stdout)["decoding"]["decoder"] == {"value": "onnx", "source": "manifest"}


def test_an_install_whose_graph_cannot_be_built_still_installs_and_says_why(
    expert_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from expertkit.errors import ModelNotFoundError
    from expertkit.workflows import install

    manifest = json.loads((expert_dir / "manifest.json").read_text())
    (expert_dir / "manifest.json").write_text(json.dumps(manifest | {"runtime": {"decoder": "onnx"}}))
    dist = tmp_path / "dist"
    assert invoke("package", "--manifest", str(expert_dir), "--output", str(dist), "--no-measure").exit_code == 0

    def missing(*args: object, **kwargs: object) -> None:
        raise ModelNotFoundError("base model 'tiny' is not on this machine", "expert-cli models pull tiny")

    monkeypatch.setattr(install.Engine, "for_experts", missing)
    result = invoke("install", str(next(dist.glob("*.expert"))))
    assert result.exit_code == 0 and "installed expert-tiny@0.1.0" in result.stdout
    assert "the ONNX decoder was not prepared (base model 'tiny' is not on this machine)" in result.stderr
    assert json.loads(invoke("list", "--json").stdout)[0]["name"] == "expert-tiny"
