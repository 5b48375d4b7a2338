"""Which expert answers a prompt: explicit rules first, then similarity to each expert's examples.

1. Patterns (``routing.patterns``, regular expressions): an expert whose pattern matches wins;
   among several, the one with more matches, then the higher ``priority``.
2. Similarity: the prompt's sentence embedding against each expert's ``routing.examples``; an
   expert's score is its best example's cosine similarity plus a small bonus per matched keyword
   (``routing.keywords``, whole words, any case). The best score must reach the expert's
   ``routing.threshold`` (else :data:`DEFAULT_THRESHOLD`), otherwise the base model answers alone.
3. Without an embedder (or examples), keywords alone decide: most matches, then priority.

Patterns come from manifests, which may come from untrusted packages, and Python's ``re`` has no
time limit (``^(a|a)+$`` on 26 characters runs for seconds). They are compiled and matched with the
``regex`` package, whose ``timeout=`` bounds each search and which releases the GIL while matching;
a pattern that times out counts as not matching and is named in the decision. Servers call
:meth:`Router.route` on a helper thread, never on the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import regex

from expertkit.errors import ModelLoadError, UsageError
from expertkit.manifest.sections import Routing
from expertkit.models.embedder import Embedder, hidden_state_embedder, minilm_embedder
from expertkit.models.load import transformers_tokenizer
from expertkit.registry import Registry
from expertkit.runtime.engine import Engine

DEFAULT_THRESHOLD = 0.35
PATTERN_TIMEOUT_S = 0.05  # per pattern and prompt; a well-formed routing pattern needs microseconds
KEYWORD_BONUS, MAX_KEYWORD_BONUS = 0.04, 0.12


@dataclass
class RouteScore:
    patterns: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)  # patterns that ran past PATTERN_TIMEOUT_S
    similarity: float | None = None
    score: float = 0.0


@dataclass
class RoutingDecision:
    expert: str | None
    reason: str
    scores: dict[str, RouteScore]

    def to_json(self) -> dict[str, Any]:
        return {
            "expert": self.expert,
            "reason": self.reason,
            "scores": {
                name: {
                    "score": round(s.score, 4),
                    "similarity": None if s.similarity is None else round(s.similarity, 4),
                    "patterns": s.patterns,
                    "keywords": s.keywords,
                    **({"timed_out": s.timed_out} if s.timed_out else {}),
                }
                for name, s in self.scores.items()
            },
        }


class Router:
    def __init__(self, experts: dict[str, Routing], embed: Embedder | None = None) -> None:
        self.experts, self.embed = experts, embed
        self._patterns = {name: [regex.compile(p) for p in r.patterns] for name, r in experts.items()}
        self._keywords = {
            name: [(k, re.compile(rf"(?<!\w){re.escape(k)}(?!\w)", re.IGNORECASE)) for k in r.keywords]
            for name, r in experts.items()
        }
        self._examples: dict[str, Any] = {}
        if embed is not None:
            self._examples = {name: embed(list(r.examples)) for name, r in experts.items() if r.examples}

    def _rule_scores(self, prompt: str) -> dict[str, RouteScore]:
        scores = {}
        for name in self.experts:
            score = RouteScore(keywords=[k for k, rx in self._keywords[name] if rx.search(prompt)])
            for pattern in self._patterns[name]:
                try:
                    if pattern.search(prompt, timeout=PATTERN_TIMEOUT_S, concurrent=True):
                        score.patterns.append(pattern.pattern)
                except TimeoutError:
                    score.timed_out.append(pattern.pattern)
            scores[name] = score
        return scores

    def _priority(self, name: str) -> int:
        return self.experts[name].priority

    def route(self, prompt: str) -> RoutingDecision:
        scores = self._rule_scores(prompt)
        by_pattern = [n for n, s in scores.items() if s.patterns]
        if by_pattern:
            best = max(by_pattern, key=lambda n: (len(scores[n].patterns), self._priority(n)))
            return RoutingDecision(best, f"pattern {scores[best].patterns[0]!r}", scores)
        if self._examples and self.embed is not None:
            return self._by_similarity(prompt, scores)
        by_keyword = [n for n, s in scores.items() if s.keywords]
        if by_keyword:
            best = max(by_keyword, key=lambda n: (len(scores[n].keywords), self._priority(n)))
            return RoutingDecision(best, f"keywords {scores[best].keywords}", scores)
        return RoutingDecision(None, "no rule matched and no examples to compare with: base model", scores)

    def _by_similarity(self, prompt: str, scores: dict[str, RouteScore]) -> RoutingDecision:
        query = self.embed([prompt])[0] if self.embed is not None else None
        for name, score in scores.items():
            examples = self._examples.get(name)
            similarity = float((examples @ query).max()) if examples is not None else 0.0
            score.similarity = similarity
            score.score = similarity + min(KEYWORD_BONUS * len(score.keywords), MAX_KEYWORD_BONUS)
        best = max(scores, key=lambda n: (scores[n].score, self._priority(n)))
        configured = self.experts[best].threshold
        threshold = configured if configured is not None else DEFAULT_THRESHOLD
        if scores[best].score < threshold:
            return RoutingDecision(None, f"best score {scores[best].score:.3f} < threshold {threshold}", scores)
        return RoutingDecision(best, f"similarity {scores[best].score:.3f} ≥ {threshold}", scores)


EmbedderFactory = Callable[[Engine], Embedder | None]
EMBEDDERS: Registry[EmbedderFactory] = Registry()


@EMBEDDERS.register("minilm")
def _minilm(engine: Engine) -> Embedder | None:
    return minilm_embedder()


@EMBEDDERS.register("base")
def _base_model(engine: Engine) -> Embedder | None:
    model = engine.model.get_base_model() if engine.experts else engine.model
    return hidden_state_embedder(model, transformers_tokenizer(engine.tokenizer))  # batches, pads: transformers


@EMBEDDERS.register("none")
def _no_embedder(engine: Engine) -> Embedder | None:
    return None


def build_router(engine: Engine, embedder: str = "minilm", notes: list[str] | None = None) -> Router:
    """A router over the engine's experts; MiniLM falls back to the base model's hidden states."""
    if embedder not in EMBEDDERS:
        raise UsageError(f"unknown router embedder {embedder!r}", f"choose one of: {', '.join(EMBEDDERS)}")
    try:
        embed = EMBEDDERS[embedder](engine)
    except ModelLoadError as exc:
        if notes is not None:
            notes.append(f"router: {exc.message}; using the base model's hidden states instead")
        embed = EMBEDDERS["base"](engine)
    routing = {name: e.files.loaded.manifest.routing or Routing() for name, e in engine.experts.items()}
    return Router(routing, embed)
