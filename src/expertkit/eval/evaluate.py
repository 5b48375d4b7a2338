"""``evaluate``: run an expert (or the base model) over evaluation items under its decoding
contract, score each answer with the task's metric, and summarise per bucket; ``compare`` adds the
paired difference against a baseline with a bootstrap interval."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from expertkit.eval.bfcl import check_answer
from expertkit.eval.sets import EvalItem
from expertkit.eval.sql_exec import execution_match
from expertkit.eval.sql_match import cypher_match, sql_match
from expertkit.eval.stats import bootstrap_ci, mean, paired_delta_ci
from expertkit.manifest.sections import DecodingConfig
from expertkit.package.references import ExpertFiles
from expertkit.runtime.answer import Answer, AskOptions, AskPlan, ask, expert_grammar, plan_answer
from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.engine import Engine
from expertkit.runtime.generate import GenerationResult
from expertkit.runtime.grammar import CompiledGrammar, compile_grammar, grammar_for
from expertkit.runtime.settings import DecodingOverrides, resolve_settings

GREEDY = DecodingOverrides(temperature=0.0, seed=0)
DEFAULT_BATCH = 8  # items decoded together (``eval --batch``); 1: one at a time


@dataclass(frozen=True)
class ItemResult:
    id: str
    bucket: str
    correct: bool
    valid: bool | None
    stopped: bool
    latency_s: float
    tokens: int
    text: str
    reason: str


@dataclass
class EvalReport:
    metric: str
    system: str
    items: list[ItemResult] = field(default_factory=list)
    wall_s: float = 0.0  # the whole run, start to finish (items overlap when decoded in batches)

    @property
    def scores(self) -> list[float]:
        return [1.0 if r.correct else 0.0 for r in self.items]

    def summary(self) -> EvalSummary:
        buckets: dict[str, list[float]] = {}
        for result in self.items:
            buckets.setdefault(result.bucket, []).append(1.0 if result.correct else 0.0)
        seconds = sum(r.latency_s for r in self.items)
        tokens = sum(r.tokens for r in self.items)
        low, high = bootstrap_ci(self.scores)
        return EvalSummary(
            metric=self.metric,
            system=self.system,
            n=len(self.items),
            score=round(mean(self.scores), 4),
            ci95=(round(low, 4), round(high, 4)),
            buckets={b: BucketScore(len(v), round(mean(v), 4)) for b, v in sorted(buckets.items())},
            validity=round(mean([1.0 if r.valid else 0.0 for r in self.items]), 4),
            stop_rate=round(mean([1.0 if r.stopped else 0.0 for r in self.items]), 4),
            mean_latency_s=round(seconds / max(len(self.items), 1), 3),
            tokens_per_s=round(tokens / seconds, 1) if seconds else 0.0,
            throughput_tokens_per_s=round(tokens / self.wall_s, 1) if self.wall_s else None,
        )


@dataclass(frozen=True)
class BucketScore:
    n: int
    score: float


@dataclass(frozen=True)
class EvalSummary:
    """One system's score on one set: the mean, its bootstrap 95 % interval, per bucket, and how it decoded."""

    metric: str
    system: str
    n: int
    score: float
    ci95: tuple[float, float]
    buckets: dict[str, BucketScore]
    validity: float  # share of answers that passed the output validator
    stop_rate: float  # share that ended on a stop (not at max_tokens)
    mean_latency_s: float  # each item's own generation time (inside its batch)
    tokens_per_s: float  # per stream
    throughput_tokens_per_s: float | None  # all streams together, wall clock

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci95"] = list(self.ci95)
        return data


@dataclass(frozen=True)
class Comparison:
    """An expert against a baseline on the same items: the paired delta and its 95 % interval."""

    expert: EvalSummary
    baseline: EvalSummary
    ci95: tuple[float, float]

    @property
    def delta(self) -> float:
        return round(self.expert.score - self.baseline.score, 4)

    def to_json(self) -> dict[str, Any]:
        theirs = self.baseline.buckets
        return {
            "metric": self.expert.metric,
            "expert": self.expert.score,
            "baseline": self.baseline.score,
            "delta": self.delta,
            "ci95": list(self.ci95),
            "n": self.expert.n,
            "buckets": {
                bucket: {
                    "expert": value.score,
                    "baseline": theirs[bucket].score if bucket in theirs else None,
                    "n": value.n,
                }
                for bucket, value in self.expert.buckets.items()
            },
            "expert_summary": self.expert.to_json(),
            "baseline_summary": self.baseline.to_json(),
        }


def metric_name(items: list[EvalItem]) -> str:
    task = items[0].task if items else "text"
    if task == "sql":
        return "execution_accuracy" if items[0].database is not None else "exact_match"
    return {"function": "call_accuracy", "cypher": "exact_match"}.get(task, "exact_match")


def score(item: EvalItem, text: str) -> tuple[bool, str]:
    if item.task == "sql" and item.database is not None:
        result = execution_match(item.database, item.alternatives or item.gold, text, dialect=item.dialect)
        return result.correct, result.reason
    if item.task == "sql":
        return (True, "same query") if sql_match(item.gold, text) else (False, "different query")
    if item.task == "function" and item.truth is not None:
        call = check_answer(text, item.truth, item.functions or [])
        return call.correct, call.reason
    if item.task == "cypher":
        return (True, "same query") if cypher_match(item.gold, text) else (False, "different query")
    return (text.strip() == item.gold.strip(), "exact")


def contract_options(files: ExpertFiles) -> AskOptions:
    """The decoding contract of the expert in ``files`` (settings, grammar, validator) as options,
    to run the base model under it: a baseline with the same prompt, grammar and stops."""
    training = files.loaded.manifest.training
    decoding = (training.decoding if training else None) or DecodingConfig()
    settings = resolve_settings(None, decoding)
    manifest = [name for name, source in settings.sources.items() if source == "manifest"]
    overrides = DecodingOverrides(**{name: getattr(settings, name) for name in manifest})  # type: ignore[typeddict-item]
    grammar = grammar_for(decoding, files.root, untrusted=files.packaged)
    return AskOptions(overrides=overrides, grammar=grammar, validation=decoding)


def evaluate(
    engine: Engine,
    expert: str | None,
    items: list[EvalItem],
    contract: ExpertFiles | None = None,
    on_item: Callable[[ItemResult], None] | None = None,
    batch: int = DEFAULT_BATCH,
) -> EvalReport:
    """Greedy and seeded (reproducible). An expert decodes under its own contract; the base model
    (``expert`` None) under ``contract``'s, when given, so the comparison isolates the adapter.

    ``batch`` > 1 decodes up to that many items together (continuous batching, as ``serve`` does):
    on a memory-bound CPU a step for 8 sequences costs little more than a step for one. Results are
    reproducible for the same ``batch``; the batched matrix products round differently from single
    ones, so a bf16 answer can differ in a late token from ``--batch 1``'s (same order, same seeds).
    """
    report = EvalReport(metric_name(items), expert or "base")
    base = contract_options(contract) if expert is None and contract else AskOptions()
    options = replace(base, overrides=DecodingOverrides(**{**(base.overrides or {}), **GREEDY}))
    options = replace(options, compiled_grammar=_compiled_grammar(engine, expert, options))  # once, not per item

    results: list[ItemResult | None] = [None] * len(items)

    def record(index: int, answer: Answer, seconds: float) -> None:
        item = items[index]
        correct, reason = score(item, answer.text)
        result = ItemResult(
            item.id,
            item.bucket,
            correct,
            answer.validation.valid,
            answer.result.stopped,
            seconds,
            answer.result.completion_tokens,
            answer.text,
            reason,
        )
        results[index] = result
        if on_item is not None:
            on_item(result)

    started = time.perf_counter()
    if batch <= 1:
        for index, item in enumerate(items):
            begun = time.perf_counter()
            answer = ask(engine, expert, item.messages, options)
            record(index, answer, time.perf_counter() - begun)
    elif items:
        _answer_batched(engine, [plan_answer(engine, expert, i.messages, options) for i in items], batch, record)
    report.items = [r for r in results if r is not None]  # item order: paired comparisons rely on it
    report.wall_s = time.perf_counter() - started
    return report


def _compiled_grammar(engine: Engine, expert: str | None, options: AskOptions) -> CompiledGrammar | None:
    if options.grammar is not None:
        return compile_grammar(engine.tokenizer, engine.vocab_size, options.grammar)
    return expert_grammar(engine, expert) if options.use_grammar else None


def _answer_batched(
    engine: Engine, plans: list[AskPlan], batch: int, on_answer: Callable[[int, Answer, float], None]
) -> None:
    """Every plan's answer (with its retries) through one :class:`BatchScheduler`, reported as each
    finishes; an item's seconds are its own generation time (admission to finish, over attempts)."""
    room = max(len(p.prompt) + p.settings.max_tokens for p in plans) + engine.prefix_length(plans[0].name)
    scheduler = BatchScheduler(engine, max_batch=batch, max_positions=min(room, engine.context_length))
    seconds = [0.0] * len(plans)
    errors: list[BaseException] = []

    def submit(index: int, attempt: int) -> None:
        def done(outcome: GenerationResult | BaseException) -> None:
            if isinstance(outcome, BaseException):
                errors.append(outcome)
                return
            seconds[index] += outcome.total_s
            answer = plans[index].judge(attempt, outcome)
            if answer is None:
                submit(index, attempt + 1)
            else:
                on_answer(index, answer, seconds[index])

        scheduler.submit(plans[index].request(attempt), done)

    for index in range(len(plans)):
        submit(index, 0)
    while scheduler.busy and not errors:
        scheduler.step()
    if errors:
        raise errors[0]


def compare(expert: EvalReport, baseline: EvalReport) -> Comparison:
    """The expert's summary with the baseline's, the paired delta and its 95 % interval."""
    low, high = paired_delta_ci(expert.scores, baseline.scores)
    return Comparison(expert.summary(), baseline.summary(), (round(low, 4), round(high, 4)))
