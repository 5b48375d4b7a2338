"""The llguidance backend: Lark grammars (and GBNF, converted) through a lexer + Earley parser.

The shipped SQL and Cypher grammars are written for it (``grammars/*.lark``): keywords are
case-insensitive lexemes and whitespace is ignored between lexemes, so a token mask costs about
0.2 ms on this CPU where the equivalent GBNF took XGrammar tens of milliseconds per token (its
precomputed masks do not help when identifiers, keywords and whitespace overlap at every step).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from expertkit.runtime.grammar.bitmask import apply_bitmask
from expertkit.runtime.grammar.cache import CompileCache, tokenizer_key
from expertkit.runtime.grammar.errors import GrammarError
from expertkit.runtime.grammar.spec import GrammarSpec


class LLGuidanceMask:
    def __init__(self, tokenizer: Any, grammar: str, vocab_size: int) -> None:
        import llguidance

        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        words = (vocab_size + 31) // 32
        self.bitmask = np.zeros((1, words), dtype=np.int32)
        self.vocab_size = vocab_size

    def mask(self, logits: np.ndarray) -> np.ndarray:
        from llguidance.numpy import fill_next_token_bitmask  # numpy only (llguidance.torch compiles at import)

        fill_next_token_bitmask(self.matcher, self.bitmask)
        row = self.bitmask[0]
        return apply_bitmask(logits, row)

    def allows(self, token: int) -> bool:
        return bool(self.matcher.validate_tokens([token]) == 1)

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(f"token {token} was sampled outside the grammar: {self.matcher.get_error()}")

    def finished(self) -> bool:
        return bool(self.matcher.is_stopped())


class LLGuidanceCompiled:
    def __init__(self, tokenizer: Any, grammar: str, vocab_size: int, hf_tokenizer: Any) -> None:
        self.tokenizer, self.grammar, self.vocab_size, self.hf_tokenizer = tokenizer, grammar, vocab_size, hf_tokenizer

    def matcher(self) -> LLGuidanceMask:
        return LLGuidanceMask(self.tokenizer, self.grammar, self.vocab_size)

    def accepts(self, text: str) -> bool:
        import llguidance

        matcher = llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0)
        ids = self.hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        return bool(matcher.consume_tokens(ids)) and bool(matcher.is_accepting())


class LLGuidanceBackend:
    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}
        self._compiled = CompileCache()

    def _tokenizer(self, tokenizer: Any, vocab_size: int) -> Any:
        """llguidance's tokenizer over the Rust tokenizer's JSON, as ``llguidance.hf.from_tokenizer``
        builds it, without importing that module (it imports transformers: a cold start's 0.6 s)."""
        try:
            import llguidance
        except ImportError as exc:
            raise GrammarError("llguidance is not installed", "run: make venv") from exc
        key = tokenizer_key(tokenizer, vocab_size)
        if key not in self._tokenizers:
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is None:
                raise GrammarError("Lark grammars need a fast (Rust) tokenizer", "use a model with tokenizer.json")
            backend = copy.copy(backend)
            backend.no_padding()
            backend.no_truncation()
            self._tokenizers[key] = llguidance.LLTokenizer(
                backend.to_str(), n_vocab=vocab_size, eos_token=tokenizer.eos_token_id
            )
        return self._tokenizers[key]

    def compile(self, tokenizer: Any, vocab_size: int, spec: GrammarSpec) -> LLGuidanceCompiled:
        key = (tokenizer_key(tokenizer, vocab_size), spec.key)
        cached = self._compiled.get(key)
        if cached is not None:
            return cached
        import llguidance

        formats = {"lark": "lark", "gbnf": "gbnf", "json": "json_schema", "json_schema": "json_schema"}
        text = spec.text if spec.kind != "json" else "{}"
        try:
            grammar = llguidance.grammar_from(formats[spec.kind], text)
        except ValueError as exc:
            raise GrammarError(f"{spec.source}: {exc}", "fix the grammar") from exc
        ll_tokenizer = self._tokenizer(tokenizer, vocab_size)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, ll_tokenizer)
        if is_error:  # messages read "at LINE(COLUMN): what", with the line quoted
            detail = messages[0].strip() if messages else "invalid grammar"
            raise GrammarError(f"{spec.source}: {detail}", "fix the grammar (Lark syntax as llguidance reads it)")
        result = LLGuidanceCompiled(ll_tokenizer, grammar, vocab_size, tokenizer)
        self._compiled.put(key, result, 64 * len(spec.text) + 4096)  # the text and a rough share of its tables
        return result
