"""Install a package, then prepare what its first answer needs.

An expert whose manifest runs it through the ONNX Runtime decoder (``runtime.decoder: onnx``)
answers in about 1.5 s from a built graph without importing torch, but building that graph takes
seconds to a minute, once per expert and quantisation. Installing builds it, so the first ``chat``
after an install is as fast as every later one. The store (the package stage) may not load the
runtime, so the two steps are joined here, above both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expertkit.errors import ExpertkitError
from expertkit.manifest.load import load_manifest
from expertkit.package.store import InstalledExpert, install_package
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions

DISPLAY = {"onnx": "ONNX", "native": "native"}


@dataclass(frozen=True)
class InstallResult:
    record: InstalledExpert
    written: bool  # False: this very package was already installed
    prepared: str | None = None  # what was built ahead ("ONNX Runtime decoder (int8) built in 12.1 s")
    note: str | None = None  # why nothing was prepared although the manifest asked for it


def install_expert(
    package: Path,
    require_signature: bool = False,
    trusted_keys_dir: Path | None = None,
    force: bool = False,
    prepare: bool = True,
) -> InstallResult:
    """:func:`~expertkit.package.store.install_package`, then (``prepare``) the expert's ONNX graph
    built when its manifest names the ONNX decoder, or the native decoder's library compiled when it
    names that one. What cannot be prepared now (the base model not on this machine, a builder or
    compiler failure) leaves the install in place and says why.

    Raises:
        PackageError: as :func:`~expertkit.package.store.install_package`.
    """
    record, written = install_package(package, require_signature, trusted_keys_dir, force)
    runtime = load_manifest(Path(record.path)).manifest.runtime if prepare else None
    if runtime is None or runtime.decoder not in ("onnx", "native"):
        return InstallResult(record, written)
    try:
        engine = Engine.for_experts([f"{record.name}@{record.version}"], LoadOptions())
        prepared = engine.prepare(record.name)
    except (ExpertkitError, OSError) as exc:  # the install stands; the first answer builds it instead
        reason = exc.message if isinstance(exc, ExpertkitError) else str(exc)
        return InstallResult(
            record,
            written,
            note=f"the {DISPLAY[runtime.decoder]} decoder was not prepared ({reason}); the first answer builds it",
        )
    if prepared is None:
        kind = DISPLAY[runtime.decoder]
        note = f"it decodes lean: the {kind} decoder covers LoRA and DoRA experts read from their files"
        return InstallResult(record, written, note=note)
    return InstallResult(record, written, prepared)
