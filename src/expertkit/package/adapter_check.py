"""Does a saved PEFT adapter (``adapter_config.json``) match the manifest's adapter entry?

A package whose manifest says ``dora r=12 on q_proj,v_proj`` but ships a plain LoRA of rank 8 on
other modules would load and run, silently behaving unlike its documentation; we refuse it.
"""

from __future__ import annotations

from typing import Any

from expertkit.manifest.sections import Adapter

# PEFT's peft_type (and use_dora) → the manifest's adapter type.
_PEFT_TYPES = {("LORA", False): "lora", ("LORA", True): "dora", ("IA3", False): "ia3", ("LOKR", False): "lokr"}
_ALPHA_KEYS = {"lora": "lora_alpha", "dora": "lora_alpha", "lokr": "alpha"}


def saved_adapter_type(config: dict[str, Any]) -> str | None:
    return _PEFT_TYPES.get((str(config.get("peft_type", "")).upper(), bool(config.get("use_dora", False))))


def _targets(config: dict[str, Any]) -> set[str] | str:
    targets = config.get("target_modules")
    if isinstance(targets, str):  # a regular expression: cannot be compared as a set
        return targets
    return {str(t) for t in targets or []}


def adapter_mismatches(adapter: Adapter, config: dict[str, Any], where: str) -> list[str]:
    """Every way ``config`` (a PEFT adapter_config.json) disagrees with the manifest's ``adapter``."""
    problems = []
    saved = saved_adapter_type(config)
    if saved != adapter.type:
        found = f"{config.get('peft_type')}{' + use_dora' if config.get('use_dora') else ''}"
        problems.append(f"{where}: adapter type is {saved or found!r}, the manifest says {adapter.type!r}")
        return problems
    rank = adapter.r or adapter.rank
    if adapter.type != "ia3" and config.get("r") != rank:
        problems.append(f"{where}: rank r={config.get('r')}, the manifest says r={rank}")
    alpha_key = _ALPHA_KEYS.get(adapter.type)
    if alpha_key and adapter.alpha is not None and float(config.get(alpha_key) or 0) != float(adapter.alpha):
        problems.append(f"{where}: alpha {config.get(alpha_key)}, the manifest says {adapter.alpha:g}")
    targets = _targets(config)
    if targets != set(adapter.target_modules):
        shown = targets if isinstance(targets, str) else sorted(targets)
        problems.append(f"{where}: target modules {shown}, the manifest says {sorted(set(adapter.target_modules))}")
    return problems
