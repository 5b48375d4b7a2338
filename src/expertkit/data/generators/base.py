"""What every generator shares: the registry, the config file, value tables, the run and the lineage
sidecar (the same format sparring writes: generator, version, parameters, counts, rejections per check)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertkit.data.conversation import Message
from expertkit.data.mapping import RecordError, check_conversation
from expertkit.errors import DataError
from expertkit.fsutil import write_text_atomic
from expertkit.registry import Registry

VERSION = 1
MAX_CONFIG_BYTES = 4 * 2**20
MAX_TABLE_ROWS = 100_000
SQL_STEPS = 2_000_000  # SQLite VM steps per statement before it is interrupted
ATTEMPTS_PER_EXAMPLE = 8  # tries per wanted example before giving up (checks and duplicates reject some)
MESSAGE_KEYS = ("role", "content", "think", "cite", "context", "train")


@dataclass
class Generated:
    records: list[dict[str, Any]]
    lineage: dict[str, Any]


@dataclass
class Tally:
    generated: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    per_template: dict[int, Counter[str]] = field(default_factory=dict)

    def note(self, template: int, outcome: str) -> None:
        self.per_template.setdefault(template, Counter())[outcome] += 1


Progress = Callable[[int, int], None]  # (tried, kept) so far, before each try


@dataclass
class Answers:
    """A generator's answers to prompts, as conversations: those kept, and why each other one was not
    (an empty answer, a failed check, a duplicate; the caller counts its own reasons too)."""

    generator: str
    records: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)
    tried: int = 0
    progress: Progress | None = None

    def attempt(self) -> None:
        """One more prompt tried (the progress callback hears the counts so far)."""
        if self.progress is not None:
            self.progress(self.tried, len(self.records))
        self.tried += 1

    def add(self, messages: list[Message], answer: str, check: Callable[[Any], str | None] | None = None) -> None:
        """Keep ``messages`` + the assistant's ``answer`` unless it is empty, ``check`` gives a reason
        (it gets the conversation), or it was kept already."""
        try:
            conversation = check_conversation((*messages, Message("assistant", answer.strip())))
        except RecordError:
            self.reasons["empty answer"] += 1
            return
        failed = check(conversation) if check is not None else None
        if failed or conversation.content_hash() in self.seen:
            self.reasons[failed or "duplicate"] += 1
            return
        self.seen.add(conversation.content_hash())
        self.records.append({**conversation.to_json(), "generator": self.generator})

    def generated(self, parameters: dict[str, Any]) -> Generated:
        """The records and their lineage (generator, version, parameters, counts by reason)."""
        counts = {"tried": self.tried, "kept": len(self.records), "rejected": dict(self.reasons.most_common())}
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lineage = {"generator": self.generator, "version": VERSION, "created": created, "parameters": parameters}
        return Generated(self.records, {**lineage, "counts": counts})


Generator = Callable[[dict[str, Any], Path, int, int, Progress | None], Generated]
GENERATORS: Registry[Generator] = Registry()


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: no such generator config", "write one (see README: data generate)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise DataError(f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB", "keep value tables in a database")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}", "fix the generator config") from exc
    if not isinstance(config, dict):
        raise DataError(f"{path}: a generator config is a JSON object", "fix the generator config")
    return config


def run_generator(
    config_path: Path, out: Path, count: int | None = None, seed: int | None = None, progress: Progress | None = None
) -> Generated:
    """Run the config's generator and write ``out`` and its lineage sidecar (temp file, then rename);
    ``progress`` hears (tried, kept) before each try."""
    config = read_config(config_path)
    name = config.get("generator", "templates")
    if name not in GENERATORS:
        raise DataError(f"{config_path}: $.generator: unknown generator {name!r}", f"one of: {', '.join(GENERATORS)}")
    wanted = count if count is not None else int(config.get("count", 100))
    chosen_seed = seed if seed is not None else int(config.get("seed", 0))
    result = GENERATORS[name](config, config_path.parent, wanted, chosen_seed, progress)
    digest = hashlib.sha256(config_path.read_bytes()).hexdigest()
    result.lineage.update(config=str(config_path), config_sha256=digest, out=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.records))
    write_text_atomic(lineage_path(out), json.dumps(result.lineage, indent=2, ensure_ascii=False) + "\n")
    return result


def lineage_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".lineage.json")


def readonly_sqlite(database: Path) -> sqlite3.Connection:
    if not database.is_file():
        raise DataError(f"{database}: no such SQLite database", "fix the path (relative to the generator config)")
    connection = sqlite3.connect(f"file:{database}?mode=ro&immutable=1", uri=True)
    steps = [0]

    def bounded() -> int:
        steps[0] += 1000
        return 1 if steps[0] > SQL_STEPS else 0

    connection.set_progress_handler(bounded, 1000)
    connection.row_factory = sqlite3.Row
    return connection


def load_table(spec: Any, root: Path, where: str) -> list[dict[str, Any]]:
    """A value table: ``{"rows": [...]}`` or ``{"sqlite": PATH, "query": "SELECT ..."}``."""
    if not isinstance(spec, dict):
        raise DataError(f"{where}: a table is an object with rows, or sqlite + query", "fix the generator config")
    if "rows" in spec:
        rows = spec["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{where}.rows: a list of objects", "fix the generator config")
        return rows[:MAX_TABLE_ROWS]
    query = spec.get("query")
    if not isinstance(query, str) or not query.lstrip().lower().startswith("select"):
        raise DataError(f"{where}.query: one SELECT statement", "fix the generator config")
    connection = readonly_sqlite(root / str(spec.get("sqlite", "")))
    try:
        return [dict(row) for row in connection.execute(query).fetchmany(MAX_TABLE_ROWS)]
    except sqlite3.Error as exc:
        raise DataError(f"{where}.query: {exc}", "fix the query") from exc
    finally:
        connection.close()
