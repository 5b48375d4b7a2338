"""What an evaluation run is, as types: the request (options only), the chosen set, and the typed
result of one set. ``run.py`` runs it; ``evaluate.py`` scores the items."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from expertkit.eval.evaluate import DEFAULT_BATCH
from expertkit.eval.sets import EvalItem


@dataclass(frozen=True)
class EvalRequest:
    expert: str
    set_path: Path | None = None
    set_format: str | None = None
    answers: Path | None = None
    split: str | None = None
    baseline: str | None = "base"
    limit: int | None = None
    dtype: str = "auto"
    base_only: bool = False  # the base model under the expert's contract (before any training)
    sample: int | None = None  # a seeded random sample of N items (in set order), instead of the first N
    batch: int = DEFAULT_BATCH  # items decoded together; 1: one at a time
    quantize: str | None = None  # --quantize none|int8|int4; given: results go to <set>.quantize-<q>.json
    decoder: str | None = None  # --decoder lean|onnx|native; given: results go to <set>[.quantize-<q>].decoder-<d>.json


EvalKind = Literal["base_only", "expert", "compared"]


@dataclass(frozen=True)
class EvalResult:
    """One evaluation set's result. ``body`` is exactly what was written to ``written`` (its JSON
    shape is unchanged); the fields are what callers read from it."""

    kind: EvalKind  # the base model alone, the expert alone, or the expert against a baseline
    set: str
    metric: str
    n: int
    score: float  # the expert's (the base model's, for base_only)
    baseline: float | None
    delta: float | None
    gate_failures: list[str]
    written: Path
    body: dict[str, Any]

    @classmethod
    def from_body(cls, kind: EvalKind, body: dict[str, Any], written: Path) -> EvalResult:
        summary = body["baseline_summary"] if kind == "base_only" else body["expert_summary"]
        return cls(
            kind,
            body["set"],
            summary["metric"],
            body["n"],
            summary["score"],
            body.get("baseline") if kind == "compared" else None,
            body.get("delta"),
            list(body.get("gate", {}).get("failures", [])),
            written,
            body,
        )

    def to_json(self, items: bool = True) -> dict[str, Any]:
        """The written JSON plus ``written`` (without the per-item answers unless ``items``)."""
        return {k: v for k, v in self.body.items() if items or k != "items"} | {"written": str(self.written)}


@dataclass(frozen=True)
class EvalSetChoice:
    name: str
    items: list[EvalItem]
