"""Continuous batching: many generations decode together, one token per step.

Sequences wait in arrival order; running ones sit in slots of a shared cache and step together
(one ``[B, hidden]`` matrix product per projection, which on a memory-bound CPU costs little more
than one sequence). Sequences finish independently; a freed slot takes the next waiting sequence.

Two modes, chosen whenever the batch is empty:

* **mixed**: the waiting sequences belong to more than one expert and the oldest one's expert is a
  plain LoRA (:meth:`Engine.mixable`). The batch runs on the shared base decoder; each row adds its
  own expert's low-rank delta, grouped by expert (:mod:`expertkit.runtime.lora_deltas`), so any
  mixable expert's sequence joins at once;
* **merged**: otherwise the oldest sequence's expert is merged into the weights (a little faster per
  step) and only its sequences join. When a mixable sequence of another expert arrives, the running
  batch turns mixed (the same model: the merged weights equal the base plus the deltas, so the
  caches stay); otherwise, when none is left, the next expert's start.

A prompt's start that was prefilled before (the chat template's system prompt, most often) is
copied from a :class:`PrefixCache` instead of computed again, and the rest of the prompt joins the
next batch step as rows beside the decoding ones (:class:`PromptRows`), so a request whose template
start is cached costs the batch a few rows, not a forward pass of its own.

Architectures without the lean decoder run one at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from expertkit.runtime.batch_attention import batch_attention
from expertkit.runtime.delta_kernel import delta_kernel
from expertkit.runtime.engine import Engine
from expertkit.runtime.generate import GenerationRequest, GenerationResult, SequenceState
from expertkit.runtime.llama_decoder import KVCache, LeanDecoder, PromptRows
from expertkit.runtime.lora_deltas import ExpertDeltas, RowGroup
from expertkit.runtime.prefix_cache import PrefixCache

Done = Callable[[GenerationResult | BaseException], None]
# A joining prompt's uncached tokens up to this many ride in the next batch step as rows; a longer
# rest is prefilled on its own first (so one step never grows past this many rows per prompt).
PROMPT_ROWS = 64
# Positions the batch cache holds at first; it doubles (up to ``max_positions``) when a joining
# sequence needs more. Allocated at ``max_positions`` at once, 16 slots of a 2,048-position cache
# are 1.5 GB for this model, zeroed before the first request could start (7 s measured in ``serve``).
FIRST_POSITIONS = 256


@dataclass
class Sequence:
    request: GenerationRequest
    callback: Done
    state: SequenceState | None = None
    length: int = 0
    token: int = 0
    deltas: ExpertDeltas | None = None  # in a mixed batch: the expert's LoRA over the shared weights
    prompt: PromptRows | None = None  # prompt tokens still to feed, beside its first step's row

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
    prefixes: PrefixCache = field(default_factory=PrefixCache)  # prompts' starts already prefilled

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
        elif not self.mixed and self._another_mixable_waits():
            self._mix_running()
        decoder = self.engine.activate(None if self.mixed else self.active)
        if not isinstance(decoder, LeanDecoder):
            self._run_one()
            return
        self._admit(decoder)
        if self.running:
            self._advance(decoder)

    def warm_up(self) -> None:
        """Build what the first batches would wait for (3-6 s per expert of the embedded model, paid
        by a first request before): the batch-step kernels, the batch cache and the decoders. Experts
        that mix get the shared base weights with every expert's deltas, and their merged decoders,
        which a batch of one expert alone runs on (as many as the engine keeps); otherwise the first
        expert merged."""
        batch_attention(), delta_kernel()  # compiled now (once per machine, about 1 s), not in a first step
        names: list[str | None] = list(self.engine.experts) or [None]
        mixed = self.mixing and len(names) > 1 and self.engine.mixable(names[0])
        for name in names[: self.engine.options.cached_decoders - 1] if mixed else []:
            self.engine.activate(name)
        for name in names if mixed else []:
            self.engine.deltas_of(name)
        self._allocate(self.engine.activate(None if mixed else names[0]))  # the most recent: kept last

    def _switch(self, expert: str | None) -> None:
        experts = {s.request.expert for s in self.waiting}
        self.mixed = self.mixing and len(experts) > 1 and self.engine.mixable(expert)
        self.active = expert
        self._allocate(self.engine.activate(None if self.mixed else expert))

    def _allocate(self, decoder: object) -> None:
        """The batch cache, at ``FIRST_POSITIONS``, once a lean decoder first runs (it grows later)."""
        if isinstance(decoder, LeanDecoder) and self.cache is None:
            self.cache = decoder.new_batch_cache(self.max_batch, min(FIRST_POSITIONS, self.max_positions))

    def _another_mixable_waits(self) -> bool:
        """Whether a sequence of another expert waits that could decode beside the running ones."""
        if not self.mixing or not self.engine.mixable(self.active):
            return False
        return any(s.request.expert != self.active and self.engine.mixable(s.request.expert) for s in self.waiting)

    def _mix_running(self) -> None:
        """Turn the running merged batch into a mixed one: its sequences go on with their expert as
        deltas over the shared weights (the same model: their caches stay), so another expert's
        sequences join now instead of waiting for the whole batch to finish."""
        self.mixed = True
        for item in self.running:
            item.deltas = self.engine.deltas_of(item.request.expert)

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
            self._fit(state.capacity)
            item.state = state
            item.deltas = self.engine.deltas_of(item.request.expert) if self.mixed else None
            try:
                item.length, item.prompt = self._prefill(decoder, slot, item)
            except Exception as exc:
                item.done(exc)
                continue
            item.token = int(state.seen[-1])
            self.running.append(item)

    def _fit(self, positions: int) -> None:
        """Grow the batch cache (doubling, at most ``max_positions``) until it holds ``positions``."""
        assert self.cache is not None
        capacity = self.cache.capacity
        if positions <= capacity:
            return
        while capacity < positions:
            capacity *= 2
        self.cache = LeanDecoder.grown_batch_cache(self.cache, min(capacity, self.max_positions))

    def _prefill(self, decoder: LeanDecoder, slot: int, item: Sequence) -> tuple[int, PromptRows | None]:
        """Start ``item``'s prompt in cache slot ``slot``: its longest start already prefilled is copied
        (:class:`PrefixCache`); up to ``PROMPT_ROWS`` tokens after it become rows of the next batch step
        (returned), a longer rest is prefilled here. The prompt's last token is its sequence's row in
        that step, whose logits choose the first token. Returns that row's position and the prompt's
        rows for the step (``None``: nothing left to feed but the last token)."""
        assert self.cache is not None and item.state is not None
        view, prefix = LeanDecoder.slot_view(self.cache, slot), item.request.prefix
        head = torch.from_numpy(item.state.seen[:-1])
        if len(item.state.seen) == 0:
            raise ValueError("the prompt has no tokens")
        reused = self.prefixes.restore(view, *self._owner(decoder, item), head, prefix)
        rest = head[reused:]
        if len(rest) > PROMPT_ROWS or (prefix is not None and not reused):  # a soft prompt goes in here
            decoder.forward(view, rest, None if reused else prefix, item.deltas)
            self.prefixes.store(view, *self._owner(decoder, item), head, prefix)
            return view.length, None
        return view.length + len(rest), PromptRows(slot, view.length, rest) if len(rest) else None

    @staticmethod
    def _owner(decoder: LeanDecoder, item: Sequence) -> tuple[LeanDecoder, ExpertDeltas | None]:
        """Whose weights computed ``item``'s keys and values: the decoder and the deltas it added."""
        return decoder, item.deltas if item.deltas is not None else decoder.deltas

    def _advance(self, decoder: LeanDecoder) -> None:
        assert self.cache is not None
        tokens = torch.tensor([s.token for s in self.running])
        lengths = torch.tensor([s.length for s in self.running])
        prompts = [s.prompt for s in self.running if s.prompt is not None]
        logits = decoder.step_batch(self.cache, tokens, lengths, self._groups(), prompts).numpy()
        self._keep_prompts(decoder)
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

    def _keep_prompts(self, decoder: LeanDecoder) -> None:
        """The prompts that joined in this step, now in their slots, into the prefix cache."""
        assert self.cache is not None
        for item in self.running:
            if item.prompt is not None and item.state is not None:
                view = LeanDecoder.slot_view(self.cache, item.prompt.slot)
                view.length = item.length
                head = torch.from_numpy(item.state.seen[:-1])
                self.prefixes.store(view, *self._owner(decoder, item), head, item.request.prefix)
                item.prompt = None

    def _joins(self, expert: str | None) -> bool:
        """Whether a waiting sequence of ``expert`` may join the running batch."""
        return self.engine.mixable(expert) if self.mixed else expert == self.active

    def _groups(self) -> list[RowGroup]:
        """The running rows of each expert decoding as deltas (rows of the base model need none)."""
        rows: dict[int, tuple[ExpertDeltas, list[int]]] = {}
        extra = len(self.running)  # joining prompts' rows come after one row per sequence, in order
        for row, item in enumerate(self.running):
            if item.deltas is not None:
                rows.setdefault(id(item.deltas), (item.deltas, []))[1].append(row)
        for item in self.running:
            count = 0 if item.prompt is None else len(item.prompt.ids)
            if item.deltas is not None and count:
                rows[id(item.deltas)][1].extend(range(extra, extra + count))
            extra += count
        return [RowGroup(torch.tensor(indices), deltas) for deltas, indices in rows.values()]

    def _compact(self, finished: list[int]) -> None:
        """Drop finished rows, moving the last running sequences into their slots."""
        assert self.cache is not None
        for row in sorted(finished, reverse=True):
            last = len(self.running) - 1
            if row != last:
                LeanDecoder.move_slot(self.cache, last, row, self.running[last].length)
                self.running[row] = self.running[last]
            self.running.pop()
