"""The XGrammar backend: GBNF / JSON / JSON Schema compiled once per tokenizer, masks on CPU.

XGrammar precomputes which tokens each grammar state allows, so a mask costs microseconds per
token on a CPU; it is installed without its triton dependency (CUDA kernels we do not need).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from expertkit.models.load import transformers_tokenizer
from expertkit.runtime.grammar.cache import CompileCache, tokenizer_key
from expertkit.runtime.grammar.errors import GrammarError
from expertkit.runtime.grammar.spec import GrammarSpec, compile_error


class XGrammarMask:
    """One generation's matcher: masks logits, advances on the chosen token."""

    def __init__(self, compiled: Any) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        import torch  # XGrammar's bitmask is a torch tensor; this backend imports torch anyway

        self.matcher.fill_next_token_bitmask(self.bitmask)
        masked = torch.from_numpy(np.array(logits, dtype=np.float32))[None]
        self._xgr.apply_token_bitmask_inplace(masked, self.bitmask)
        return masked[0].numpy()

    def allows(self, token: int) -> bool:
        if self.matcher.is_terminated() or not self.matcher.accept_token(token):
            return False
        self.matcher.rollback(1)
        return True

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise GrammarError(f"token {token} was sampled outside the grammar", "report this as a bug")

    def finished(self) -> bool:
        return bool(self.matcher.is_terminated())


class XGrammarCompiled:
    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled

    def matcher(self) -> XGrammarMask:
        return XGrammarMask(self.compiled)

    def accepts(self, text: str) -> bool:
        """Whether the grammar accepts ``text`` as a complete output (used to check grammars and outputs)."""
        import xgrammar as xgr

        matcher = xgr.GrammarMatcher(self.compiled, terminate_without_stop_token=True)
        return bool(matcher.accept_string(text)) and bool(matcher.is_completed() or matcher.is_terminated())


class XGrammarBackend:
    """Compiles per tokenizer; XGrammar's compiler caches grammars it has seen."""

    def __init__(self) -> None:
        self._compilers: dict[str, Any] = {}
        self._compiled = CompileCache()
        self._lock = threading.Lock()

    def _compiler(self, tokenizer: Any, vocab_size: int) -> Any:
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise GrammarError("xgrammar is not installed", "run: make venv (it installs xgrammar)") from exc
        key = tokenizer_key(tokenizer, vocab_size)
        with self._lock:
            if key not in self._compilers:
                info = xgr.TokenizerInfo.from_huggingface(transformers_tokenizer(tokenizer), vocab_size=vocab_size)
                # Our CompileCache bounds what is kept; XGrammar's own cache would grow with every schema.
                self._compilers[key] = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            return self._compilers[key]

    def compile(self, tokenizer: Any, vocab_size: int, spec: GrammarSpec) -> XGrammarCompiled:
        key = (tokenizer_key(tokenizer, vocab_size), spec.key)
        cached = self._compiled.get(key)
        if cached is not None:
            return cached
        compiler = self._compiler(tokenizer, vocab_size)
        try:
            if spec.kind == "json":
                compiled = compiler.compile_builtin_json_grammar()
            elif spec.kind == "json_schema":
                compiled = compiler.compile_json_schema(spec.text)
            else:
                compiled = compiler.compile_grammar(spec.text)
        except (RuntimeError, ValueError) as exc:
            raise compile_error(spec, exc) from exc
        result = XGrammarCompiled(compiled)
        self._compiled.put(key, result, int(getattr(compiled, "memory_size_bytes", 0)) or len(spec.text) + 1)
        return result
