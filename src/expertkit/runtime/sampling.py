"""Next-token choice: greedy at temperature 0; otherwise temperature, top-k, top-p (nucleus).

Written with numpy, not torch: a decode step's choice is a few vector operations over one row of
logits, and the ONNX Runtime decoder's one-shot path answers without importing torch at all (its
import alone costs about 1.5 s of a cold start on a 2-core CPU). Logits arrive as fp32 numpy arrays
or CPU torch tensors, read through ``np.asarray`` without a copy.

Seeded runs reproduce exactly: sampling draws from a private ``numpy.random.Generator``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from expertkit.runtime.settings import DecodingSettings

NEG_INF = np.float32("-inf")


def as_logits(logits: Any) -> np.ndarray:
    """``logits`` (a numpy array or a CPU torch tensor) as a 1-D fp32 numpy array, shared if possible."""
    return np.asarray(logits, dtype=np.float32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities of fp32 ``logits`` (``-inf`` entries stay ``-inf``), computed in fp64."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return (shifted - np.log(np.exp(shifted).sum())).astype(np.float32)


class Sampler:
    def __init__(self, settings: DecodingSettings) -> None:
        self.settings = settings
        self.generator = np.random.default_rng(settings.seed)  # None: fresh OS entropy

    def penalise(self, logits: np.ndarray, seen: np.ndarray | None) -> np.ndarray:
        """CTRL-style repetition penalty on tokens already in the context (as transformers does)."""
        penalty = self.settings.repetition_penalty
        if penalty == 1.0 or seen is None or len(seen) == 0:
            return logits
        seen = np.asarray(seen, dtype=np.int64)
        picked = logits[seen]
        logits = logits.copy()
        logits[seen] = np.where(picked < 0, picked * penalty, picked / penalty)
        return logits

    def processed(self, logits: Any, seen: np.ndarray | None = None) -> np.ndarray:
        """The logits :meth:`choose` decides on: after the repetition penalty and, when sampling,
        temperature, top-k and top-p (tokens cut off are ``-inf``)."""
        scores = self.penalise(as_logits(logits), seen)
        s = self.settings
        if s.temperature == 0:
            return scores
        scores = scores / np.float32(s.temperature)
        if s.top_k and s.top_k < scores.size:
            kth = np.partition(scores, scores.size - s.top_k)[scores.size - s.top_k]
            scores = np.where(scores < kth, NEG_INF, scores)
        if s.top_p < 1.0:
            scores = _nucleus(scores, s.top_p)
        return scores

    def choose(self, logits: Any, seen: np.ndarray | None = None) -> int:
        """The next token id from 1-D ``logits`` (already masked by a grammar when there is one)."""
        return self.pick(self.processed(logits, seen))

    def pick(self, processed: np.ndarray) -> int:
        """Greedy argmax, or a draw from the softmax of already processed logits."""
        if self.settings.temperature == 0:
            return int(np.argmax(processed))
        cumulative = np.cumsum(np.exp(log_softmax(processed).astype(np.float64)))
        drawn = int(np.searchsorted(cumulative, self.generator.random() * cumulative[-1], side="right"))
        return min(drawn, int(np.flatnonzero(np.isfinite(processed))[-1]))  # rounding never picks a cut token


def _nucleus(scores: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the likeliest tokens whose probabilities sum to ``top_p`` (the one that crosses it included)."""
    order = np.argsort(-scores, kind="stable")
    probs = np.exp(log_softmax(scores[order]).astype(np.float64))
    drop = np.cumsum(probs) - probs >= top_p
    kept = scores.copy()
    kept[order[drop]] = NEG_INF
    return kept
