"""``package_expert``: an expert directory → ``<name>-<model>.v<version>.expert`` + ``.sha256``.

validate → pick the trained model → gather and check files (no pickles, adapter matches the
manifest) → check the weights were trained on this base model and template → lock → a
deterministic archive → its checksum.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.layout import ADAPTER_CONFIG, ADAPTER_SUBDIR, ADAPTER_WEIGHTS, MANIFEST_FILE, WEIGHTS_DIR
from expertkit.manifest.load import LoadedManifest
from expertkit.manifest.model import ManifestV2
from expertkit.manifest.sections import Perf
from expertkit.models.fingerprint import Fingerprint, fingerprint, sha256_file, text_sha256
from expertkit.models.load import load_tokenizer
from expertkit.models.pull import ensure_ready
from expertkit.models.resolve import resolve_model
from expertkit.models.targets import load_checked_manifest
from expertkit.models.template_probe import first_difference, probe_record
from expertkit.models.tokens import add_control_tokens, special_tokens_record
from expertkit.naming import normalise_model_name
from expertkit.package.archive import PackageError, write_archive
from expertkit.package.checksum import write_checksum
from expertkit.package.contents import (
    GRAMMAR,
    LICENSE,
    README,
    ExpertWeights,
    adapter_files,
    evaluation_files,
    select_weights,
    side_files,
    soft_prompt_files,
)
from expertkit.package.lock import LOCK_FILE, ExpertLock, LockInputs, build_lock
from expertkit.training_meta import TrainingMeta

PACKAGE_SUFFIX = ".expert"


Measure = Callable[[Path], Perf]  # an unpacked package's directory → what it costs to run


@dataclass(frozen=True)
class PackageRequest:
    target: Path
    weights: Path | None = None
    model: str | None = None
    output: Path | None = None
    require_gate: bool = False


@dataclass(frozen=True)
class PackageResult:
    path: Path
    checksum_path: Path
    sha256: str
    files: dict[str, str]
    lock: ExpertLock
    manifest: ManifestV2  # as shipped (with perf when measured)


def package_name(name: str, model: str, version: str) -> str:
    """``<name>-<normalised-model>.v<version>.expert``, e.g. ``expert-json-qwen3-0-6b.v0.0.2.expert``."""
    return f"{name}-{normalise_model_name(model)}.v{version}{PACKAGE_SUFFIX}"


def resolved_manifest(
    loaded: LoadedManifest, weights: ExpertWeights, shipped: set[str], perf: Perf | None = None
) -> ManifestV2:
    """The manifest as shipped: v2.0 shape, the packaged base model only, file names as in the package,
    and ``perf`` as measured now (a hand-written ``perf`` never ships: it is replaced or left out)."""
    manifest, entry = loaded.manifest, weights.entry
    local = loaded.root / entry.name
    if not Path(entry.name).is_absolute() and local.is_dir():
        entry = entry.model_copy(update={"name": str(local.resolve())})  # a relative path would not resolve later
    update: dict[str, Any] = {
        "base_models": [entry],
        "readme": README if README in shipped else None,
        "license_file": LICENSE if LICENSE in shipped else None,
        "perf": perf,
    }
    training = manifest.training
    if training is not None and training.decoding is not None and training.decoding.grammar_file:
        decoding = training.decoding.model_copy(update={"grammar_file": GRAMMAR})
        update["training"] = training.model_copy(update={"decoding": decoding})
    return manifest.model_copy(update=update)


def _tokenizer_for(loaded: LoadedManifest, model_path: Path) -> Any:
    from expertkit.models.resolve import ResolvedModel

    tokenizer = load_tokenizer(ResolvedModel(str(model_path), "local", model_path))
    dataset = loaded.manifest.training.dataset if loaded.manifest.training else None
    add_control_tokens(tokenizer, dataset.special_tokens if dataset else [])
    return tokenizer


def check_trained_on(meta: TrainingMeta | None, fp: Fingerprint, tokenizer: Any, probe: dict[str, Any]) -> None:
    """Refuse weights whose training_meta.json names another base model or chat template."""
    if meta is None:
        return
    trained_base = meta.base_model.weights_sha256
    if trained_base and trained_base != fp.weights_sha256:
        raise PackageError(
            f"the adapter was trained on base weights {trained_base[:12]}…, "
            f"this base model is {fp.weights_sha256[:12]}…",
            "package on the machine/model it was trained with, or re-train",
        )
    trained_template = meta.chat_template_sha256
    difference = first_difference(meta.template_probe, probe) if meta.template_probe is not None else None
    if difference or (trained_template and trained_template != text_sha256(tokenizer.chat_template)):
        detail = difference.describe() if difference else "the template text differs"
        raise PackageError(
            f"the chat template changed since training: {detail}", "re-train, or restore the training template"
        )


def _training_record(meta: TrainingMeta | None) -> dict[str, Any] | None:
    """The lock's ``training`` section: the run's libraries, selection (without its history), metrics, plan."""
    if meta is None:
        return None
    written = meta.to_json()
    keys = ("libraries", "selection", "metrics", "plan", "chat_template_sha256")
    record = {key: written[key] for key in keys if key in meta.model_fields_set}
    record["data_lineage_hash"] = meta.data.lineage_hash
    record.get("selection", {}).pop("history", None)
    return record


def _digest(source: Path | bytes) -> str:
    return hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else sha256_file(source)


def gather_members(
    loaded: LoadedManifest, weights: ExpertWeights, perf: Perf | None = None
) -> tuple[dict[str, Path | bytes], ManifestV2]:
    """Every member of the package (name → file or bytes) and the manifest it ships."""
    members: dict[str, Path | bytes] = {**side_files(loaded), **adapter_files(weights)}
    members.update(soft_prompt_files(loaded, weights))
    members.update(evaluation_files(weights))
    shipped = resolved_manifest(loaded, weights, set(members), perf)
    data = shipped.model_dump(mode="json", exclude_none=True)
    members[MANIFEST_FILE] = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return members, shipped


def make_lock(loaded: LoadedManifest, weights: ExpertWeights, members: dict[str, Path | bytes]) -> ExpertLock:
    resolved = ensure_ready(resolve_model(weights.entry.name, loaded.root))
    if not resolved.ready:
        raise PackageError(f"base model {weights.entry.name} is not prepared", "run: expert-cli models pull NAME")
    fp = fingerprint(resolved.path)
    tokenizer = _tokenizer_for(loaded, resolved.path)
    probe = probe_record(tokenizer)
    meta = weights.meta()
    check_trained_on(meta, fp, tokenizer, probe)
    adapter_config = json.loads((weights.adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    adapter = weights.entry.adapters[0].model_dump(mode="json", exclude_none=True)
    inputs = LockInputs(
        expert={"name": loaded.manifest.name, "version": loaded.manifest.version},
        base_name=weights.entry.name,
        fingerprint=fp,
        chat_template=tokenizer.chat_template,
        probe=meta.template_probe if meta and meta.template_probe is not None else probe,
        special_tokens=special_tokens_record(tokenizer),
        adapter={**adapter, "peft_type": adapter_config.get("peft_type")},
        files={name: _digest(source) for name, source in members.items()},
        training=_training_record(meta),
        packaged_with={"expertkit": importlib.metadata.version("expertkit")},
    )
    return build_lock(inputs)


def require_passed_gate(weights_dir: Path) -> None:
    """Refuse unless the expert's evaluations (``eval/*.json``, written by ``expert-cli eval``)
    exist, were made on the adapter that would ship (its sha256), and every one passed the gate."""
    results = sorted((weights_dir / "eval").glob("*.json"))
    if not results:
        raise PackageError(
            f"no evaluation results in {weights_dir / 'eval'}", "run: expert-cli eval --expert DIR --gate"
        )
    adapter = weights_dir / ADAPTER_SUBDIR / ADAPTER_WEIGHTS
    current = sha256_file(adapter) if adapter.is_file() else None
    failing = []
    for path in results:
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise PackageError(f"{path} is not valid JSON: {exc}", "re-run expert-cli eval") from exc
        if result.get("adapter_sha256") != current:
            failing.append(f"{path.name}: evaluated other weights than the adapter now in {adapter.parent}")
            continue
        gate = result.get("gate", {})
        if not gate.get("passed", False):
            failing += [f"{path.name}: {f}" for f in gate.get("failures", ["no gate recorded"])]
    if failing:
        raise PackageError(
            "the last evaluation failed its gate:\n  " + "\n  ".join(failing), "improve the expert, or re-evaluate"
        )


def _measured(measure: Measure, members: dict[str, Path | bytes], lock: ExpertLock, weights: ExpertWeights) -> Perf:
    """Lay the package out unpacked in a temporary directory, as ``install`` would, and measure it there."""
    with tempfile.TemporaryDirectory(prefix="expertkit-measure-") as tmp:
        root = Path(tmp)
        for name, source in {**members, LOCK_FILE: lock.to_bytes()}.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copyfile(source, target)
        perf = measure(root)
    adapter = weights.adapter_dir / ADAPTER_WEIGHTS
    return perf.model_copy(update={"adapter_bytes": adapter.stat().st_size if adapter.is_file() else None})


def package_expert(request: PackageRequest, measure: Measure | None = None) -> PackageResult:
    """Build the package and its checksum file.

    Args:
        measure: measures the package laid out unpacked in a directory (the workflow above the
            stages passes the runtime's :func:`~expertkit.runtime.perf.measure_perf`); its result
            ships as the manifest's ``perf``. ``None``: no ``perf`` is shipped.

    Raises:
        ManifestError: the manifest fails ``validate``.
        PackageError: no or ambiguous weights, pickles, an adapter unlike the manifest, weights
            trained on another base model or template.
    """
    loaded = load_checked_manifest(request.target)
    weights = select_weights(loaded, request.weights or loaded.root / WEIGHTS_DIR, request.model)
    if request.require_gate:
        require_passed_gate(weights.directory)
    members, shipped = gather_members(loaded, weights)
    lock = make_lock(loaded, weights, members)
    if measure is not None:
        members, shipped = gather_members(loaded, weights, _measured(measure, members, lock, weights))
        lock = lock.model_copy(update={"files": dict(sorted((n, _digest(s)) for n, s in members.items()))})
    members[LOCK_FILE] = lock.to_bytes()
    output = request.output or Path.cwd()
    path = output / package_name(loaded.manifest.name, weights.entry.name, loaded.manifest.version)
    write_archive(path, members)
    checksum, digest = write_checksum(path)
    return PackageResult(path, checksum, digest, lock.files, lock, shipped)
