"""Build the trainable module: base model (precision, quantization) + adapter + soft prompts.

Frozen base weights are stored in the compute dtype (bf16 when the device runs it natively), so
autocast does not re-cast every weight on every forward; trainable parameters (adapter, soft
prompts, new token rows, or all weights for full fine-tuning) stay in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from expertkit.errors import UsageError
from expertkit.manifest.sections import Adapter, SoftPrompt
from expertkit.models.resolve import ResolvedModel
from expertkit.train.adapters import attach_adapter
from expertkit.train.objective import SupervisedCausalLM
from expertkit.train.plan import TrainPlan
from expertkit.train.soft_prompts import build_soft_prompts


@dataclass
class TrainableModel:
    objective: SupervisedCausalLM
    trainable: int
    total: int
    new_token_ids: list[int]

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def _load_base(resolved: ResolvedModel, plan: TrainPlan) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"use_safetensors": True}
    if plan.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=plan.quantization == "int4",
            load_in_8bit=plan.quantization == "int8",
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": 0}
    frozen_low_precision = plan.precision.bf16 and not plan.full_finetune
    kwargs["dtype"] = torch.bfloat16 if frozen_low_precision else torch.float32
    kwargs["attn_implementation"] = plan.attention  # both isolate packed rows by their position ids
    model = AutoModelForCausalLM.from_pretrained(resolved.path, trust_remote_code=False, **kwargs)
    if plan.quantization == "none":
        model.to(plan.precision.device)
    return model


def _new_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids of tokens the data pipeline added to the tokenizer; the embeddings grow to hold them."""
    old = model.get_input_embeddings().num_embeddings
    if len(tokenizer) <= old:
        return []
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return list(range(old, len(tokenizer)))


def build_trainable(
    resolved: ResolvedModel,
    tokenizer: Any,
    adapter: Adapter | None,
    prompts: list[SoftPrompt],
    plan: TrainPlan,
) -> TrainableModel:
    """The objective module around the base model with its adapter (``None``: full fine-tune).

    Seeded first: adapter initialisation (LoRA's A, IA³'s vectors, random soft prompts) draws from
    the global RNG, so the same seed gives the same initial adapter and the same loss curve.
    """
    from transformers import set_seed

    set_seed(plan.seed)
    base = _load_base(resolved, plan)
    new_ids = _new_token_ids(base, tokenizer)
    base.config.use_cache = False
    if plan.quantization != "none":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=plan.gradient_checkpointing)
    elif plan.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter is None:
        model = base.float() if plan.precision.bf16 else base
        model.requires_grad_(True)
    else:
        model = attach_adapter(base, adapter, new_ids)
    soft = None
    if prompts:
        soft = build_soft_prompts(prompts, base.get_input_embeddings(), tokenizer, plan.seed)
        soft.to(plan.precision.device)
    objective = SupervisedCausalLM(model, soft, prompts, plan.neftune_alpha or 0.0)
    trainable = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    total = sum(p.numel() for p in objective.parameters())
    if trainable == 0:
        raise UsageError("nothing to train: no parameter requires a gradient", "check the adapter's target_modules")
    return TrainableModel(objective, trainable, total, new_ids)
