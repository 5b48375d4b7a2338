"""Run events as JSON lines: one object per line, appended and flushed as each happens, so a reader
tailing the file (``jobs logs --follow``, the dashboard) sees every event as soon as it is written and
a killed run leaves every line it finished. Training (``train/events.py``) and evaluation write them.
"""

from __future__ import annotations

import json
import time
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


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events written so far (a line still being written, or a torn last line, is left out)."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


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
