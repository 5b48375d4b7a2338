"""Hostile archives are refused before anything is written, by scan, verify and install alike."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.package.archive import PackageError, scan_archive
from expertkit.package.store import experts_dir

_register()


def hostile(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with gzip.open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def declared_huge(path: Path, size: int) -> Path:
    """A member header claiming ``size`` bytes, followed by none: a bomb is judged by its header."""
    info = tarfile.TarInfo("weights/huge.safetensors")
    info.size = size
    with gzip.open(path, "wb") as raw:
        raw.write(info.tobuf(format=tarfile.PAX_FORMAT))
    return path


def many_members(path: Path, count: int) -> Path:
    with (
        gzip.open(path, "wb", compresslevel=1) as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        empty = io.BytesIO(b"")
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"f/{i}"), empty)
    return path


def install(package: Path):
    return CliRunner().invoke(app, ["install", str(package)], catch_exceptions=False)


def assert_refused(package: Path, message: str, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=message):
        scan_archive(package)
    result = install(package)
    assert result.exit_code == 1, result.output
    assert "error:" in result.stderr and "Traceback" not in result.output
    assert not experts_dir().exists()  # nothing written, not even a staging directory
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_path_traversal(tmp_path: Path) -> None:
    package = hostile(tmp_path / "a.expert", [regular("manifest.json"), regular("../../evil.txt")])
    assert_refused(package, r"'../../evil.txt' has a '..' component \(path traversal\)", tmp_path)


def test_absolute_path(tmp_path: Path) -> None:
    package = hostile(tmp_path / "a.expert", [regular(str(tmp_path / "evil.txt"))])
    assert_refused(package, "has an absolute path", tmp_path)


def test_symlink_to_etc(tmp_path: Path) -> None:
    package = hostile(tmp_path / "a.expert", [link("etc", "/etc", tarfile.SYMTYPE), regular("etc/evil.txt")])
    assert_refused(package, r"'etc' is a symbolic link \(to '/etc'\)", tmp_path)


def test_hard_link(tmp_path: Path) -> None:
    package = hostile(tmp_path / "a.expert", [link("passwd", "/etc/passwd", tarfile.LNKTYPE)])
    assert_refused(package, r"'passwd' is a hard link \(to '/etc/passwd'\)", tmp_path)


def test_device_file(tmp_path: Path) -> None:
    info = tarfile.TarInfo("null")
    info.type = tarfile.CHRTYPE
    assert_refused(hostile(tmp_path / "a.expert", [(info, None)]), "'null' is a device or FIFO", tmp_path)


def test_ten_gigabyte_member_by_its_header(tmp_path: Path) -> None:
    package = declared_huge(tmp_path / "a.expert", 10 * 2**30)
    assert package.stat().st_size < 1024
    assert_refused(package, r"declares 10,737,418,240 bytes .* refusing|declares 10,737,418,240 bytes", tmp_path)


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to build a sparse member")
def test_ten_gigabyte_sparse_member(tmp_path: Path) -> None:
    sparse = tmp_path / "src" / "zeros.safetensors"
    sparse.parent.mkdir()
    with sparse.open("wb") as handle:
        handle.truncate(10 * 2**30)  # a hole: no disk used
    package = tmp_path / "a.expert"
    subprocess.run(["tar", "--sparse", "-czf", str(package), "-C", str(sparse.parent), sparse.name], check=True)
    sparse.unlink()
    assert package.stat().st_size < 1 << 20
    assert_refused(package, "is a sparse file|declares 10,737,418,240 bytes", tmp_path)


def test_one_hundred_thousand_tiny_members(tmp_path: Path) -> None:
    package = many_members(tmp_path / "a.expert", 100_000)
    assert_refused(package, "archive has more than 1024 members", tmp_path)


def test_duplicate_member_names(tmp_path: Path) -> None:
    package = hostile(tmp_path / "a.expert", [regular("manifest.json"), regular("manifest.json", b"{}")])
    assert_refused(package, "'manifest.json' appears twice", tmp_path)


def test_not_an_archive(tmp_path: Path) -> None:
    package = tmp_path / "a.expert"
    package.write_bytes(b"definitely not gzip")
    assert_refused(package, "not a readable .expert archive|is corrupt", tmp_path)
