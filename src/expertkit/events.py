"""Run events as JSON lines: one object per line, appended and flushed as each happens, so a reader
tailing the file (``jobs logs --follow``, the dashboard) sees every event as soon as it is written and
a killed run leaves every line it finished. Training (``train/events.py``) and evaluation write them.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

EVENTS_FILE = "events.jsonl"


class RunEvents:
    """An append-only JSON-lines file; each line is written whole and flushed."""

    def __init__(self, path: Path, fresh: bool, writer: bool = True) -> None:
        """``fresh`` starts the file again (else appends); ``writer`` false: a non-main rank, writes nothing."""
        self.path = path
        self._file: TextIO | None = None
        if writer:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w" if fresh else "a", encoding="utf-8")

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        line = json.dumps({"event": kind, "time": round(time.time(), 3), **fields}, ensure_ascii=False, default=str)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class _Tail:
    """What was parsed of one file so far: ``offset`` is where its next unread line starts."""

    inode: int
    head: bytes  # the file's first bytes: a file started again (same inode, truncated) starts otherwise
    offset: int
    events: list[dict[str, Any]]


_PARSED: dict[Path, _Tail] = {}
_PARSED_MAX = 32
_HEAD_BYTES = 256  # files remembered (the dashboard re-reads running jobs' events every second)
_LOCK = threading.Lock()


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events written so far (a line still being written, or a torn last line, is left out).

    A file read before is read on from where it ended (training and evaluation only append lines, or
    start the file again: another inode, a shorter file or other first bytes), so a reader polling a
    10,000-step run parses each line once.
    """
    try:
        stat = path.stat()
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
            with _LOCK:
                tail = _PARSED.get(path)
                if (
                    tail is None
                    or (tail.inode, tail.head) != (stat.st_ino, head[: len(tail.head)])
                    or (stat.st_size < tail.offset)
                ):
                    tail = _Tail(stat.st_ino, head, 0, [])
                if stat.st_size > tail.offset:
                    handle.seek(tail.offset)
                    chunk = handle.read(stat.st_size - tail.offset)
                    complete = chunk[: chunk.rfind(b"\n") + 1]
                    tail.offset += len(complete)
                    tail.events.extend(_parse(complete))
                    tail.head = head if len(head) > len(tail.head) else tail.head
                if len(_PARSED) >= _PARSED_MAX and path not in _PARSED:
                    _PARSED.pop(next(iter(_PARSED)))
                _PARSED[path] = tail
                return list(tail.events)
    except OSError:
        return []


def _parse(block: bytes) -> list[dict[str, Any]]:
    found = []
    for line in block.decode("utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def eta_seconds(events: list[dict[str, Any]], now: float) -> float | None:
    """Seconds left for the current run, from its pace since its last ``start`` (``None`` before two points)."""
    starts = [e for e in events if e.get("event") == "start"]
    if not starts:
        return None
    start = starts[-1]
    steps = [e for e in events[events.index(start) :] if e.get("event") == "step"]
    total, first = start.get("total_steps"), start.get("from_step", 0)
    if not steps or not isinstance(total, int) or not isinstance(first, int):
        return None
    done = steps[-1]["step"] - first
    if done <= 0:
        return None
    elapsed = max(now, steps[-1]["time"]) - float(start["time"])
    return max(total - steps[-1]["step"], 0) * elapsed / done
