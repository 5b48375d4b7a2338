"""Trainer callbacks: a rich progress bar, Ctrl-C → checkpoint and stop, eval+save on the last step."""

from __future__ import annotations

import signal
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

PLAIN_LINES = 10  # progress lines per run when the output is not a terminal (a pipe, a log file, CI)
PLAIN_EVAL_LINES = 4  # progress lines per evaluation pass (at 1/4, 2/4, 3/4), then one with the loss
PLAIN_EVAL_QUIET_S = 5.0  # an evaluation shorter than this shows only its loss line


class RichProgressCallback(TrainerCallback):
    """Step, loss, eval loss, learning rate, tokens/s and ETA on one line (main process only). When the
    console is not a terminal, a live bar would only appear at the end: plain lines are printed instead,
    about :data:`PLAIN_LINES` per run."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.fields = {"loss": "-", "eval": "-", "lr": "-", "tps": "-"}
        self.plain = False
        self.started = 0.0
        self.first_step = 0
        self.eval_task: Any = None
        self.eval_started: float | None = None
        self.eval_done = 0

    def _plain_line(self, state: Any) -> None:
        done = state.global_step - self.first_step
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
        f = self.fields
        self.console.print(
            f"train step {state.global_step}/{state.max_steps} · loss {f['loss']} · eval {f['eval']} · lr {f['lr']} "
            f"· {f['tps']} tok/s · {elapsed:.0f} s elapsed · ETA {eta:.0f} s",
            highlight=False,
            soft_wrap=True,
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.started, self.first_step = time.monotonic(), state.global_step
        if not self.console.is_terminal:
            self.plain = True
            self.console.print(f"train: {state.max_steps} steps", highlight=False, soft_wrap=True)
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} · eval {task.fields[eval]} · lr {task.fields[lr]}"),
            TextColumn("· {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        fields: dict[str, Any] = dict(self.fields)
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, **fields)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
        if self.plain:
            every = max(1, state.max_steps // PLAIN_LINES)
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                self._plain_line(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if (self.progress is None and not self.plain) or not logs:
            return
        if "loss" in logs:
            self.fields["loss"] = f"{logs['loss']:.4f}"
        if "eval_loss" in logs:
            self.fields["eval"] = f"{logs['eval_loss']:.4f}"
        if "learning_rate" in logs:
            self.fields["lr"] = f"{logs['learning_rate']:.2e}"
        if "tokens_per_s" in logs:
            self.fields["tps"] = f"{logs['tokens_per_s']:.0f}"
        fields: dict[str, Any] = dict(self.fields)
        if self.progress is not None:
            self.progress.update(self.task, **fields)

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """One evaluation batch done: the eval pass over a large split can take minutes on a CPU."""
        if self.progress is None and not self.plain:
            return
        loader = kwargs.get("eval_dataloader")
        total = len(loader) if loader is not None and hasattr(loader, "__len__") else None
        if self.eval_started is None:
            self.eval_started, self.eval_done = time.monotonic(), 0
            if self.progress is not None:
                fields: dict[str, Any] = dict(self.fields)
                self.eval_task = self.progress.add_task("eval", total=total, **fields)
        self.eval_done += 1
        if self.progress is not None:
            self.progress.update(self.eval_task, completed=self.eval_done)
        elif total and self.eval_done in {max(1, total * k // PLAIN_EVAL_LINES) for k in range(1, PLAIN_EVAL_LINES)}:
            elapsed = time.monotonic() - self.eval_started
            if elapsed < PLAIN_EVAL_QUIET_S:
                return
            self.console.print(
                f"eval at step {state.global_step}: batch {self.eval_done}/{total} · {elapsed:.0f} s elapsed · "
                f"ETA {elapsed / self.eval_done * (total - self.eval_done):.0f} s",
                highlight=False,
                soft_wrap=True,
            )

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        if self.eval_started is None:
            return
        elapsed = time.monotonic() - self.eval_started
        if self.progress is not None and self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
        elif self.plain and metrics and "eval_loss" in metrics:
            self.console.print(
                f"eval at step {state.global_step}: loss {metrics['eval_loss']:.4f} ({elapsed:.0f} s)",
                highlight=False,
                soft_wrap=True,
            )
        self.eval_task, self.eval_started = None, None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class FinalStepCallback(TrainerCallback):
    """Evaluate and checkpoint on the last step, so the final state is always a selectable checkpoint."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True


class InterruptCallback(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint, stop. Second Ctrl-C: abort now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
