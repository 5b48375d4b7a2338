"""Does a package's lock agree with its manifest and adapter config? (``validate PACKAGE``, install)."""

from __future__ import annotations

import json

from pydantic import ValidationError

from expertkit.manifest.checks import untrusted_path_problems
from expertkit.manifest.load import parse_manifest, structural_problems
from expertkit.manifest.model import ManifestV2
from expertkit.models.fingerprint import text_sha256
from expertkit.package.adapter_check import adapter_mismatches
from expertkit.package.archive import PackageError
from expertkit.package.lock import ExpertLock

ADAPTER_CONFIG_SUFFIX = "/adapter/adapter_config.json"


def packaged_manifest(raw: bytes | None, where: str) -> ManifestV2:
    """The manifest.json of a package, typed; a clear error when it is missing or invalid."""
    if raw is None:
        raise PackageError(f"{where} has no manifest.json", "this is not an expertkit package")
    try:
        data = json.loads(raw.decode("utf-8"))
        problems = structural_problems(data)
        if problems:
            listing = "\n  ".join(p.render() for p in problems)
            raise PackageError(f"{where}: manifest.json is not valid:\n  {listing}", "re-package the expert")
        return parse_manifest(data)[0]
    except (UnicodeDecodeError, ValueError, ValidationError) as exc:
        raise PackageError(f"{where}: manifest.json cannot be read: {exc}", "re-package the expert") from exc


def lock_problems(manifest: ManifestV2, lock: ExpertLock, contents: dict[str, bytes]) -> list[str]:
    """Every disagreement between the lock, the manifest and the shipped adapter config."""
    problems = [f"manifest.json {p.render()}" for p in untrusted_path_problems(manifest)]
    expert = lock.expert
    if (expert.name, expert.version) != (manifest.name, manifest.version):
        problems.append(
            f"the lock is for {expert.name}@{expert.version}, the manifest is {manifest.name}@{manifest.version}"
        )
    names = manifest.model_names()
    if lock.base_model.name not in names:
        problems.append(f"the lock's base model {lock.base_model.name!r} is not in the manifest ({names})")
    template = lock.chat_template
    if text_sha256(template.text) != template.sha256:
        problems.append("the lock's chat template text does not match its sha256")
    configs = [name for name in contents if name.endswith(ADAPTER_CONFIG_SUFFIX)]
    if len(configs) != 1 or len(manifest.base_models) != 1:
        problems.append(f"a package holds one adapter for one base model; found {len(configs)} adapter configs")
        return problems
    try:
        config = json.loads(contents[configs[0]].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return [*problems, f"{configs[0]} is not valid JSON: {exc}"]
    adapters = manifest.base_models[0].adapters
    return problems + adapter_mismatches(adapters[0], config, configs[0])
