"""``events.jsonl``: a training run's steps, evaluations (with the selection decision), eval-split
samples and its end, line by line; a fresh run starts the file again and ``--resume`` appends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expertkit.events import EVENTS_FILE, RunEvents, read_events
from expertkit.runs import DATA_META, list_records
from expertkit.train.events import eval_examples
from unit.train.helpers import train_tiny, write_tiny_expert


def test_a_run_writes_its_events(tmp_path: Path, tiny_llama_dir: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config={"logging_steps": 1, "eval_steps": 3})
    result, _ = train_tiny(expert, eval_samples=2)
    events = read_events(result.weights_dir / EVENTS_FILE)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["status"] == "finished"
    assert events[0]["total_steps"] == 6 and events[0]["from_step"] == 0 and events[0]["samples"] == 2
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(e["loss"] > 0 and e["tokens_seen"] > 0 and e["peak_rss_mib"] > 0 for e in steps)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6]
    assert all(e["selection"]["step"] == e["step"] and e["selection"]["reason"] for e in evals)
    samples = [e for e in events if e["event"] == "samples"]
    assert [e["step"] for e in samples] == [3, 6]
    for sample in samples[-1]["samples"]:
        assert "plus" in sample["prompt"] and sample["gold"].startswith("SELECT ") and isinstance(sample["output"], str)
    assert kinds.index("eval") < kinds.index("samples")  # the samples follow their evaluation
    # the run's record in the home: run.json, and copies of its events, meta and data lineage
    (record,) = list_records()
    assert (
        record.run_id == events[0]["run_id"]
        and record.expert == "expert-tiny"
        and record.weights_dir == result.weights_dir
    )
    assert (record.directory / EVENTS_FILE).read_bytes() == (result.weights_dir / EVENTS_FILE).read_bytes()
    assert (record.directory / "training_meta.json").is_file() and (record.directory / DATA_META).is_file()


def test_resume_appends_and_a_fresh_run_starts_again(tmp_path: Path, tiny_llama_dir: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config={"eval_steps": 2, "max_steps": 4})
    first, _ = train_tiny(expert, max_steps=2, eval_samples=0)
    path = first.weights_dir / EVENTS_FILE
    assert [e["event"] for e in read_events(path)].count("start") == 1
    train_tiny(expert, resume=True, eval_samples=0)
    events = read_events(path)
    starts = [e for e in events if e["event"] == "start"]
    assert starts[0]["run_id"] == starts[1]["run_id"] and len(list_records()) == 1  # a resumed run continues its record
    assert len(starts) == 2 and starts[1]["resumed_from"].startswith("checkpoint-2-") and starts[1]["from_step"] == 2
    assert [e["step"] for e in events if e["event"] == "step"] == [2, 4]  # logging_steps 2
    assert "samples" not in {e["event"] for e in events}  # --eval-samples 0
    train_tiny(expert, max_steps=2, eval_samples=0)  # fresh: the file starts again
    assert [e["event"] for e in read_events(path)].count("start") == 1
    assert len(list_records()) == 2  # and a new record: the first run's copies stay


def test_a_torn_last_line_is_left_out_and_examples_split_at_the_first_supervised_token(tmp_path: Path) -> None:
    events = RunEvents(tmp_path / EVENTS_FILE, fresh=True)
    events.write("step", step=1, loss=2.0)
    events.close()
    with (tmp_path / EVENTS_FILE).open("a", encoding="utf-8") as file:
        file.write('{"event": "st')  # a writer killed mid-line
    assert [e["step"] for e in read_events(tmp_path / EVENTS_FILE)] == [1]
    rows = [{"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [-100, -100, 3, 4, -100, -100, 7], "seq_lens": [5, 2]}]
    assert eval_examples(rows, 5) == [([1, 2], [3, 4]), ([6], [7])]


def test_a_reader_polling_a_file_reads_on_and_notices_a_file_started_again(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    events = RunEvents(path, fresh=True)
    events.write("start", run="a")
    events.write("step", step=1)
    assert [e["event"] for e in read_events(path)] == ["start", "step"]
    with path.open("a", encoding="utf-8") as file:
        file.write('{"event": "step", "st')  # half a line: left out until it is whole
    assert len(read_events(path)) == 2
    with path.open("a", encoding="utf-8") as file:
        file.write('ep": 2}\n{"event": "step", "step": 3}\n')
    assert [e.get("step") for e in read_events(path)] == [None, 1, 2, 3]
    events.close()
    again = RunEvents(path, fresh=True)  # the same inode, truncated and written again, longer than before
    again.write("start", run="b-" + "x" * 300)
    for step in range(5):
        again.write("step", step=step)
    again.close()
    found = read_events(path)
    assert found[0]["run"].startswith("b-") and [e["step"] for e in found[1:]] == [0, 1, 2, 3, 4]
    path.unlink()
    assert read_events(path) == []
