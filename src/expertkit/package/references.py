"""Experts by reference: ``name``, ``name@version``, a directory, or a ``.expert`` file.

A package file is verified and extracted once into ``$EXPERTKIT_HOME/cache/packages/<sha256>/``
(atomically). A directory is either an unpacked package (it has ``expert.lock.json``) or an
expert's source directory (``manifest.json`` + ``weights/<model>/adapter``), whose lock is
assembled from ``training_meta.json`` by the loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expertkit.fsutil import atomic_directory
from expertkit.home import expertkit_home
from expertkit.layout import ADAPTER_SUBDIR, MANIFEST_FILE, SOFT_PROMPT_DIR, WEIGHTS_DIR
from expertkit.manifest.load import LoadedManifest, load_manifest
from expertkit.naming import normalise_model_name
from expertkit.package.archive import PackageError, extract_archive
from expertkit.package.build import PACKAGE_SUFFIX
from expertkit.package.lock import LOCK_FILE, ExpertLock, parse_lock
from expertkit.package.recheck import recheck_directory
from expertkit.package.signing import PublicKey, default_trusted_keys_dir, trusted_keys
from expertkit.package.store import find_installed
from expertkit.package.verify import verify_package
from expertkit.training_meta import TrainingMeta, read_training_meta


@dataclass(frozen=True)
class ExpertFiles:
    """An expert on disk, ready to load: its manifest, lock (if packaged) and adapter files."""

    root: Path
    loaded: LoadedManifest
    lock: ExpertLock | None
    source: str
    signer: str | None = None  # key id of a signature verified at load against the keys trusted then

    @property
    def packaged(self) -> bool:
        return self.lock is not None

    @property
    def origin(self) -> str:
        """Where the expert was loaded from, in words (said to the user, so a name never surprises)."""
        manifest = self.loaded.manifest
        if self.source.endswith(PACKAGE_SUFFIX):
            where = f"the package {self.source}"
        elif self.source == f"{manifest.name}@{manifest.version}":
            where = f"the store ({self.root})"
        else:
            where = f"the directory {self.root}"
        signed = f", signature by {self.signer} verified" if self.signer else ""
        return f"{manifest.name} {manifest.version} from {where}{signed}"

    @property
    def model_base_dir(self) -> Path | None:
        """Where a relative base-model name is resolved: the user's own expert directory, never a
        package's or an installed expert's (a package cannot bring the model it runs on)."""
        return None if self.packaged else self.loaded.root

    @property
    def model_dir(self) -> Path:
        entry = self.loaded.manifest.base_models[0]
        return self.root / WEIGHTS_DIR / normalise_model_name(entry.name)

    @property
    def adapter_dir(self) -> Path:
        return self.model_dir / ADAPTER_SUBDIR

    @property
    def soft_prompt_dir(self) -> Path:
        return self.root / SOFT_PROMPT_DIR if self.packaged else self.model_dir / SOFT_PROMPT_DIR

    def missing_weights(self) -> str | None:
        """Why this expert cannot be loaded yet (no trained adapter or soft prompt), or ``None``."""
        manifest = self.loaded.manifest
        base = manifest.base_models[0].name
        wanted = [self.adapter_dir / "adapter_config.json"] if manifest.base_models[0].adapters else []
        wanted += [self.soft_prompt_dir / f"{p.name}.safetensors" for p in manifest.soft_prompts]
        missing = [path for path in wanted if not path.is_file()]
        if not missing:
            return None
        if self.packaged:
            return f"{self.source} is missing {missing[0].relative_to(self.root)}"
        return f"{manifest.name} has no trained weights for {base} (looked for {missing[0]})"

    def training_meta(self) -> TrainingMeta | None:
        return read_training_meta(self.model_dir)


def packages_cache() -> Path:
    return expertkit_home() / "cache" / "packages"


def unpack_package(
    package: Path, keys: list[PublicKey] | None = None, require_signature: bool = False
) -> tuple[Path, dict[str, str], str | None]:
    """Verify ``package`` and extract it once into the cache; the cached directory, the member
    digests it must hold (the archive's, just verified) and the trusted signer (if any)."""
    report = verify_package(package, keys, require_signature)
    target = packages_cache() / report.archive_sha256[:32]
    if not (target / LOCK_FILE).is_file():
        with atomic_directory(target, replace=True) as staged:
            extract_archive(package, staged, report.scan.members)
    digests = {name: member.sha256 for name, member in report.scan.members.items()}
    return target, digests, report.signer if report.trusted else None


def _from_directory(
    directory: Path,
    source: str,
    keys: list[PublicKey] | None = None,
    require_signature: bool = False,
    expected: dict[str, str] | None = None,
    signer: str | None = None,
) -> ExpertFiles:
    """The expert in ``directory``. An unpacked package (it has a lock) is untrusted and re-checked
    in full (files, lock, manifest paths, signature): the one loading path for every reference."""
    if not (directory / MANIFEST_FILE).is_file():
        raise PackageError(f"{directory} has no manifest.json", "give an expert directory, package or installed name")
    loaded = load_manifest(directory)
    lock_path = directory / LOCK_FILE
    lock = parse_lock(lock_path.read_bytes(), str(directory)) if lock_path.is_file() else None
    if lock is None:
        if require_signature:
            raise PackageError(f"{directory} is not a package; signatures cover packages", "load the .expert file")
        if len(loaded.manifest.base_models) != 1:
            raise PackageError(
                f"{directory}: the manifest lists several base models", "package the expert for one model"
            )
    else:
        signer = recheck_directory(directory, loaded.manifest, lock, expected, keys, require_signature) or signer
    return ExpertFiles(directory.resolve(), loaded, lock, source, signer)


def resolve_expert(reference: str, keys: list[PublicKey] | None = None, require_signature: bool = False) -> ExpertFiles:
    """Find the expert ``reference`` names: a bare name (``sql``, ``expert-sql@0.1.0``) in the store;
    a path (``./byo``, ``dir/byo``, ``x.expert``) on disk.

    Whatever the way of naming it, a packaged expert (a ``.expert``, its unpacked directory, an
    installed one) goes through the same checks: member digests, lock against manifest and adapter
    config, untrusted manifest paths, and the signature against the keys trusted now.
    """
    path = Path(reference).expanduser()
    if is_bare_name(reference):  # a name means the store, even where a folder of that name exists
        return _installed(reference, keys, require_signature)
    if path.is_file() and path.name.endswith(PACKAGE_SUFFIX):
        directory, expected, signer = unpack_package(path, keys, require_signature)
        return _from_directory(directory, str(path), None, False, expected, signer)  # just verified
    if path.is_dir():
        return _from_directory(path, str(path), keys, require_signature)
    raise PackageError(f"{reference}: no such file or directory", "give an existing path or an installed name")


def is_bare_name(reference: str) -> bool:
    """``byo`` or ``byo@0.1.0`` (the store), as opposed to a path (``./byo``, ``dir/byo``, ``x.expert``)."""
    return not (
        "/" in reference or "\\" in reference or reference.startswith((".", "~")) or reference.endswith(PACKAGE_SUFFIX)
    )


def _installed(reference: str, keys: list[PublicKey] | None, require_signature: bool) -> ExpertFiles:
    try:
        record = find_installed(reference)
    except PackageError as exc:
        if Path(reference).is_dir():
            raise PackageError(
                f"no installed expert {reference!r} (a bare name means the store)",
                f"to load the directory instead, give its path: ./{reference}",
            ) from exc
        raise
    if require_signature and keys is None:
        keys = trusted_keys(default_trusted_keys_dir())
    return _from_directory(Path(record.path), f"{record.name}@{record.version}", keys, require_signature)
