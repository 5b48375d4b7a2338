"""Adapter types: the manifest's adapter entry → a PEFT config, through a registry.

Each builder checks what its method cannot do *before* any model is loaded (an unsupported
combination is a :class:`UsageError`), then returns the PEFT config. Adding a method is one
decorated function; nothing else branches on the adapter type.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from expertkit.errors import UsageError
from expertkit.manifest.sections import Adapter
from expertkit.registry import Registry

AdapterBuilder = Callable[[Adapter, list[int] | None], Any]
ADAPTERS: Registry[AdapterBuilder] = Registry()


def _rank(adapter: Adapter) -> int:
    rank = adapter.r or adapter.rank
    if rank is None:
        raise UsageError(f"a {adapter.type} adapter needs a rank", 'add "r": 8 (or another rank) to the adapter')
    return rank


def _no_new_tokens(adapter: Adapter, new_token_ids: list[int] | None) -> None:
    if new_token_ids:
        raise UsageError(
            f"training.dataset.special_tokens adds {len(new_token_ids)} new tokens, whose embeddings must be "
            f"trained, but {adapter.type} adapters cannot train embedding rows",
            "use a lora or dora adapter (trainable token rows), or only list tokens the vocabulary already has",
        )


@ADAPTERS.register("lora")
def lora_config(adapter: Adapter, new_token_ids: list[int] | None = None) -> Any:
    from peft import LoraConfig, TaskType

    rank = _rank(adapter)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=rank,
        lora_alpha=adapter.alpha or 2 * rank,
        lora_dropout=adapter.dropout or 0.0,
        target_modules=list(adapter.target_modules),
        use_dora=adapter.type == "dora",
        # New control tokens get trainable embedding rows (only those rows are stored).
        trainable_token_indices=list(new_token_ids) if new_token_ids else None,
    )


ADAPTERS.register("dora")(lora_config)


@ADAPTERS.register("ia3")
def ia3_config(adapter: Adapter, new_token_ids: list[int] | None = None) -> Any:
    from peft import IA3Config, TaskType

    # Rank/alpha and feedforward_modules ⊆ target_modules are manifest checks (run before training).
    _no_new_tokens(adapter, new_token_ids)
    return IA3Config(
        task_type=TaskType.CAUSAL_LM,
        target_modules=list(adapter.target_modules),
        feedforward_modules=list(adapter.feedforward_modules or []),
    )


@ADAPTERS.register("lokr")
def lokr_config(adapter: Adapter, new_token_ids: list[int] | None = None) -> Any:
    from peft import LoKrConfig, TaskType

    _no_new_tokens(adapter, new_token_ids)
    rank = _rank(adapter)
    return LoKrConfig(
        task_type=TaskType.CAUSAL_LM,
        r=rank,
        alpha=adapter.alpha or 2 * rank,
        module_dropout=adapter.dropout or 0.0,
        target_modules=list(adapter.target_modules),
    )


def adapter_to_train(adapters: list[Adapter]) -> Adapter:
    """The one adapter a base-model entry trains; several stacked adapters are refused."""
    if len(adapters) != 1:
        kinds = ", ".join(a.type for a in adapters)
        raise UsageError(
            f"this base model lists {len(adapters)} adapters ({kinds}); expertkit trains one adapter per base model",
            "keep one adapter entry (train other variants as separate experts)",
        )
    return adapters[0]


def peft_config(adapter: Adapter, new_token_ids: list[int] | None = None) -> Any:
    """The PEFT config for ``adapter``. Raises UsageError for an unsupported combination."""
    return ADAPTERS[adapter.type](adapter, new_token_ids)


def attach_adapter(model: Any, adapter: Adapter, new_token_ids: list[int] | None = None) -> Any:
    """``get_peft_model`` with the adapter's config; adapter weights are fp32 over a bf16 base.

    PEFT reads a property transformers 5 deprecated; that warning is PEFT's, not the user's.
    """
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, peft_config(adapter, new_token_ids))
