"""install / list / remove, references, and loading an expert checked against its lock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from expertkit.package.archive import PackageError
from expertkit.package.build import PackageRequest, package_expert
from expertkit.package.lock import LockMismatchError
from expertkit.package.signing import keygen
from expertkit.package.store import experts_dir, find_installed, install_package, list_installed, remove_installed
from expertkit.package.verify import sign_package
from expertkit.runtime.experts import LoadOptions, load_expert
from unit.train.helpers import train_tiny, write_tiny_expert

IDS = torch.tensor([[1, 5, 7, 9, 11, 13, 2]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, position_ids=torch.arange(IDS.shape[1])[None]).logits


def test_round_trip_train_package_verify_install_load_same_logits(tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = write_tiny_expert(tmp_path / "expert-rt", [tiny_llama_dir])
    _, job = train_tiny(expert)
    trained = job.trainable.objective.model  # the PeftModel as training left it (one checkpoint: the best)
    trained.eval()
    before = logits(trained)
    built = package_expert(PackageRequest(expert, output=tmp_path / "dist"))
    key, _, _ = keygen(tmp_path / "keys")
    sign_package(built.path, key)
    record, written = install_package(built.path, require_signature=True, trusted_keys_dir=tmp_path / "keys")
    assert written and record.trusted
    loaded = load_expert("expert-tiny")
    assert loaded.files.packaged and loaded.warnings == []
    torch.testing.assert_close(logits(loaded.model), before, rtol=0, atol=1e-5)
    with loaded.model.disable_adapter():
        assert (logits(loaded.model) - before).abs().max() > 1e-3  # the adapter does something


def test_install_layout_record_and_idempotence(built) -> None:
    record, written = install_package(built.path)
    target = experts_dir() / "expert-tiny" / "0.1.0"
    assert written and Path(record.path) == target
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == sorted([*built.files, "expert.lock.json", ".install.json"])
    assert record.signer is None and record.adapter_type == "lora" and record.sha256 == built.sha256
    assert install_package(built.path) == (record, False)
    assert not any(p.name.endswith(".partial") for p in target.parent.iterdir())


def test_several_versions_newest_is_default_and_remove(expert_dir: Path, tmp_path: Path) -> None:
    for version in ("0.1.0", "0.10.0", "0.9.1", "0.10.0-rc.1"):
        manifest = json.loads((expert_dir / "manifest.json").read_text())
        manifest["version"] = version
        (expert_dir / "manifest.json").write_text(json.dumps(manifest))
        install_package(package_expert(PackageRequest(expert_dir, output=tmp_path / version)).path)
    assert [r.version for r in list_installed()] == ["0.10.0", "0.10.0-rc.1", "0.9.1", "0.1.0"]
    assert find_installed("expert-tiny").version == "0.10.0"
    assert find_installed("expert-tiny@0.9.1").version == "0.9.1"
    assert [r.version for r in remove_installed("expert-tiny@0.10.0")] == ["0.10.0"]
    assert find_installed("expert-tiny").version == "0.10.0-rc.1"
    assert len(remove_installed("expert-tiny")) == 3
    assert list_installed() == [] and not (experts_dir() / "expert-tiny").exists()
    with pytest.raises(PackageError, match=r"no installed expert 'expert-tiny'"):
        remove_installed("expert-tiny")


def test_a_different_build_of_an_installed_version_is_refused(built, expert_dir: Path, tmp_path: Path) -> None:
    install_package(built.path)
    (expert_dir / "README.md").write_text("# changed\n")
    other = package_expert(PackageRequest(expert_dir, output=tmp_path / "other"))
    with pytest.raises(PackageError, match="already installed from a different package"):
        install_package(other.path)
    record, written = install_package(other.path, force=True)
    assert written and record.sha256 == other.sha256


def test_require_signature_refuses_unsigned_and_untrusted(built, tmp_path: Path) -> None:
    keygen(tmp_path / "trusted")
    with pytest.raises(PackageError, match="the package is not signed"):
        install_package(built.path, require_signature=True, trusted_keys_dir=tmp_path / "trusted")
    mallory, _, _ = keygen(tmp_path / "mallory")
    sign_package(built.path, mallory)
    with pytest.raises(PackageError, match="which is not a trusted key"):
        install_package(built.path, require_signature=True, trusted_keys_dir=tmp_path / "trusted")
    with pytest.raises(PackageError, match=r"trusted keys directory .*trusted-keys does not exist"):
        install_package(built.path, require_signature=True)
    assert not experts_dir().exists()


def test_references_package_file_and_directories(built, expert_dir: Path) -> None:
    from expertkit.package.references import resolve_expert

    from_file = resolve_expert(str(built.path))
    assert from_file.packaged and (from_file.adapter_dir / "adapter_model.safetensors").is_file()
    assert resolve_expert(str(from_file.root)).lock == from_file.lock
    source = resolve_expert(str(expert_dir))
    assert not source.packaged and source.training_meta() is not None
    with pytest.raises(PackageError, match="no installed expert 'nope'"):
        resolve_expert("nope")
    with pytest.raises(PackageError, match="no such file or directory"):
        resolve_expert("./missing.expert")


def _copy_model(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "base-copy"))


def test_template_drift_is_refused_with_the_differing_token(built, tmp_path: Path, tiny_llama_dir: Path) -> None:
    base = _copy_model(tiny_llama_dir, tmp_path)
    config_path = base / "tokenizer_config.json"
    jinja = base / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(jinja.read_text().replace("<|im_start|>", "<|im_start|> "))
    else:
        config = json.loads(config_path.read_text())
        config["chat_template"] = config["chat_template"].replace("<|im_start|>", "<|im_start|> ")
        config_path.write_text(json.dumps(config))
    with pytest.raises(
        LockMismatchError,
        match=r"chat template drift since training: the conversation probe differs first at token 1: the lock has .*, this tokenizer gives",
    ):
        load_expert(str(built.path), LoadOptions(base=str(base)))
    loaded = load_expert(str(built.path), LoadOptions(base=str(base), allow_template_drift=True))
    assert loaded.warnings and "chat template drift" in loaded.warnings[0]


def test_a_different_base_model_is_refused(built, tmp_path: Path, tiny_qwen3_dir: Path) -> None:
    with pytest.raises(LockMismatchError, match="the base model differs from the one this expert was trained on"):
        load_expert(str(built.path), LoadOptions(base=str(tiny_qwen3_dir)))
