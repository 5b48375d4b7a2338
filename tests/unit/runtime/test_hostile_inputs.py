"""The runtime under hostile manifests and outputs: catastrophic routing regexes, a compile cache
that clients fill, one request's failure inside a batch, validators that raise, and control tokens
that would leak between experts."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from expertkit.errors import UsageError
from expertkit.manifest.sections import DecodingConfig, Routing
from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.output_checks import VALIDATORS, ValidationContext, validate_output
from expertkit.runtime.routing import Router
from expertkit.runtime.settings import resolve_settings
from expertkit.runtime.stops import StopMatcher


@pytest.mark.timeout(30)
def test_a_catastrophic_routing_pattern_is_bounded_in_time() -> None:
    router = Router({"evil": Routing(patterns=["^(a|a)+$"]), "sql": Routing(patterns=[r"\bSELECT\b"])})
    started = time.monotonic()
    decision = router.route("a" * 40 + "b")
    assert time.monotonic() - started < 1.0
    assert decision.expert is None
    assert decision.to_json()["scores"]["evil"]["timed_out"] == ["^(a|a)+$"]
    assert router.route("SELECT 1").expert == "sql"  # ordinary patterns still route


def test_the_compile_cache_is_bounded_by_count_and_bytes() -> None:
    from expertkit.runtime.grammar import CompileCache

    cache = CompileCache(max_entries=3, max_bytes=100)
    for i in range(5):
        cache.put(("tok", str(i)), f"grammar {i}", 10)
    assert len(cache) == 3 and cache.get(("tok", "0")) is None and cache.get(("tok", "4")) == "grammar 4"
    cache.get(("tok", "2"))  # recently used: kept
    cache.put(("tok", "big"), "big", 85)
    assert cache.get(("tok", "2")) == "grammar 2" and cache.get(("tok", "3")) is None
    assert cache.bytes <= 100


def test_a_validator_that_raises_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str, ctx: ValidationContext):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setitem(VALIDATORS, "json", broken)
    result = validate_output("{}", True, ValidationContext(DecodingConfig(validation="json")))
    assert result.valid is None and "RecursionError" in (result.error or "")
    deep = "[" * 5000 + "]" * 5000
    monkeypatch.undo()
    assert validate_output(deep, True, ValidationContext(DecodingConfig(validation="json"))).valid is False


def test_one_failing_request_does_not_fail_its_batch(trained_source: Path) -> None:
    engine = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    settings = resolve_settings({"temperature": 0.0, "max_tokens": 6}, None)
    scheduler = BatchScheduler(engine, max_batch=4, max_positions=256)
    results: dict[str, object] = {}

    def victim(result: object) -> None:
        results["victim"] = result

    def hostile(result: object) -> None:
        if not isinstance(result, BaseException):
            raise RuntimeError("the hostile request's own judgement failed")
        results["hostile"] = result

    for callback in (victim, hostile):
        prompt = engine.prompt_ids([{"role": "user", "content": "Count the singers."}])
        scheduler.submit(engine.request("expert-tiny", prompt, settings), callback)
    while scheduler.busy:
        scheduler.step()
    assert not isinstance(results["victim"], BaseException)
    assert isinstance(results["hostile"], RuntimeError)


def test_added_tokens_are_never_stripped_from_text(tiny_llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    hidden = frozenset(tokenizer.all_special_ids)
    tokenizer.add_special_tokens({"additional_special_tokens": ["SELECT", "FROM"]}, replace_extra_special_tokens=False)
    matcher = StopMatcher(tokenizer, (), hidden)
    for token in tokenizer("SELECT name FROM users", add_special_tokens=False)["input_ids"]:
        matcher.push(token)
    assert "SELECT" in matcher.full_text() and "FROM" in matcher.full_text()
    matcher.push(tokenizer.eos_token_id)
    assert tokenizer.eos_token not in matcher.full_text()  # the base model's own specials stay hidden


def test_experts_with_different_control_tokens_are_not_loaded_together(trained_source: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(trained_source, tmp_path / "expert-tokens"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["name"] = "expert-tokens"
    manifest["training"]["dataset"]["special_tokens"] = ["SELECT", "FROM"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="different control tokens"):
        Engine.for_experts([str(trained_source), str(other)], LoadOptions(dtype="float32"))
