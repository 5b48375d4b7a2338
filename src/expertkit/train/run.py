"""``train_expert``: one expert, one base model, from manifest to ``weights/<model>/``.

validate → plan → prepared data → model + adapter → ExpertTrainer (eval, guarded checkpoints,
resume) → best checkpoint copied to ``weights/<model>/adapter`` (+ ``soft_prompts/``) →
``training_meta.json`` and ``loss_curve.png``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

from expertkit.data.expert_data import prepare_expert_data
from expertkit.errors import UsageError
from expertkit.layout import CHECKPOINT_DIR
from expertkit.manifest.sections import TrainingPhase
from expertkit.models.context import ExpertContext, open_expert
from expertkit.runs import RunRecord, archive_run, register_run
from expertkit.train.adapters import adapter_to_train
from expertkit.train.checkpoints import CheckpointLedger, clear_staging, newest_checkpoint, read_ledger
from expertkit.train.job import (
    TrainingInterruptedError,
    TrainJob,
    TrainRequest,
    TrainResult,
    epoch_shape,
    weights_dir_for,
)
from expertkit.train.phases import phase_config
from expertkit.train.plan import TrainPlan, resolve_plan
from expertkit.train.selection import BestCheckpointSelector

EVAL_BUDGET = 0.2


def _phase(phases: list[TrainingPhase] | None, name: str) -> TrainingPhase:
    for phase in phases or []:
        if phase.name == name:
            return phase
    raise UsageError(f"no training phase named {name!r}", "check training.phases in the manifest")


def resume_point(
    checkpoints: Path, resume: bool, data_hash: str, clear: bool = True
) -> tuple[Path | None, CheckpointLedger | None]:
    """The newest complete checkpoint and its ledger when resuming; a fresh run clears old ones
    (``clear``: only the main process touches the directory)."""
    if clear:
        clear_staging(checkpoints)
    if not resume:
        if clear:
            shutil.rmtree(checkpoints, ignore_errors=True)
        return None, None
    newest = newest_checkpoint(checkpoints)
    if newest is None:
        raise UsageError(f"--resume: no complete checkpoint in {checkpoints}", "start a fresh run without --resume")
    ledger = read_ledger(newest)
    if ledger.data_hash != data_hash:
        raise UsageError(
            f"--resume: {newest.name} was trained on data {ledger.data_hash}, the data is now {data_hash}",
            "resuming on different data would mix two runs; start a fresh run without --resume",
        )
    return newest, ledger


def default_eval_steps(plan: TrainPlan, packing: dict[str, Any], world_size: int) -> tuple[int, int]:
    """(total optimizer steps, eval interval).

    Without ``eval_steps`` in the manifest: between 2 and 10 evaluations, as many as keep eval
    under :data:`EVAL_BUDGET` of the run (a forward pass costs about a third of a training step
    per token), so a short run on a large eval split does not spend its time evaluating.
    """
    rows_per_step = plan.batch_size * plan.gradient_accumulation_steps * world_size
    train_rows = max(packing["train"]["rows"], 1)
    total = plan.max_steps or max(1, math.ceil(plan.epochs * math.ceil(train_rows / rows_per_step)))
    if plan.eval_steps:
        return total, plan.eval_steps
    tokens_per_step = packing["train"]["real_tokens"] / train_rows * rows_per_step
    eval_tokens = max(packing["eval"]["real_tokens"], 1)
    evaluations = min(10, max(2, int(EVAL_BUDGET * 3 * total * tokens_per_step / eval_tokens)))
    return total, max(1, math.ceil(total / evaluations))


def training_arguments(plan: TrainPlan, checkpoints: Path, total_steps: int, eval_steps: int) -> Any:
    from transformers import TrainingArguments

    warmup = plan.warmup_steps if plan.warmup_steps is not None else math.ceil(plan.warmup_ratio * total_steps)
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=plan.batch_size,
        per_device_eval_batch_size=plan.batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        learning_rate=plan.learning_rate,
        max_grad_norm=plan.max_grad_norm,
        num_train_epochs=plan.epochs,
        max_steps=plan.max_steps or -1,
        lr_scheduler_type=plan.scheduler,
        warmup_steps=warmup,
        logging_steps=min(plan.logging_steps, eval_steps),
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        bf16=plan.precision.bf16,
        use_cpu=plan.precision.device == "cpu",
        seed=plan.seed,
        data_seed=plan.seed,
        report_to=plan.report_to or "none",
        remove_unused_columns=False,
        dataloader_num_workers=plan.dataloader_num_workers,
        dataloader_pin_memory=plan.dataloader_pin_memory,
        dataloader_prefetch_factor=plan.dataloader_prefetch_factor,
        dataloader_persistent_workers=plan.dataloader_persistent_workers,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
    )


def prepare_job(request: TrainRequest, context: ExpertContext) -> TrainJob:
    from accelerate import PartialState

    from expertkit.train.build import build_trainable

    loaded, entry, resolved = context.loaded, context.entry, context.resolved
    training = loaded.manifest.training
    config = training.config if training else None
    if request.phase is not None:
        config = phase_config(config, _phase(training.phases if training else None, request.phase))
    plan = resolve_plan(config, entry, request.max_steps)
    if request.eval_steps is not None:
        plan = dataclasses.replace(plan, eval_steps=request.eval_steps)
    adapter = None if plan.full_finetune else adapter_to_train(entry.adapters)
    state = PartialState()
    with state.main_process_first():  # under accelerate launch, rank 0 builds the data cache, others read it
        prepared, tokenizer = prepare_expert_data(context, progress=request.progress, phase=request.phase)
    data_hash = prepared.meta["key"]
    weights_dir = weights_dir_for(loaded, entry)
    with state.main_process_first():
        resume_from, ledger = resume_point(
            weights_dir / CHECKPOINT_DIR, request.resume, data_hash, clear=state.is_main_process
        )
    selector = BestCheckpointSelector(plan.selection)
    if ledger is not None:
        selector = BestCheckpointSelector.from_json(plan.selection, ledger.selection)
    trainable = build_trainable(resolved, tokenizer, adapter, list(loaded.manifest.soft_prompts), plan)
    total, eval_steps = default_eval_steps(plan, prepared.meta["packing"], state.num_processes)
    run_info = {"started": time.time(), "data_hash": data_hash, "tokens_before": ledger.tokens_seen if ledger else 0}
    run_info.update(phase=request.phase, init_from=str(request.init_from) if request.init_from else None)
    return TrainJob(
        loaded,
        entry,
        resolved,
        plan,
        prepared,
        tokenizer,
        trainable,
        weights_dir,
        resume_from,
        selector,
        run_info,
        total,
        eval_steps,
        epoch_shape(plan, prepared.meta["packing"], state.num_processes),
    )


def events_callback(job: TrainJob, trainer: Any, samples: int) -> Any:
    """The run's ``events.jsonl`` writer: a fresh file for a fresh run (the first phase of a curriculum),
    appended to on --resume and by later phases."""
    from expertkit.events import EVENTS_FILE, RunEvents
    from expertkit.runs import continued_run_id, new_run_id
    from expertkit.train.events import EventsCallback, eval_examples, greedy_sampler

    fresh = job.resume_from is None and job.run_info.get("init_from") is None
    job.run_info["run_id"] = (None if fresh else continued_run_id(job.weights_dir)) or new_run_id()
    events = RunEvents(job.weights_dir / EVENTS_FILE, fresh, writer=trainer.args.should_save)
    sampler, examples = None, []
    if samples > 0 and not job.loaded.manifest.soft_prompts:  # generate() would leave the soft prompt out
        examples = eval_examples(trainer.eval_dataset, samples)
        sampler = greedy_sampler(lambda: trainer._objective().model, job.tokenizer, examples)
    start = {
        "run_id": job.run_info["run_id"],
        "data_hash": job.run_info["data_hash"],
        "resumed_from": job.resume_from.name if job.resume_from else None,
        "phase": job.run_info.get("phase"),
        "eval_steps": job.eval_steps,
        "samples": len(examples),
    }
    return EventsCallback(events, job.selector, sampler, start)


def build_trainer(job: TrainJob, interrupt: Any, progress: bool, eval_samples: int = 0) -> Any:
    """The ExpertTrainer for a resolved job."""
    from transformers import PrinterCallback

    from expertkit.train.callbacks import FinalStepCallback, RichProgressCallback
    from expertkit.train.collator import PackedCollator
    from expertkit.train.optimizers import build_optimizer
    from expertkit.train.soft_prompts import total_virtual_tokens
    from expertkit.train.trainer import ExpertTrainer

    built = build_optimizer(job.trainable.objective, job.plan, job.plan.precision.device)
    pad_id = job.tokenizer.pad_token_id if job.tokenizer.pad_token_id is not None else job.tokenizer.eos_token_id
    trainer = ExpertTrainer(
        model=job.trainable.objective,
        args=training_arguments(job.plan, job.checkpoints, job.total_steps, job.eval_steps),
        train_dataset=job.prepared.load("train"),
        eval_dataset=job.prepared.load("eval"),
        data_collator=PackedCollator(pad_id, total_virtual_tokens(job.loaded.manifest.soft_prompts)),
        optimizers=(built.optimizer, None),
        selector=job.selector,
        run_info=job.run_info,
        optimizer_description=built.description,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(FinalStepCallback())
    trainer.add_callback(interrupt)
    trainer.add_callback(events_callback(job, trainer, eval_samples))
    if progress:
        trainer.add_callback(RichProgressCallback())
    return trainer


def train_expert(request: TrainRequest, on_start: Any = None, context: ExpertContext | None = None) -> TrainResult:
    """Train the expert ``context`` holds (opened from ``request.target`` when not given: a caller that
    already opened it passes it along); ``on_start(job, trainer)`` is called before the loop.

    Raises:
        ManifestError, UsageError, DataError: before any training step.
        TrainingInterrupted: Ctrl-C; a checkpoint was saved, ``--resume`` continues.
    """
    from expertkit.train.callbacks import InterruptCallback
    from expertkit.train.finish import finish_run

    job = prepare_job(request, context or open_expert(request.target, request.model))
    interrupt = InterruptCallback()
    trainer = build_trainer(job, interrupt, request.progress, request.eval_samples)
    if request.init_from is not None and job.resume_from is None:
        trainer._load_from_checkpoint(str(request.init_from))  # the previous phase's adapter
    if on_start is not None:
        on_start(job, trainer)
    record = _register(job) if trainer.args.should_save else None
    try:
        trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
        if interrupt.requested:
            raise TrainingInterruptedError(
                f"training stopped by Ctrl-C at step {trainer.state.global_step}; a checkpoint was saved in "
                f"{job.checkpoints}",
                "continue with: expert-cli train --resume",
            )
        return finish_run(job, trainer)
    finally:
        if record is not None:  # finished, interrupted or failed: the record keeps what the run wrote
            archive_run(record, job.prepared.meta)


def _register(job: TrainJob) -> RunRecord:
    """The run's record in ``$EXPERTKIT_HOME/runs/`` (see :mod:`expertkit.runs`)."""
    manifest = job.loaded.manifest
    return register_run(job.run_info["run_id"], manifest.name, job.loaded.root, job.weights_dir, job.entry.name)
