"""Grammar overhead: greedy decoding on the embedded model with and without the SQL grammar.

The same prompt (a Spider-style schema and question), 128 tokens at most, bf16 where the CPU has
it; the per-token decode time with the grammar (mask fill + apply + advancing the matcher) is
compared with the time without it, alternating runs and taking the median of each. The mask cost is
also timed on its own. Last line: {"overhead": …, "mask_us_per_token": …} (overhead as a fraction).
"""

from __future__ import annotations

import json
import statistics
import time

import torch

PROMPT = (
    "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);\n"
    "CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, concert_name TEXT, year INTEGER);\n"
    "CREATE TABLE singer_in_concert (concert_id INTEGER, singer_id INTEGER);\n\n"
    "Question: List the names and ages of singers from France who sang in a concert after 2014, oldest first."
)
RUNS = 9


class TimedMask:
    """Wraps a grammar's token mask and accumulates the time spent checking, masking and advancing."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        masked = self.inner.mask(logits)
        self.seconds += time.perf_counter() - start
        return masked

    def allows(self, token: int) -> bool:
        start = time.perf_counter()
        allowed = self.inner.allows(token)
        self.seconds += time.perf_counter() - start
        return allowed

    def accept(self, token: int) -> None:
        start = time.perf_counter()
        self.inner.accept(token)
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def finished(self) -> bool:
        return self.inner.finished()


def main() -> None:
    from rich.console import Console

    from expertkit.grammars import grammar_text
    from expertkit.models import pull_model
    from expertkit.models.hardware import best_dtype
    from expertkit.runtime.engine import Engine
    from expertkit.runtime.generate import GenerationRequest, generate
    from expertkit.runtime.grammar import GrammarSpec, compile_grammar
    from expertkit.runtime.options import LoadOptions
    from expertkit.runtime.settings import resolve_settings

    console = Console(stderr=True)
    pull_model("SmolLM2-135M-Instruct")
    dtype = best_dtype()
    engine = Engine.for_experts([], LoadOptions(base="SmolLM2-135M-Instruct", dtype=dtype))  # type: ignore[arg-type]
    grammar = compile_grammar(
        engine.tokenizer, engine.vocab_size, GrammarSpec("lark", grammar_text("sql", "lark"), "sql")
    )
    decoder = engine.activate(None)
    system = "You translate questions into one SQLite query for the given schema."
    prompt = engine.prompt_ids([{"role": "system", "content": system}, {"role": "user", "content": PROMPT}])
    settings = resolve_settings({"temperature": 0.0, "max_tokens": 128}, None)
    plain, constrained, masks = [], [], []
    generate(decoder, engine.tokenizer, GenerationRequest(prompt, resolve_settings({"max_tokens": 4}, None), set()))
    for _ in range(RUNS):
        result = generate(decoder, engine.tokenizer, GenerationRequest(prompt, settings, set()))
        plain.append((result.total_s - result.first_token_s) / max(result.completion_tokens - 1, 1))
        timed = TimedMask(grammar.matcher())
        result = generate(decoder, engine.tokenizer, GenerationRequest(prompt, settings, set(), grammar=timed))
        constrained.append((result.total_s - result.first_token_s) / max(result.completion_tokens - 1, 1))
        masks.append(timed.seconds / max(timed.calls, 1))
        text = result.text
    base, with_grammar, mask = statistics.median(plain), statistics.median(constrained), statistics.median(masks)
    overhead = (with_grammar - base) / base
    console.print(f"dtype {dtype}; constrained output: {text[:120]!r}")
    console.print(f"per token: {base * 1000:.2f} ms without the grammar, {with_grammar * 1000:.2f} ms with it")
    console.print(f"mask + advance: {mask * 1e6:.0f} µs per token; overhead {overhead:.1%}")
    print(json.dumps({"overhead": round(overhead, 4), "mask_us_per_token": round(mask * 1e6, 1), "dtype": dtype}))


if __name__ == "__main__":
    main()
