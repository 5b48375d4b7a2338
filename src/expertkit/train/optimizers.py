"""Optimizers chosen by name from the manifest, through a registry.

- ``adamw``: ``torch.optim.AdamW`` (fused on CUDA).
- ``muon``: ``torch.optim.Muon`` on the 2-D hidden weight matrices, AdamW on everything else
  (embeddings, LM head, norms, biases, soft prompts); the split is reported by parameter count.
- ``paged_adamw_8bit``: bitsandbytes' paged 8-bit AdamW; CUDA only.

Each builder gets ``(named trainable parameters, plan, device)`` and returns an optimizer and a
one-line description. An optimizer that cannot run on this device is a :class:`UsageError`.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from expertkit.errors import UsageError
from expertkit.registry import Registry
from expertkit.train.plan import TrainPlan

NamedParams = list[tuple[str, Any]]


@dataclass(frozen=True)
class BuiltOptimizer:
    optimizer: Any
    description: str


OptimizerBuilder = Callable[[NamedParams, TrainPlan, str], BuiltOptimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry()

# Parameters Muon must not touch even when 2-D: token embeddings, the head, soft prompts.
NOT_HIDDEN = ("embed", "lm_head", "wte", "soft_prompts", "trainable_tokens", "token_adapter")


def _betas(plan: TrainPlan) -> tuple[float, float]:
    betas = plan.optimizer.betas or [0.9, 0.999]
    return (betas[0], betas[1])


def _groups(params: NamedParams, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices, not biases/norm gains (the usual AdamW grouping)."""
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@OPTIMIZERS.register("adamw")
def adamw(params: NamedParams, plan: TrainPlan, device: str) -> BuiltOptimizer:
    optimizer = torch.optim.AdamW(
        _groups(params, plan.weight_decay),
        lr=plan.learning_rate,
        betas=_betas(plan),
        eps=plan.optimizer.eps or 1e-8,
        fused=device == "cuda",
    )
    return BuiltOptimizer(optimizer, f"AdamW on {_count(params):,} parameters")


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one: shared ``param_groups`` so one LR scheduler drives all."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.defaults: dict[str, Any] = {}
        self.state = ChainMap(*(o.state for o in optimizers))  # type: ignore[assignment]  # live view of the parts
        self._optimizer_step_pre_hooks: dict[int, Any] = {}
        self._optimizer_step_post_hooks: dict[int, Any] = {}

    def step(self, closure: Any = None) -> Any:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): o.state_dict() for i, o in enumerate(self.optimizers)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for i, optimizer in enumerate(self.optimizers):
            optimizer.load_state_dict(state_dict[str(i)])


def _count(params: NamedParams) -> int:
    return sum(p.numel() for _, p in params)


@OPTIMIZERS.register("muon")
def muon(params: NamedParams, plan: TrainPlan, device: str) -> BuiltOptimizer:
    settings = plan.optimizer.muon
    hidden_lr = settings.hidden_lr if settings else 0.02
    aux_lr = settings.aux_lr if settings else plan.learning_rate
    momentum = settings.momentum if settings else 0.95
    hidden = [(n, p) for n, p in params if p.ndim == 2 and not any(tag in n for tag in NOT_HIDDEN)]
    hidden_ids = {id(p) for _, p in hidden}
    rest = [(n, p) for n, p in params if id(p) not in hidden_ids]
    if not hidden:
        raise UsageError("muon found no 2-D hidden weight matrices to optimise", 'use "optimizer": "adamw"')
    parts: list[torch.optim.Optimizer] = [
        torch.optim.Muon(
            [p for _, p in hidden],
            lr=hidden_lr,
            momentum=momentum,
            weight_decay=plan.weight_decay,
            adjust_lr_fn="match_rms_adamw",
        )
    ]
    if rest:
        parts.append(torch.optim.AdamW(_groups(rest, plan.weight_decay), lr=aux_lr, betas=_betas(plan)))
    total = _count(params)
    share = _count(hidden) / total
    description = (
        f"Muon on {len(hidden)} hidden matrices ({share:.1%} of trainable parameters), "
        f"AdamW on the other {len(rest)} tensors ({1 - share:.1%})"
    )
    return BuiltOptimizer(CombinedOptimizer(parts), description)


@OPTIMIZERS.register("paged_adamw_8bit")
def paged_adamw_8bit(params: NamedParams, plan: TrainPlan, device: str) -> BuiltOptimizer:
    if device != "cuda":
        raise UsageError(
            "paged_adamw_8bit needs a CUDA GPU (bitsandbytes pages optimizer state through CUDA unified memory); "
            "this machine has none",
            'use "optimizer": "adamw" on CPU',
        )
    try:
        import bitsandbytes as bnb  # type: ignore[import-not-found]
    except ImportError as exc:
        raise UsageError("paged_adamw_8bit needs bitsandbytes", "pip install bitsandbytes") from exc
    optimizer = bnb.optim.PagedAdamW8bit(_groups(params, plan.weight_decay), lr=plan.learning_rate, betas=_betas(plan))
    return BuiltOptimizer(optimizer, f"paged 8-bit AdamW (bitsandbytes) on {_count(params):,} parameters")


def build_optimizer(module: Any, plan: TrainPlan, device: str) -> BuiltOptimizer:
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return OPTIMIZERS[plan.optimizer.type](params, plan, device)
