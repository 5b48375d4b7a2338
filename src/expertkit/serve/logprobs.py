"""Log-probabilities in OpenAI's two shapes (chat: per-token objects; completions: parallel lists).

The values come from the decode loop (:class:`expertkit.runtime.generate.TokenLogprob`): each token's
log-probability under the distribution it was actually chosen from, i.e. **after** the grammar mask
and the sampling settings (repetition penalty, temperature, top-k, top-p). A token the grammar
forbids has probability 0 there, so the alternatives reported are ones the server could have
produced; under greedy decoding the chosen token is always the top alternative.

A token's text is its exact bytes (byte-level BPE and SentencePiece byte tokens are mapped back),
decoded as UTF-8 with replacement: a token holding half of a multi-byte character shows as U+FFFD,
and ``bytes`` carries what it really is.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from expertkit.runtime.generate import TokenLogprob
from expertkit.serve.responses import ChatLogprobs, TextLogprobs, TokenLogprobBody, TopLogprob


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted (what byte-level BPE token strings are written in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


class TokenTexts:
    """Each token id's bytes and text for one tokenizer, computed once per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._seen: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self._seen:
            raw = self._bytes(token)
            self._seen[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self._seen[token]

    def _bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if not isinstance(piece, str):
            return b""
        table = _byte_decoder()
        if all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # SentencePiece byte fallback
            return bytes([int(piece[3:5], 16)])
        return str(self.tokenizer.decode([token])).encode("utf-8")


def _top(texts: TokenTexts, token: int, logprob: float) -> TopLogprob:
    text, raw = texts(token)
    return TopLogprob(token=text, logprob=logprob, bytes=raw)


def chat_logprobs(texts: TokenTexts, entries: list[TokenLogprob]) -> ChatLogprobs:
    content = []
    for entry in entries:
        chosen = _top(texts, entry.token, entry.logprob)
        alternatives = [_top(texts, token, value) for token, value in entry.top]
        content.append(TokenLogprobBody(**chosen.model_dump(), top_logprobs=alternatives))
    return ChatLogprobs(content=content)


def text_logprobs(texts: TokenTexts, entries: list[TokenLogprob], offset: int = 0) -> TextLogprobs:
    """The completions shape; ``offset`` is where the first token starts in the whole text."""
    tokens, values, tops, offsets = [], [], [], []
    for entry in entries:
        text, _ = texts(entry.token)
        tokens.append(text)
        values.append(entry.logprob)
        tops.append({texts(token)[0]: value for token, value in entry.top})
        offsets.append(offset)
        offset += len(text)
    return TextLogprobs(tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets)
