"""Hostile packages and a tampered store: paths that leave the package, memory bombs in headers,
base models brought by the package, unchecked ``.expert`` files, swapped adapters and a forged
install record. Each is refused, with the reason named."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from expertkit.errors import ModelLoadError, ModelNotFoundError
from expertkit.manifest.validate import validate_manifest
from expertkit.models.resolve import resolve_model
from expertkit.package.archive import Limits, PackageError, scan_archive, write_archive
from expertkit.package.checksum import write_checksum
from expertkit.package.lock import LOCK_FILE
from expertkit.package.references import resolve_expert
from expertkit.package.signing import keygen, load_public_key
from expertkit.package.store import install_package
from expertkit.package.verify import sign_package
from expertkit.runtime.grammar import GrammarError, grammar_for

ADAPTER_CONFIG = "weights/{}/adapter/adapter_config.json"


def members_of(package: Path) -> dict[str, bytes]:
    with tarfile.open(package, "r:gz") as tar:
        return {i.name: tar.extractfile(i).read() for i in tar.getmembers()}  # type: ignore[union-attr]


def repack(package: Path, change) -> Path:
    """Rewrite ``package`` with ``change(members)`` applied and a lock and checksum that agree with
    it: what an attacker who builds their own package can always do."""
    files = members_of(package)
    change(files)
    lock = json.loads(files[LOCK_FILE])
    lock["files"] = {n: hashlib.sha256(b).hexdigest() for n, b in files.items() if n != LOCK_FILE}
    files[LOCK_FILE] = json.dumps(lock).encode()
    write_archive(package, files)
    write_checksum(package)
    return package


def with_manifest(**decoding) -> callable:
    def change(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["training"].setdefault("decoding", {}).update(decoding)
        files["manifest.json"] = json.dumps(manifest).encode()

    return change


@pytest.mark.parametrize("grammar_file", ["/etc/passwd", "../../../../etc/passwd", "/dev/zero"])
def test_a_packaged_grammar_file_outside_the_package_is_refused_everywhere(built, grammar_file: str) -> None:
    package = repack(built.path, with_manifest(grammar_file=grammar_file))
    with pytest.raises(PackageError, match=r"grammar_file.*(absolute|'\.\.')"):
        install_package(package)
    with pytest.raises(PackageError, match="grammar_file"):
        resolve_expert(str(package))  # chat, serve and eval load a .expert through this same path


def test_a_grammar_read_at_run_time_stays_inside_and_is_bounded(tmp_path: Path) -> None:
    from expertkit.manifest.sections import DecodingConfig
    from expertkit.safepath import UnsafePathError, read_contained

    root = tmp_path / "expert"
    root.mkdir()
    (root / "escape.gbnf").symlink_to("/etc/passwd")
    with pytest.raises(GrammarError, match="resolves outside"):
        grammar_for(DecodingConfig(grammar_file="escape.gbnf", use_grammar=True), root, untrusted=True)
    (root / "zero.gbnf").symlink_to("/dev/zero")
    with pytest.raises(UnsafePathError):
        read_contained(root, "zero.gbnf", "grammar_file")
    (root / "big.gbnf").write_bytes(b"x" * 4096)
    with pytest.raises(UnsafePathError, match="limit is 1,024"):
        read_contained(root, "big.gbnf", "grammar_file", max_bytes=1024)


def test_a_packaged_manifest_cannot_name_a_base_model_inside_itself(built, tmp_path: Path) -> None:
    def change(files: dict[str, bytes]) -> None:
        manifest = json.loads(files["manifest.json"])
        manifest["base_models"][0]["name"] = "./model"
        files["manifest.json"] = json.dumps(manifest).encode()

    package = repack(built.path, change)
    with pytest.raises(PackageError, match=r"base_models\[0\]\.name"):
        install_package(package)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    for name, data in members_of(package).items():
        (unpacked / name).parent.mkdir(parents=True, exist_ok=True)
        (unpacked / name).write_bytes(data)
    report, _ = validate_manifest(unpacked, packaged=True)
    assert any(p.path == "$.base_models[0].name" for p in report.problems)


def test_a_model_that_asks_for_remote_code_is_refused(tmp_path: Path, tiny_llama_dir: Path) -> None:
    import shutil

    from expertkit.models.resolve import refuse_remote_code

    evil = Path(shutil.copytree(tiny_llama_dir, tmp_path / "evil-model"))
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "modeling_evil.py").write_text("raise SystemExit('ran the package code')\n")
    with pytest.raises(ModelLoadError, match="auto_map"):
        refuse_remote_code(evil)
    from expertkit.models.load import load_model

    with pytest.raises(ModelLoadError, match="never runs code"):
        load_model(resolve_model(str(evil)))


def test_a_base_model_inside_the_store_is_refused(built) -> None:
    record, _ = install_package(built.path)
    with pytest.raises(ModelNotFoundError, match="inside an installed or unpacked expert"):
        resolve_model(str(Path(record.path) / "weights"))


def test_a_pax_header_bomb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    info = tarfile.TarInfo("manifest.json")
    info.pax_headers = {"comment": "x" * (8 << 20)}
    info.size = 2
    with gzip.GzipFile(fileobj=buffer, mode="wb") as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        tar.format = tarfile.PAX_FORMAT
        tar.addfile(info, io.BytesIO(b"{}"))
    package = tmp_path / "bomb.expert"
    package.write_bytes(buffer.getvalue())
    assert package.stat().st_size < 100_000
    with pytest.raises(PackageError, match="extended header of 8,388,"):
        scan_archive(package)


def test_small_members_held_in_memory_are_bounded_together(tmp_path: Path) -> None:
    files = {f"w{i}/adapter/adapter_config.json": b"{" + b" " * (600 << 10) + b"}" for i in range(20)}
    package = tmp_path / "many-configs.expert"
    write_archive(package, files)
    with pytest.raises(PackageError, match="memory bomb"):
        scan_archive(package, lambda name: name.endswith("adapter_config.json"), Limits(max_kept_bytes=4 << 20))


def test_an_expert_file_given_directly_gets_installs_consistency_checks(built) -> None:
    model = next(n.split("/")[1] for n in members_of(built.path) if n.startswith("weights/"))

    def change(files: dict[str, bytes]) -> None:
        name = ADAPTER_CONFIG.format(model)
        config = json.loads(files[name])
        config["r"] = 1_000_000
        files[name] = json.dumps(config).encode()

    package = repack(built.path, change)
    with pytest.raises(PackageError, match="1000000"):
        resolve_expert(str(package))


def test_a_swapped_adapter_in_the_store_is_refused_at_load(built) -> None:
    record, _ = install_package(built.path)
    adapter = next(Path(record.path).glob("weights/*/adapter/adapter_model.safetensors"))
    adapter.write_bytes(adapter.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PackageError, match=r"adapter_model\.safetensors was modified"):
        resolve_expert(f"{record.name}@{record.version}")


def test_the_install_record_is_never_a_source_of_trust(built, tmp_path: Path) -> None:
    record, _ = install_package(built.path)  # unsigned
    path = Path(record.path) / ".install.json"
    forged = {**json.loads(path.read_text()), "trusted": True, "signer": "someone"}
    path.write_text(json.dumps(forged))
    _, pub, _ = keygen(tmp_path / "keys")
    with pytest.raises(PackageError, match="signature is required"):
        resolve_expert(f"{record.name}@{record.version}", [load_public_key(pub)], require_signature=True)


def test_the_signature_is_rechecked_against_the_keys_trusted_now(built, tmp_path: Path) -> None:
    key, pub, key_id = keygen(tmp_path / "keys")
    sign_package(built.path, key)
    record, _ = install_package(built.path, require_signature=True, trusted_keys_dir=tmp_path / "keys")
    reference = f"{record.name}@{record.version}"
    assert resolve_expert(reference, [load_public_key(pub)], require_signature=True).signer == key_id
    assert resolve_expert(reference).signer is None  # nothing checked, nothing claimed
    _, other, _ = keygen(tmp_path / "other-keys")
    with pytest.raises(PackageError, match="not among the keys trusted now"):
        resolve_expert(reference, [load_public_key(other)], require_signature=True)


def test_data_outside_the_expert_still_packages_and_installs(expert_dir: Path, tmp_path: Path) -> None:
    """The user's own manifest may name data anywhere (the examples use ../../shared/data): what a
    package ships is checked, data stays behind and is never read from the package."""
    from expertkit.package.build import PackageRequest, package_expert

    shared = tmp_path / "shared"
    shared.mkdir()
    (expert_dir / "data.jsonl").rename(shared / "data.jsonl")
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["training"]["dataset"]["path"] = "../shared/data.jsonl"
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    built = package_expert(PackageRequest(expert_dir, output=tmp_path / "dist"))
    record, _ = install_package(built.path)
    assert resolve_expert(f"{record.name}@{record.version}").packaged
