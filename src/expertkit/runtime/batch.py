"""Continuous batching: many generations decode together, one token per step.

Sequences wait in arrival order; running ones sit in slots of a shared cache and step together
(one ``[B, hidden]`` matrix product per projection, which on a memory-bound CPU costs little more
than one sequence). Sequences finish independently; a freed slot takes the next waiting sequence.

Two modes, chosen whenever the batch is empty:

* **mixed**: the waiting sequences belong to more than one expert and the oldest one's expert is a
  plain LoRA (:meth:`Engine.mixable`). The batch runs on the shared base decoder; each row adds its
  own expert's low-rank delta, grouped by expert (:mod:`expertkit.runtime.lora_deltas`), so any
  mixable expert's sequence joins at once;
* **merged**: otherwise the oldest sequence's expert is merged into the weights and only its
  sequences join; when none is left, the next expert's start.

Architectures without the lean decoder run one at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from expertkit.runtime.engine import Engine
from expertkit.runtime.generate import GenerationRequest, GenerationResult, SequenceState
from expertkit.runtime.llama_decoder import KVCache, LeanDecoder
from expertkit.runtime.lora_deltas import ExpertDeltas, RowGroup

Done = Callable[[GenerationResult | BaseException], None]


@dataclass
class Sequence:
    request: GenerationRequest
    callback: Done
    state: SequenceState | None = None
    length: int = 0
    token: int = 0
    deltas: ExpertDeltas | None = None  # in a mixed batch: the expert's LoRA over the shared weights

    def done(self, outcome: GenerationResult | BaseException) -> None:
        """Deliver ``outcome``; a callback that raises fails this sequence's caller alone, never the batch."""
        try:
            self.callback(outcome)
        except Exception as exc:
            if not isinstance(outcome, BaseException):
                with contextlib.suppress(Exception):
                    self.callback(exc)


@dataclass
class BatchScheduler:
    engine: Engine
    max_batch: int = 8
    max_positions: int = 2048
    waiting: list[Sequence] = field(default_factory=list)
    running: list[Sequence] = field(default_factory=list)
    active: str | None = None
    mixed: bool = False  # the running batch decodes on the shared base weights, experts as deltas
    mixing: bool = True  # allow mixed batches (False: one expert per batch, merged)
    cache: KVCache | None = None

    def submit(self, request: GenerationRequest, done: Done) -> None:
        self.waiting.append(Sequence(request, done))

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> None:
        """Admit what fits, then advance every running sequence by one token."""
        if not self.running:
            if not self.waiting:
                return
            self._switch(self.waiting[0].request.expert)
        decoder = self.engine.activate(None if self.mixed else self.active)
        if not isinstance(decoder, LeanDecoder):
            self._run_one()
            return
        self._admit(decoder)
        if self.running:
            self._advance(decoder)

    def _switch(self, expert: str | None) -> None:
        experts = {s.request.expert for s in self.waiting}
        self.mixed = self.mixing and len(experts) > 1 and self.engine.mixable(expert)
        self.active = expert
        decoder = self.engine.activate(None if self.mixed else expert)
        if isinstance(decoder, LeanDecoder) and self.cache is None:
            self.cache = decoder.new_batch_cache(self.max_batch, self.max_positions)

    def _run_one(self) -> None:
        item = self.waiting.pop(0)
        try:
            item.done(self.engine.execute(item.request))
        except Exception as exc:  # delivered to the caller
            item.done(exc)

    def _admit(self, decoder: LeanDecoder) -> None:
        assert self.cache is not None
        for item in [s for s in self.waiting if self._joins(s.request.expert)]:
            if len(self.running) >= self.max_batch:
                return
            self.waiting.remove(item)
            slot = len(self.running)
            state = SequenceState(self.engine.tokenizer, item.request)
            if state.capacity > self.max_positions:
                item.done(ValueError(f"needs {state.capacity} positions; the batch cache holds {self.max_positions}"))
                continue
            item.state = state
            item.deltas = self.engine.deltas_of(item.request.expert) if self.mixed else None
            try:
                view = LeanDecoder.slot_view(self.cache, slot)
                logits = decoder.forward(view, state.seen, item.request.prefix, item.deltas)
                token = state.advance(logits)
            except Exception as exc:
                item.done(exc)
                continue
            item.length = len(state.seen) + (0 if item.request.prefix is None else int(item.request.prefix.shape[0]))
            item.length -= 0 if token is None else 1  # advance() appended the new token to seen
            if token is None:
                item.done(state.result())
                continue
            item.token = token
            self.running.append(item)

    def _advance(self, decoder: LeanDecoder) -> None:
        assert self.cache is not None
        tokens = torch.tensor([s.token for s in self.running])
        lengths = torch.tensor([s.length for s in self.running])
        logits = decoder.step_batch(self.cache, tokens, lengths, self._groups())
        finished: list[int] = []
        for row, item in enumerate(self.running):
            assert item.state is not None
            item.length += 1
            try:
                token = item.state.advance(logits[row])
            except Exception as exc:
                item.done(exc)
                finished.append(row)
                continue
            if token is None:
                item.done(item.state.result())
                finished.append(row)
            else:
                item.token = token
        self._compact(finished)

    def _joins(self, expert: str | None) -> bool:
        """Whether a waiting sequence of ``expert`` may join the running batch."""
        return self.engine.mixable(expert) if self.mixed else expert == self.active

    def _groups(self) -> list[RowGroup]:
        """The running rows of each expert decoding as deltas (rows of the base model need none)."""
        rows: dict[int, tuple[ExpertDeltas, list[int]]] = {}
        for row, item in enumerate(self.running):
            if item.deltas is not None:
                rows.setdefault(id(item.deltas), (item.deltas, []))[1].append(row)
        return [RowGroup(torch.tensor(indices), deltas) for deltas, indices in rows.values()]

    def _compact(self, finished: list[int]) -> None:
        """Drop finished rows, moving the last running sequences into their slots."""
        assert self.cache is not None
        for row in sorted(finished, reverse=True):
            last = len(self.running) - 1
            if row != last:
                LeanDecoder.move_slot(self.cache, last, row)
                self.running[row] = self.running[last]
            self.running.pop()
