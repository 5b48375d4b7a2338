"""What a finished run leaves beside the weights: ``training_meta.json`` and ``loss_curve.png``."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from expertkit.fsutil import save_figure_atomic, write_text_atomic
from expertkit.layout import TRAINING_META

META_FILE = TRAINING_META
CURVE_FILE = "loss_curve.png"
LIBRARIES = ("expertkit", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "trl")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def chat_template_sha256(tokenizer: Any) -> str | None:
    template = tokenizer.chat_template
    return hashlib.sha256(template.encode("utf-8")).hexdigest() if isinstance(template, str) else None


def write_meta(directory: Path, meta: dict[str, Any]) -> Path:
    path = directory / META_FILE
    write_text_atomic(path, json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def loss_series(log_history: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, eval) loss points from the Trainer's log history."""
    train = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e]
    return train, evals


def plot_loss_curve(log_history: list[dict[str, Any]], best_step: int | None, path: Path, title: str) -> Path | None:
    """Train and eval loss against step as a PNG (written atomically); None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_series(log_history)
    if not train and not evals:
        return None
    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4")
    if evals:
        axes.plot(*zip(*evals, strict=True), label="eval loss", color="#d62728", marker="o")
    if best_step is not None:
        axes.axvline(best_step, color="#2ca02c", linestyle="--", label=f"best checkpoint (step {best_step})")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (supervised tokens)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return save_figure_atomic(figure, path)
