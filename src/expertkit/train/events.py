"""``events.jsonl``: a training run as it happens, one JSON object per line, for whoever watches it
(``jobs show``, ``jobs logs``, the dashboard) without scraping a terminal.

Beside the run's ledgers (``weights/<model>/events.jsonl``), appended and flushed line by line, so a
reader tailing the file sees each event as soon as it is written and a killed run leaves every line it
finished. A fresh run starts the file again; ``--resume`` appends to it. Event kinds:

- ``start``: total steps, the step it starts from, the resumed checkpoint, the data hash;
- ``step``: every logged step: loss, learning rate, tokens/s, tokens seen, peak memory;
- ``eval``: eval loss and the checkpoint-selection decision (kept as best or not, and why);
- ``samples``: a few greedy generations from the eval split at each evaluation: prompt, output, gold;
- ``end``: how the run ended (``finished``, ``stopped_early`` by the selection guards, ``interrupted``
  by Ctrl-C or SIGINT, checkpointed) and the step. A run that crashed or was killed has no ``end``.

Only the main process writes (in a DDP run the other ranks see the same numbers).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from transformers import TrainerCallback

from expertkit.events import RunEvents

SAMPLE_MAX_TOKENS = 64  # per sample generation: enough to compare with the gold, cheap beside the evaluation
SAMPLE_SLACK_TOKENS = 8  # beyond the gold's length, to show an answer that runs on
Sampler = Callable[[], list[dict[str, str]]]


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class EventsCallback(TrainerCallback):
    """Writes the run's events; ``sampler`` generates the eval-split samples at each evaluation."""

    def __init__(self, events: RunEvents, selector: Any, sampler: Sampler | None, start: dict[str, Any]) -> None:
        self.events, self.selector, self.sampler, self.start = events, selector, sampler, start

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.events.write("start", total_steps=state.max_steps, from_step=state.global_step, **self.start)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self.events.write(
                "step",
                step=state.global_step,
                epoch=round(state.epoch or 0.0, 4),
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                tokens_per_s=logs.get("tokens_per_s"),
                tokens_seen=logs.get("tokens_seen"),
                peak_rss_mib=_peak_rss_mib(),
            )
        if "eval_loss" in logs:
            last = self.selector.history[-1] if self.selector.history else None
            decision = asdict(last) if last is not None and last.step == state.global_step else None
            self.events.write("eval", step=state.global_step, eval_loss=logs["eval_loss"], selection=decision)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.sampler is None:
            return
        self.events.write("samples", step=state.global_step, samples=self.sampler())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            if state.global_step >= state.max_steps:
                status = "finished"
            elif self.selector.should_stop:
                status = "stopped_early"  # the selection guards' patience ran out
            else:
                status = "interrupted"  # Ctrl-C / SIGINT: checkpointed, resumable with --resume
            self.events.write("end", step=state.global_step, status=status)
        self.events.close()


def eval_examples(rows: Any, count: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, gold ids) of the first ``count`` examples of the packed eval rows: the prompt is
    everything before the example's first supervised token, the gold the supervised run after it."""
    from expertkit.data.render import IGNORE_INDEX

    found: list[tuple[list[int], list[int]]] = []
    for row in rows:
        start = 0
        for length in row["seq_lens"]:
            ids, labels = row["input_ids"][start : start + length], row["labels"][start : start + length]
            start += length
            first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
            if first is None or first == 0:
                continue
            end = next((i for i in range(first, length) if labels[i] == IGNORE_INDEX), length)
            found.append((list(ids[:first]), list(ids[first:end])))
            if len(found) >= count:
                return found
    return found


def greedy_sampler(model_of: Callable[[], Any], tokenizer: Any, examples: list[tuple[list[int], list[int]]]) -> Sampler:
    """Greedy generations for ``examples`` with the model being trained (put back in training mode after)."""

    def sample() -> list[dict[str, str]]:
        import torch

        model = model_of()
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        samples = []
        try:
            with torch.no_grad():
                for prompt, gold in examples:
                    ids = torch.tensor([prompt], device=device)
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=min(len(gold) + SAMPLE_SLACK_TOKENS, SAMPLE_MAX_TOKENS),
                        do_sample=False,
                        pad_token_id=pad,
                    )
                    samples.append(
                        {
                            "prompt": tokenizer.decode(prompt),
                            "output": tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True),
                            "gold": tokenizer.decode(gold, skip_special_tokens=True),
                        }
                    )
        finally:
            model.train(was_training)
        return samples

    return sample
