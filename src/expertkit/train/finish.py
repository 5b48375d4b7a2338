"""After the loop: publish the best checkpoint's weights, write the meta and the loss curve."""

from __future__ import annotations

import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from expertkit.errors import UsageError
from expertkit.fsutil import atomic_directory
from expertkit.layout import ADAPTER_SUBDIR, FULL_SUBDIR, SOFT_PROMPT_DIR
from expertkit.models.fingerprint import fingerprint
from expertkit.models.template_probe import probe_record
from expertkit.models.tokens import special_tokens_record
from expertkit.train.checkpoints import clear_staging, newest_checkpoint
from expertkit.train.job import TrainJob, TrainResult
from expertkit.train.outputs import CURVE_FILE, chat_template_sha256, library_versions, plot_loss_curve, write_meta
from expertkit.train.selection import BestCheckpointSelector
from expertkit.training_meta import (
    BaseModelRecord,
    DataRecord,
    ExpertRecord,
    FinalMetrics,
    ParameterCount,
    PhaseRecord,
    SelectionRecord,
    TrainingMeta,
)

PUBLISHED_SUFFIXES = (".safetensors", ".json", ".txt", ".jinja")


def peak_memory() -> tuple[float, float | None]:
    """Peak resident memory of this process (CPU) and CUDA's max allocated (``None`` without CUDA), in MiB."""
    import torch

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss = rss_kib / 1024 if sys.platform != "darwin" else rss_kib / 2**20
    cuda = round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
    return round(rss, 1), cuda


def final_metrics(job: TrainJob, trainer: Any) -> FinalMetrics:
    history = trainer.state.log_history
    last: dict[str, Any] = next((e for e in reversed(history) if "loss" in e), {})
    best = job.selector.best
    rss, cuda = peak_memory()
    return FinalMetrics(
        steps=trainer.state.global_step,
        epochs=round(trainer.state.epoch or 0.0, 4),
        final_train_loss=last.get("loss"),
        final_eval_loss=trainer.last_eval_loss,
        best_eval_loss=best.eval_loss if best else None,
        tokens_seen=last.get("tokens_seen"),
        tokens_per_s=last.get("tokens_per_s"),
        wall_time_s=round(time.time() - job.run_info["started"], 2),
        cpu_peak_rss_mib=rss,
        cuda_max_allocated_mib=cuda,
    )


def base_model_record(job: TrainJob) -> BaseModelRecord:
    fp = fingerprint(job.resolved.path)
    return BaseModelRecord(
        name=job.entry.name,
        path=str(job.resolved.path),
        weights_sha256=fp.weights_sha256,
        architecture=fp.architecture,
        vocab_size=fp.vocab_size,
        num_parameters=fp.num_parameters,
    )


def publish_weights(best_checkpoint: Path, weights_dir: Path) -> None:
    """Copy the chosen checkpoint's adapter (or full model) and soft prompts into ``weights_dir``."""
    for name in (ADAPTER_SUBDIR, FULL_SUBDIR, SOFT_PROMPT_DIR):
        source = best_checkpoint / name
        if not source.is_dir():
            continue
        with atomic_directory(weights_dir / name, replace=True) as staged:
            for file in source.iterdir():
                if file.suffix in PUBLISHED_SUFFIXES:  # not PEFT's boilerplate model card
                    shutil.copy2(file, staged / file.name)


def selection_summary(selector: BestCheckpointSelector, checkpoint: str | None = None) -> SelectionRecord:
    best = selector.best
    return SelectionRecord(
        best_step=best.step if best else None,
        reason=best.reason if best else "no evaluation passed the guards",
        stopped_early=selector.should_stop,
        guards=selector.guards.model_dump(mode="json"),
        history=selector.to_json(),
        checkpoint=checkpoint,
    )


def chosen_checkpoint(checkpoints: Path, selector: BestCheckpointSelector) -> Path:
    best = selector.best
    candidates = sorted(checkpoints.glob(f"checkpoint-{best.step}-*")) if best else []
    if candidates:
        return candidates[-1]
    newest = newest_checkpoint(checkpoints)
    if newest is None:
        raise UsageError(f"no checkpoint was written in {checkpoints}", "train for at least one step")
    return newest


def training_meta(job: TrainJob, trainer: Any, checkpoint: str) -> TrainingMeta:
    manifest = job.loaded.manifest
    phase = job.run_info.get("phase")
    return TrainingMeta(
        expert=ExpertRecord(name=manifest.name, version=manifest.version),
        manifest=manifest.model_dump(mode="json", exclude_none=True),
        base_model=base_model_record(job),
        chat_template_sha256=chat_template_sha256(job.tokenizer),
        template_probe=probe_record(job.tokenizer),
        special_tokens=special_tokens_record(job.tokenizer),
        data=DataRecord(lineage_hash=job.prepared.meta["key"], cache=str(job.prepared.directory)),
        plan=job.plan.to_json(),
        optimizer=trainer.optimizer_description,
        parameters=ParameterCount(trainable=job.trainable.trainable, total=job.trainable.total),
        new_token_ids=job.trainable.new_token_ids,
        resumed_from=job.resume_from.name if job.resume_from else None,
        phase=PhaseRecord(name=phase, init_from=job.run_info["init_from"]) if phase else None,
        selection=selection_summary(job.selector, checkpoint),
        metrics=final_metrics(job, trainer),
        libraries=library_versions(),
    )


def finish_run(job: TrainJob, trainer: Any) -> TrainResult:
    # Every rank past the end of train() first: transformers' last act there lists the checkpoints in
    # the staging directory on each rank, which the main rank is about to remove.
    trainer.accelerator.wait_for_everyone()
    if not trainer.args.should_save:  # non-zero ranks under accelerate launch
        return TrainResult(job.weights_dir, None, None)
    clear_staging(job.checkpoints)
    chosen = chosen_checkpoint(job.checkpoints, job.selector)
    publish_weights(chosen, job.weights_dir)
    meta = training_meta(job, trainer, chosen.name)
    write_meta(job.weights_dir, meta.to_json())
    title = f"{job.loaded.manifest.name} on {job.entry.name}"
    best_step = meta.selection.best_step
    curve = plot_loss_curve(trainer.state.log_history, best_step, job.weights_dir / CURVE_FILE, title)
    return TrainResult(job.weights_dir, meta, curve)
