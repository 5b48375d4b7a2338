"""Trainer callbacks: a rich progress bar, Ctrl-C → checkpoint and stop, eval+save on the last step."""

from __future__ import annotations

import signal
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

PLAIN_LINES = 10  # progress lines per run when the output is not a terminal (a pipe, a log file, CI)


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

    def _plain_line(self, state: Any) -> None:
        done = state.global_step - self.first_step
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
        f = self.fields
        self.console.print(
            f"train step {state.global_step}/{state.max_steps} · loss {f['loss']} · eval {f['eval']} · lr {f['lr']} "
            f"· {f['tps']} tok/s · {elapsed:.0f} s elapsed · ETA {eta:.0f} s",
            highlight=False,
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.started, self.first_step = time.monotonic(), state.global_step
        if not self.console.is_terminal:
            self.plain = True
            self.console.print(f"train: {state.max_steps} steps", highlight=False)
            return
        self.progress = Progress(
            TextColumn("[bold]train[/]"),
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
