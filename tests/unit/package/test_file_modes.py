"""Shared outputs (the package, its checksum and signature, the public key) get the mode any new
file gets under the umask; only the private key is 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from expertkit.package.checksum import checksum_path
from expertkit.package.signing import keygen, signature_path
from expertkit.package.verify import sign_package


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_shareable_outputs_follow_the_umask(umask_022, built, tmp_path: Path) -> None:
    key, pub, _ = keygen(tmp_path / "keys")
    sign_package(built.path, key)
    assert mode(key) == 0o600
    for shared in (built.path, checksum_path(built.path), signature_path(built.path), pub):
        assert mode(shared) == 0o644, shared


def test_a_stricter_umask_is_respected(tmp_path: Path) -> None:
    from expertkit.fsutil import write_text_atomic

    previous = os.umask(0o077)
    try:
        write_text_atomic(tmp_path / "x.txt", "x")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "x.txt") == 0o600
