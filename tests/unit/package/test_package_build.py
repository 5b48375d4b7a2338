"""``package``: contents, determinism, sha256sum format, and what it refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from expertkit.errors import ManifestError
from expertkit.naming import normalise_model_name
from expertkit.package.archive import PackageError
from expertkit.package.build import PackageRequest, package_expert
from expertkit.package.lock import parse_lock


def test_package_contents_name_and_lock(built, expert_dir: Path, tiny_llama_dir: Path) -> None:
    model = normalise_model_name(str(tiny_llama_dir))
    assert built.path.name == f"expert-tiny-{model}.v0.1.0.expert"
    with tarfile.open(built.path, "r:gz") as tar:
        infos = tar.getmembers()
        names = [i.name for i in infos]
        manifest = json.loads(tar.extractfile("manifest.json").read())
        raw_lock = tar.extractfile("expert.lock.json").read()
        lock = json.loads(raw_lock)
    assert built.lock.to_bytes() == raw_lock == parse_lock(raw_lock, "here").to_bytes()  # typed, same bytes
    assert (
        names
        == sorted(names)
        == [
            "LICENSE",
            "README.md",
            "expert.lock.json",
            "grammar.gbnf",
            "manifest.json",
            f"weights/{model}/adapter/adapter_config.json",
            f"weights/{model}/adapter/adapter_model.safetensors",
        ]
    )
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o644)}
    assert manifest["readme"] == "README.md" and manifest["license_file"] == "LICENSE"
    assert manifest["base_models"][0]["name"] == str(tiny_llama_dir)
    meta = json.loads((expert_dir / "weights" / model / "training_meta.json").read_text())
    assert lock["base_model"]["weights_sha256"] == meta["base_model"]["weights_sha256"]
    assert lock["chat_template"]["sha256"] == meta["chat_template_sha256"]
    assert lock["probe"] == meta["template_probe"] and lock["probe"]["conversation"]["ids"]
    assert lock["training"]["data_lineage_hash"] == meta["data"]["lineage_hash"]
    assert lock["training"]["libraries"]["peft"] and lock["special_tokens"]["eos_token"]
    assert set(lock["files"]) == set(names) - {"expert.lock.json"}
    assert lock["adapter"]["type"] == "lora" and lock["adapter"]["peft_type"] == "LORA"


def test_packaging_twice_is_byte_identical(built, expert_dir: Path, tmp_path: Path) -> None:
    again = package_expert(PackageRequest(expert_dir, output=tmp_path / "again"))
    assert again.path.read_bytes() == built.path.read_bytes()
    assert again.sha256 == built.sha256


def test_checksum_file_passes_real_sha256sum(built) -> None:
    line = built.checksum_path.read_text()
    assert line == f"{built.sha256}  {built.path.name}\n"
    ok = subprocess.run(["sha256sum", "-c", built.checksum_path.name], cwd=built.path.parent, capture_output=True)
    assert ok.returncode == 0 and b": OK" in ok.stdout
    with built.path.open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    bad = subprocess.run(["sha256sum", "-c", built.checksum_path.name], cwd=built.path.parent, capture_output=True)
    assert bad.returncode == 1 and b"FAILED" in bad.stdout


def _manifest(expert: Path) -> dict:
    return json.loads((expert / "manifest.json").read_text())


def _write_manifest(expert: Path, manifest: dict) -> None:
    (expert / "manifest.json").write_text(json.dumps(manifest))


def test_refuses_a_manifest_that_fails_validate(expert_dir: Path, tmp_path: Path) -> None:
    manifest = _manifest(expert_dir)
    manifest["version"] = "1.0"
    _write_manifest(expert_dir, manifest)
    with pytest.raises(ManifestError, match=r"\$\.version"):
        package_expert(PackageRequest(expert_dir, output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 8, "alpha": 16}, "rank r=4, the manifest says r=8"),
        ({"type": "dora"}, "adapter type is 'lora', the manifest says 'dora'"),
        ({"target_modules": ["q_proj", "k_proj"]}, r"target modules \['q_proj', 'v_proj'\]"),
    ],
)
def test_refuses_weights_unlike_the_manifest(expert_dir: Path, tmp_path: Path, change: dict, message: str) -> None:
    manifest = _manifest(expert_dir)
    manifest["base_models"][0]["adapters"][0].update(change)
    _write_manifest(expert_dir, manifest)
    with pytest.raises(PackageError, match=message):
        package_expert(PackageRequest(expert_dir, output=tmp_path / "out"))


@pytest.mark.parametrize("name", ["adapter_model.bin", "optimizer.pt", "extra.pkl"])
def test_refuses_pickles(expert_dir: Path, tmp_path: Path, name: str) -> None:
    adapter = next((expert_dir / "weights").iterdir()) / "adapter"
    (adapter / name).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(PackageError, match=rf"refusing to package pickle files .*{name}"):
        package_expert(PackageRequest(expert_dir, output=tmp_path / "out"))


def test_refuses_a_fake_safetensors_file(expert_dir: Path, tmp_path: Path) -> None:
    adapter = next((expert_dir / "weights").iterdir()) / "adapter"
    (adapter / "adapter_model.safetensors").write_bytes(b"\x80\x04K\x01." * 10)
    with pytest.raises(PackageError, match="is not a valid safetensors file"):
        package_expert(PackageRequest(expert_dir, output=tmp_path / "out"))


def test_model_choice_lists_the_available_ones(expert_dir: Path, tmp_path: Path) -> None:
    weights = expert_dir / "weights"
    only = next(weights.iterdir())
    shutil.copytree(only, weights / "other-model")
    with pytest.raises(PackageError, match=r"pick one with --model: \['other-model', "):
        package_expert(PackageRequest(expert_dir, output=tmp_path / "out"))
    with pytest.raises(PackageError, match=r"weights/other-model matches no base model"):
        package_expert(PackageRequest(expert_dir, model="other-model", output=tmp_path / "out"))
    chosen = package_expert(PackageRequest(expert_dir, model=only.name, output=tmp_path / "out"))
    assert chosen.path.is_file()


def test_refuses_weights_trained_on_another_base(expert_dir: Path, tmp_path: Path) -> None:
    meta_path = next((expert_dir / "weights").iterdir()) / "training_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["base_model"]["weights_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="the adapter was trained on base weights 000000000000"):
        package_expert(PackageRequest(expert_dir, output=tmp_path / "out"))
