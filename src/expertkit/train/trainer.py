"""``ExpertTrainer``: transformers' Trainer with our loss, evaluation, saving and checkpoint names.

The Trainer keeps what it does well: the loop, gradient accumulation, accelerate (DDP/FSDP/
DeepSpeed under ``accelerate launch``), bf16 autocast, the LR schedule, optimizer/scheduler/RNG
state and data-position skipping on resume. The overrides are the documented hooks:

- ``compute_loss``: supervised-only weighted CE sums from :class:`SupervisedCausalLM`, divided by
  the supervised-token count of the whole accumulated batch (gathered across ranks).
- ``evaluate``: token-exact eval loss (sum of CE / supervised tokens, reduced across ranks) and the
  best-checkpoint guards.
- ``_save`` / ``_load_from_checkpoint``: adapter (PEFT, safetensors) + soft prompts, never the
  frozen base model and never a pickle for weights.
- ``_save_checkpoint``: staged, then published atomically as ``checkpoint-{step}-{date}-{time}``
  with its ``.ledger.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from expertkit.errors import ModelLoadError
from expertkit.layout import ADAPTER_SUBDIR, ADAPTER_WEIGHTS, FULL_SUBDIR, SOFT_PROMPT_DIR
from expertkit.train.checkpoints import STAGING_DIR, CheckpointLedger, publish_checkpoint, rotate_checkpoints
from expertkit.train.objective import causal_lm_of
from expertkit.train.selection import BestCheckpointSelector
from expertkit.train.soft_prompts import load_soft_prompts, save_soft_prompts

KEEP_LAST_CHECKPOINTS = 2


class ExpertTrainer(Trainer):
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, selector: BestCheckpointSelector, run_info: dict[str, Any], **kwargs: Any) -> None:
        self.optimizer_description = kwargs.pop("optimizer_description", "")
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # so the Trainer counts supervised tokens per accumulated batch
        self.selector = selector
        self.run_info = run_info  # data hash, wall-clock start: written into every ledger
        self.tokens_seen = 0  # real (non-pad) tokens on this rank
        self.last_train_loss: float | None = None
        self.losses_since_eval: list[float] = []  # the selection guards compare eval loss with their mean
        self.last_eval_loss: float | None = None

    # -- loss -------------------------------------------------------------------------------
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        real_tokens = inputs.pop("real_tokens", 0)
        if model.training:
            self.tokens_seen += int(real_tokens)
        sums = model(**inputs)
        denominator = num_items_in_batch if num_items_in_batch is not None else sums["tokens"].clamp(min=1)
        loss = sums["weighted"] / denominator
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        return (loss, sums) if return_outputs else loss

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Any:
        started = time.time()
        loader = self.get_eval_dataloader(eval_dataset)
        model = self.model
        was_training = model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # (CE sum, tokens)
        self.callback_handler.eval_dataloader = loader  # progress callbacks read its length
        with torch.no_grad():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                batch.pop("real_tokens", None)
                sums = model(**batch)
                totals += torch.stack([sums["ce"].double(), sums["tokens"].double()])
                self.callback_handler.on_prediction_step(self.args, self.state, self.control)  # type: ignore[has-type]
        totals = self.accelerator.reduce(totals, reduction="sum")
        model.train(was_training)
        self.run_info["eval_seconds"] = self.run_info.get("eval_seconds", 0.0) + time.time() - started
        eval_loss = (totals[0] / totals[1].clamp(min=1)).item()
        metrics = {f"{metric_key_prefix}_loss": eval_loss, f"{metric_key_prefix}_tokens": int(totals[1].item())}
        self.last_eval_loss = eval_loss
        if metric_key_prefix == "eval" and self.state.global_step > 0:
            recent = self.losses_since_eval or ([self.last_train_loss] if self.last_train_loss is not None else [])
            smoothed = sum(recent) / len(recent) if recent else None
            observation = self.selector.observe(self.state.global_step, eval_loss, smoothed)
            self.losses_since_eval = []
            if self.selector.should_stop:
                self.control.should_training_stop = True  # type: ignore[has-type]
            metrics["eval_best"] = float(observation.best)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args,
            self.state,
            self.control,  # type: ignore[has-type]
            metrics,
        )
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            self.last_train_loss = logs["loss"]
            self.losses_since_eval.append(float(logs["loss"]))
            seen = torch.tensor(self.tokens_seen, device=self.args.device)
            this_run = int(self.accelerator.reduce(seen, reduction="sum").item())
            # Training throughput: evaluation time is not training time.
            elapsed = max(time.time() - self.run_info["started"] - self.run_info.get("eval_seconds", 0.0), 1e-9)
            total = this_run + self.run_info.get("tokens_before", 0)
            logs = {**logs, "tokens_seen": total, "tokens_per_s": round(this_run / elapsed, 2)}
        super().log(logs, start_time)

    # -- saving -----------------------------------------------------------------------------
    def _objective(self) -> Any:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        if not self.args.should_save:
            return
        target = Path(output_dir or self.args.output_dir)
        objective = self._objective()
        if hasattr(objective.model, "peft_config"):
            objective.model.save_pretrained(str(target / ADAPTER_SUBDIR), safe_serialization=True)
        else:
            causal_lm_of(objective.model).save_pretrained(str(target / FULL_SUBDIR), safe_serialization=True)
        if objective.prompts:
            save_soft_prompts(objective.soft_prompts, objective.prompts, target / SOFT_PROMPT_DIR)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_file

        source = Path(resume_from_checkpoint)
        objective = self._objective()
        if hasattr(objective.model, "peft_config"):
            from peft import set_peft_model_state_dict

            weights = load_file(str(source / ADAPTER_SUBDIR / ADAPTER_WEIGHTS))
            set_peft_model_state_dict(objective.model, weights)
        else:
            causal_lm = causal_lm_of(objective.model)
            state = {}
            for file in sorted((source / FULL_SUBDIR).glob("*.safetensors")):
                state.update(load_file(str(file)))
            result = causal_lm.load_state_dict(state, strict=False)
            missing = [k for k in result.missing_keys if not k.startswith("lm_head.")]  # tied to the embeddings
            if missing or result.unexpected_keys:
                raise ModelLoadError(
                    f"{source / FULL_SUBDIR} does not match the model (missing {missing[:3]}, "
                    f"unexpected {result.unexpected_keys[:3]})",
                    "start a fresh run without --resume",
                )
        if objective.prompts:
            loaded = load_soft_prompts(objective.prompts, source / SOFT_PROMPT_DIR)
            with torch.no_grad():
                for name, tensor in loaded.items():
                    objective.soft_prompts[name].copy_(tensor)

    def _get_output_dir(self, trial: Any) -> str:
        return str(Path(self.args.output_dir) / STAGING_DIR)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        step = self.state.global_step
        staged = Path(self._get_output_dir(trial)) / f"checkpoint-{step}"
        best = self.selector.best
        ledger = CheckpointLedger(
            step=step,
            train_loss=self.last_train_loss,
            eval_loss=self.last_eval_loss,
            tokens_seen=next((e["tokens_seen"] for e in reversed(self.state.log_history) if "tokens_seen" in e), 0),
            learning_rate=self._current_lr(),
            wall_time_s=round(time.time() - self.run_info["started"], 2),
            data_hash=self.run_info["data_hash"],
            best_step=best.step if best else None,
            selection=self.selector.to_json(),
        )
        root = Path(self.args.output_dir)
        publish_checkpoint(staged, root, ledger)
        rotate_checkpoints(root, KEEP_LAST_CHECKPOINTS, {best.step} if best else set())

    def _current_lr(self) -> float | None:
        if self.lr_scheduler is None:
            return None
        lr = self.lr_scheduler.get_last_lr()[0]
        return float(lr) if math.isfinite(lr) else None
