"""Re-verify every installed expert now: its files against the lock, the lock against its manifest,
and a kept signature against the keys trusted now (a key removed since install no longer vouches).
The same checks as every load (:func:`~expertkit.package.references.resolve_expert`), run ahead of
time for all of them; a background job runs it while the machine idles."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from expertkit.errors import ExpertkitError
from expertkit.package.references import resolve_expert
from expertkit.package.signing import PublicKey, default_trusted_keys_dir, trusted_keys
from expertkit.package.store import list_installed


@dataclass(frozen=True)
class Reverified:
    name: str
    version: str
    ok: bool
    signer: str | None  # the key that verified its signature just now (None: unsigned, or no keys)
    problem: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _keys(directory: Path | None) -> list[PublicKey] | None:
    directory = directory or default_trusted_keys_dir()
    return trusted_keys(directory) if directory.is_dir() and any(directory.glob("*.pub")) else None


def reverify_installed(trusted_keys_dir: Path | None = None) -> list[Reverified]:
    """Every installed expert, checked now; an expert installed signed must still verify with a trusted key."""
    keys = _keys(trusted_keys_dir)
    results = []
    for record in list_installed():
        reference = f"{record.name}@{record.version}"
        try:
            files = resolve_expert(reference, keys, require_signature=record.signer is not None)
        except ExpertkitError as exc:
            results.append(Reverified(record.name, record.version, False, None, exc.message))
            continue
        results.append(Reverified(record.name, record.version, True, files.signer, None))
    return results
