"""A worker: claims jobs from the queue and runs each as a child process, heartbeating all along.

- The child is ``python -m expertkit KIND --expert DIR OPTIONS`` in its own process group, its output
  appended to ``$EXPERTKIT_HOME/jobs/<id>.log``; it dies with the worker (killed on exit).
- Exit 0: succeeded (jobs waiting on it are queued; the next step of its pipeline is submitted).
  Exit 1 or 2 (a user error: invalid manifest, bad data, failed gate): failed, never retried. Killed
  by a signal (SIGKILL, the OOM killer) or anything else: retried with backoff while retries last.
- Leases: every worker heartbeats ``worker:<name>``; any worker reaps a running job whose worker has
  not beaten for ``lease_s`` and requeues it; a training job that starts again resumes from its newest
  complete checkpoint (``--resume``), which ends with the same weights as an uninterrupted run.
- Cancel: SIGINT to the child (training checkpoints and exits 130), SIGKILL after ``grace_s``.
  SIGTERM to the worker: the same to its child, the job is requeued, and the worker exits 0.
- One job per expert directory at a time (a lock in the backend): a job whose directory is busy
  waits in the queue.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from expertkit.jobs.idle import DEFAULT_MAX_LOAD, idle_check
from expertkit.jobs.model import Attempt, Job
from expertkit.jobs.outcomes import closed, expert_dir, follow_up, job_log, reap
from expertkit.jobs.store import JobQueue, WorkerInfo
from expertkit.layout import CHECKPOINT_DIR, WEIGHTS_DIR
from expertkit.version import __version__

COMMANDS = {
    "train": ["train"],
    "eval": ["eval"],
    "package": ["package"],
    "prepare": ["data", "prepare"],
    "spar": ["spar"],
    "verify": ["list", "--verify"],  # every installed expert, against the keys trusted now
}
PERMANENT_EXIT_CODES = (1, 2)  # expertkit's user errors: retrying cannot help (75, out of memory, is retried)
WATCH_S = 0.25  # how often a running job's cancel flag is read and the heartbeat considered


@dataclass
class WorkerConfig:
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    device: str = "cpu"
    once: bool = False  # run one job (or none, if the queue is empty) and exit
    poll_s: float = 0.5  # how often an idle worker looks at the queue
    heartbeat_s: float = 2.0
    lease_s: float = 30.0  # a worker silent this long is lost; its job is requeued
    grace_s: float = 30.0  # after SIGINT, how long a cancelled child may take to checkpoint
    backoff_s: float = 5.0  # first retry delay; doubles each attempt
    # What runs a job, before its command and options: a wrapper goes here (nice, a container runtime).
    launcher: list[str] = field(default_factory=lambda: [sys.executable, "-m", "expertkit"])
    concurrency: int = 1  # jobs run side by side (each in its own slot, one child each)
    background: bool = False  # also run background jobs, while nothing else waits and the device idles
    max_load: float = DEFAULT_MAX_LOAD
    idle: Callable[[], bool] | None = None  # is the device idle? (default: NVML or the load average)


def command(job: Job, launcher: list[str]) -> list[str]:
    """The child's command line; a training job that ran before resumes from its newest checkpoint."""
    target = [] if job.kind == "verify" else ["--expert", job.manifest]
    argv = [*launcher, *COMMANDS[job.kind], *target, *job.options]
    checkpoints = list((expert_dir(job) / WEIGHTS_DIR).glob(f"*/{CHECKPOINT_DIR}/checkpoint-*/.ledger.json"))
    if job.kind == "train" and len(job.attempts) > 1 and checkpoints and "--resume" not in job.options:
        argv.append("--resume")
    return argv


class Worker:
    def __init__(
        self, queue: JobQueue, config: WorkerConfig | None = None, say: Callable[[str], None] | None = None
    ) -> None:
        """``say`` receives one line per job started and finished (the CLI prints them)."""
        self.queue, self.config = queue, config or WorkerConfig()
        self.say = say or (lambda line: None)
        self.stopping = False
        self.children: dict[int, subprocess.Popen[bytes]] = {}  # job id → its running child
        self.started = time.time()
        self.last_beat = 0.0
        self.running: dict[int, Job] = {}
        self.yielded: set[int] = set()  # background jobs asked to make way for a foreground one
        self.lock = threading.Lock()
        self.idle = self.config.idle or idle_check(self.config.device, self.config.max_load)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        """Run jobs until SIGTERM/SIGINT (or, with ``once``, one per slot); 0 on a clean stop.
        ``concurrency`` slots each run one job at a time, side by side."""
        main = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            if self.config.concurrency == 1:
                self._slot()
            else:
                slots = [threading.Thread(target=self._slot, daemon=True) for _ in range(self.config.concurrency)]
                for slot in slots:
                    slot.start()
                while any(slot.is_alive() for slot in slots):
                    for slot in slots:
                        slot.join(timeout=0.1)  # the main thread stays free for signals
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.queue.beat(self.info(stopping=True))
        return 0

    def _slot(self) -> None:
        while not self.stopping:
            self.beat(force=True)
            reap(self.queue, self.config.lease_s)
            job = self.queue.claim(self.config.name, self.idle if self.config.background else None)
            if job is not None:
                self.run_job(job)
            if self.config.once:
                return
            if job is None:
                self._sleep(self.config.poll_s)

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        with self.lock:
            children = list(self.children.values())
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGINT)

    def _sleep(self, seconds: float) -> None:
        end = time.time() + seconds
        while not self.stopping and time.time() < end:
            time.sleep(min(0.1, seconds))

    # -- heartbeat ------------------------------------------------------------------------
    def info(self, stopping: bool = False) -> WorkerInfo:
        with self.lock:
            running = sorted(self.running)
        return WorkerInfo(
            name=self.config.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            devices=[self.config.device],
            memory_mib=_memory_mib(),
            version=__version__,
            started_at=self.started,
            heartbeat=time.time(),
            job=running[0] if running else None,
            jobs=running,
            concurrency=self.config.concurrency,
            stopping=stopping,
        )

    def beat(self, force: bool = False) -> None:
        if force or time.time() - self.last_beat >= self.config.heartbeat_s:
            self.queue.beat(self.info())
            self.last_beat = time.time()

    # -- one job --------------------------------------------------------------------------
    def run_job(self, job: Job) -> Job:
        directory = str(expert_dir(job))
        if not Path(job.manifest).exists():
            return self._finish(job, None, "failed", f"worker {self.config.name} cannot see {job.manifest}")
        holder = self.queue.lock(directory, job.id)
        if holder is not None:  # another job writes into this expert directory: wait for it
            self.queue.requeue(job, at=time.time() + self.config.poll_s * 2)
            return job
        try:
            current = self.queue.get(job.id)  # cancelled or moved since it was claimed: leave it be
            if current.token != job.token or current.state != "queued" or current.cancel_requested:
                return current
            attempt = Attempt(number=len(job.attempts) + 1, worker=self.config.name, started_at=time.time())
            job = job.model_copy(update={"state": "running", "attempts": [*job.attempts, attempt]})
            job = job.model_copy(update={"log": str(job_log(job))})
            self.queue.save(job)
            with self.lock:
                self.running[job.id] = job
            self.say(f"job {job.id}: {job.kind} {job.manifest} (attempt {attempt.number}) started")
            code = self._supervise(job)
            settled = self._settle(job, code)
            took = time.time() - attempt.started_at
            outcome = settled.attempts[-1].outcome
            said = settled.state if outcome == settled.state else f"{settled.state} ({outcome})"
            self.say(f"job {job.id}: exit {code} after {took:.0f} s: {said}")
            return settled
        finally:
            with self.lock:
                self.running.pop(job.id, None)
            self.queue.unlock(directory, job.id)

    def _supervise(self, job: Job) -> int:
        """Run the child to its end, heartbeating; interrupt it on cancel."""
        log = job_log(job)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.config.device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = self.config.device.split(":", 1)[1]
        with log.open("ab") as out:
            out.write(f"== job {job.id} attempt {len(job.attempts)} on {self.config.name}\n".encode())
            out.flush()
            child = subprocess.Popen(
                command(job, self.config.launcher),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: signals reach the whole job
                preexec_fn=_die_with_parent,  # a SIGKILLed worker must not leave its job running
            )
            with self.lock:
                self.children[job.id] = child
            if self.stopping:  # a SIGTERM that came while the child started
                os.killpg(child.pid, signal.SIGINT)
            interrupted_at: float | None = None
            while (code := _wait(child, WATCH_S)) is None:
                self.beat()
                if interrupted_at is None and self._should_interrupt(job):
                    os.killpg(child.pid, signal.SIGINT)
                    interrupted_at = time.time()
                if interrupted_at is not None and time.time() - interrupted_at > self.config.grace_s:
                    os.killpg(child.pid, signal.SIGKILL)
            with self.lock:
                self.children.pop(job.id, None)
        return code

    def _should_interrupt(self, job: Job) -> bool:
        """Cancelled, or a background job while a foreground one waits (it stops at its next checkpoint)."""
        if job.level == "background" and self.queue.foreground_waiting():
            self.yielded.add(job.id)
            return True
        return self.queue.get(job.id).cancel_requested

    def _settle(self, job: Job, code: int) -> Job:
        cancelled = self.queue.get(job.id).cancel_requested
        yielded = job.id in self.yielded
        self.yielded.discard(job.id)
        if code == 0:
            return self._finish(job, code, "succeeded")
        if cancelled:
            return self._finish(job, code, "cancelled", "cancelled")
        if yielded:  # made way for foreground work: not a failure, it runs again when the device idles
            return self.queue.requeue(closed(job, code, "yielded"))
        if self.stopping:  # the worker is stopping: a training job checkpointed (exit 130); any job runs again
            return self.queue.requeue(closed(job, code, "interrupted"))  # (click turns SIGINT into exit 1)
        if code in PERMANENT_EXIT_CODES:
            return self._finish(job, code, "failed", f"exit {code}: see {job.log}")
        if len(job.attempts) > job.max_retries:
            return self._finish(job, code, "failed", f"exit {code} after {len(job.attempts)} attempts: see {job.log}")
        delay = self.config.backoff_s * 2 ** (len(job.attempts) - 1)
        return self.queue.requeue(closed(job, code, "retrying"), at=time.time() + delay)

    def _finish(self, job: Job, code: int | None, state: str, error: str | None = None) -> Job:
        job = closed(job, code, state).model_copy(update={"state": state, "error": error})
        self.queue.save(job)
        follow_up(self.queue, job)
        return job


def _wait(child: subprocess.Popen[bytes], seconds: float) -> int | None:
    """The child's exit code as soon as it exits, or ``None`` after ``seconds``."""
    try:
        return child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def _die_with_parent() -> None:
    """In the child, before exec: SIGINT and SIGTERM at their defaults and unblocked, and on Linux,
    SIGKILL it when the worker dies (however it dies). An ignored signal stays ignored through exec,
    and a shell cannot trap it. A worker run off the main thread installs no handlers, so its jobs
    took the process's disposition: in a process started in the background by a script (whose shell
    ignores SIGINT there) a cancel's SIGINT never reached them, and each job ran on until killed."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1  # noqa: N806 (the kernel's name)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _memory_mib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError):
        return None
