"""``sign`` / ``verify``: every kind of tampering is caught and named."""

from __future__ import annotations

import json
import stat
import tarfile
from pathlib import Path

import pytest

from expertkit.package.archive import PackageError, write_archive
from expertkit.package.signing import keygen, load_public_key, signature_path
from expertkit.package.verify import inspect_package, sign_package, verify_package


def members_of(package: Path) -> dict[str, bytes]:
    with tarfile.open(package, "r:gz") as tar:
        return {i.name: tar.extractfile(i).read() for i in tar.getmembers()}


@pytest.fixture
def signed(built, tmp_path: Path):
    key, pub, key_id = keygen(tmp_path / "keys")
    sign_package(built.path, key)
    return built, load_public_key(pub), key_id


def test_keygen_writes_a_private_0600_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key, pub, key_id = keygen(tmp_path / "k")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----") and key_id.startswith("ed25519:")
    with pytest.raises(PackageError, match="refusing to overwrite"):
        keygen(tmp_path / "k")


def test_signed_package_verifies_and_names_the_signer(signed) -> None:
    built, public, key_id = signed
    before = built.path.read_bytes()
    report = verify_package(built.path, [public])
    assert report.ok and report.trusted and report.signer == key_id == public.key_id
    assert built.path.read_bytes() == before  # signing never changes the package


@pytest.mark.parametrize(
    "member",
    [
        "manifest.json",
        "README.md",
        "LICENSE",
        "grammar.gbnf",
        "weights/MODEL/adapter/adapter_config.json",
        "weights/MODEL/adapter/adapter_model.safetensors",
        "expert.lock.json",
    ],
)
def test_one_flipped_byte_in_any_member_is_named(signed, member: str) -> None:
    built, public, _ = signed
    files = members_of(built.path)
    member = next(name for name in files if name.endswith(member.split("MODEL/")[-1]))
    data = bytearray(files[member])
    data[len(data) // 2] ^= 0x01
    files[member] = bytes(data)
    write_archive(built.path, files)
    report = inspect_package(built.path, [public])
    assert not report.ok
    assert any(p.startswith("archive checksum mismatch") for p in report.problems)
    assert f"member {member} was modified: sha256" in "\n".join(report.problems)
    with pytest.raises(PackageError, match="failed verification"):
        verify_package(built.path, [public])


def test_flipped_byte_in_the_compressed_archive(signed) -> None:
    built, public, _ = signed
    raw = bytearray(built.path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    built.path.write_bytes(bytes(raw))
    with pytest.raises(PackageError, match=r"is corrupt|checksum mismatch"):
        verify_package(built.path, [public])


def test_added_and_removed_members_are_named(signed) -> None:
    built, public, _ = signed
    files = members_of(built.path)
    files["extra.py"] = b"import os\n"
    del files["README.md"]
    write_archive(built.path, files)
    problems = "\n".join(inspect_package(built.path, [public]).problems)
    assert "member extra.py was added (not in expert.lock.json)" in problems
    assert "member README.md was removed (listed in expert.lock.json)" in problems
    assert "member extra.py was added (not in " + signature_path(built.path).name + ")" in problems


def test_rewritten_lock_and_checksum_are_still_caught_by_the_signature(signed) -> None:
    """An attacker who swaps the adapter and fixes up the lock and .sha256 still fails."""
    from expertkit.package.checksum import write_checksum
    from expertkit.package.lock import LOCK_FILE

    built, public, _ = signed
    files = members_of(built.path)
    readme = "README.md"
    files[readme] = b"# friendly\n"
    lock = json.loads(files[LOCK_FILE])
    import hashlib

    lock["files"][readme] = hashlib.sha256(files[readme]).hexdigest()
    files[LOCK_FILE] = json.dumps(lock).encode()
    write_archive(built.path, files)
    write_checksum(built.path)
    problems = "\n".join(inspect_package(built.path, [public]).problems)
    assert f"member {readme} was modified" in problems and signature_path(built.path).name in problems
    assert "checksum mismatch" not in problems and "expert.lock.json says" not in problems


def test_replaced_signature_from_another_key(signed, tmp_path: Path) -> None:
    built, public, key_id = signed
    other_key, _, other_id = keygen(tmp_path / "mallory")
    sign_package(built.path, other_key)
    problems = "\n".join(inspect_package(built.path, [public]).problems)
    assert f"signed by {other_id}, which is not a trusted key (trusted: {key_id}" in problems


def test_altered_signature_bytes(signed) -> None:
    built, public, _ = signed
    sig = signature_path(built.path)
    document = json.loads(sig.read_text())
    document["signature"] = (
        document["signature"][:10] + ("A" if document["signature"][10] != "A" else "B") + document["signature"][11:]
    )
    sig.write_text(json.dumps(document))
    problems = "\n".join(inspect_package(built.path, [public]).problems)
    assert "the signature does not verify (the signature file was altered)" in problems


def test_signature_of_another_package(signed, tmp_path: Path) -> None:
    built, public, _ = signed
    files = members_of(built.path)
    files["README.md"] = b"# another build\n"
    other = tmp_path / "other.expert"
    write_archive(other, files)
    signature_path(other).write_bytes(signature_path(built.path).read_bytes())
    problems = "\n".join(inspect_package(other, [public]).problems)
    assert "was made for another archive" in problems


def test_wrong_key(signed, tmp_path: Path) -> None:
    built, _, key_id = signed
    _, wrong_pub, wrong_id = keygen(tmp_path / "wrong")
    with pytest.raises(PackageError, match=f"signed by {key_id}, which is not a trusted key \\(trusted: {wrong_id}"):
        verify_package(built.path, [load_public_key(wrong_pub)])


def test_missing_signature_when_a_key_is_given(built, tmp_path: Path) -> None:
    _, pub, _ = keygen(tmp_path / "k")
    with pytest.raises(PackageError, match=r"the package is not signed \(no .*\.sig\)"):
        verify_package(built.path, [load_public_key(pub)])
    report = verify_package(built.path)  # integrity only: fine without a signature
    assert report.ok and report.signer is None
