"""The lean tokenizer (no transformers import) against transformers' own tokenizer on the same files:
chat templates rendered alike (ChatML and Qwen3's, with a system turn, reasoning and tools), ids,
text and special tokens alike, control tokens added alike; what it cannot do alike, it refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from expertkit.models.lean_tokenizer import LeanTokenizer, lean_tokenizer
from expertkit.models.load import load_tokenizer, transformers_tokenizer
from expertkit.models.resolve import resolve_model

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city <today>",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "How many singers are there?"}],
    [
        {"role": "system", "content": 'Answer in SQL only. Ünïcödé & <html> "quotes"'},
        {"role": "user", "content": "Count them <|im_end|> please"},
        {"role": "assistant", "content": "SELECT count(*) FROM singer", "reasoning_content": "one table"},
        {"role": "user", "content": "And the oldest?", "name": None},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": '{"temp": 21}'},
    ],
]
TEXTS = ["Hello <|im_start|> world 😀 ünï\n\n  spaced", "<|im_end|><|endoftext|>", ""]


@pytest.fixture(params=["llama", "qwen3"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(f"tiny_{request.param}_dir"))


def both(model_dir: Path) -> tuple[LeanTokenizer, Any]:
    lean = lean_tokenizer(model_dir)
    assert lean is not None
    return lean, load_tokenizer(resolve_model(str(model_dir)))


def test_chat_templates_render_as_transformers_renders_them(model_dir: Path) -> None:
    lean, hf = both(model_dir)
    for messages in CONVERSATIONS:
        for generation in (True, False):
            for tools in (None, TOOLS):
                want = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)
                got = lean.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)
                assert got == want, (messages, generation, tools)
        assert lean.apply_chat_template(messages, add_generation_prompt=True) == hf.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    with pytest.raises(ValueError, match="empty conversation"):
        lean.apply_chat_template([])


def test_ids_text_and_special_tokens_are_transformers_own(model_dir: Path) -> None:
    lean, hf = both(model_dir)
    for text in TEXTS:
        for special in (True, False):
            assert (
                lean(text, add_special_tokens=special)["input_ids"] == hf(text, add_special_tokens=special)["input_ids"]
            )
        ids = [hf.bos_token_id, *hf(text, add_special_tokens=False)["input_ids"], hf.eos_token_id]
        for skip in (True, False):
            assert lean.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
        assert lean.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert lean.convert_ids_to_tokens(3) == hf.convert_ids_to_tokens(3)
    assert (lean.eos_token_id, lean.pad_token_id, lean.bos_token_id) == (
        hf.eos_token_id,
        hf.pad_token_id,
        hf.bos_token_id,
    )
    assert lean.all_special_ids == hf.all_special_ids and len(lean) == len(hf)
    assert lean.get_added_vocab() == hf.get_added_vocab() and lean.special_tokens_map == hf.special_tokens_map
    # an expert's control tokens: the same new ids, encoded whole, hidden like other special tokens
    control = {"additional_special_tokens": ["<sql>", "</sql>"]}
    assert lean.add_special_tokens(control, replace_extra_special_tokens=False) == hf.add_special_tokens(
        control, replace_extra_special_tokens=False
    )
    text = "<sql>SELECT 1</sql>"
    assert lean(text, add_special_tokens=False)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
    assert lean.get_added_vocab() == hf.get_added_vocab() and len(lean) == len(hf)
    assert sorted(lean.all_special_ids) == sorted(hf.all_special_ids)
    again = transformers_tokenizer(lean)  # transformers' own for the same files and control tokens
    assert again.get_added_vocab() == hf.get_added_vocab() and transformers_tokenizer(hf) is hf


def test_what_transformers_would_change_on_load_goes_to_transformers(tiny_llama_dir: Path, tmp_path: Path) -> None:
    def variant(name: str, change: dict[str, Any] | None = None, template: str | None = None) -> Path:
        directory = Path(shutil.copytree(tiny_llama_dir, tmp_path / name))
        config = json.loads((directory / "tokenizer_config.json").read_text())
        (directory / "tokenizer_config.json").write_text(json.dumps(config | (change or {})))
        if template is not None:
            (directory / "chat_template.jinja").write_text(template)
        return directory

    assert lean_tokenizer(variant("plain")) is not None
    assert lean_tokenizer(variant("other-class", {"tokenizer_class": "LlamaTokenizer"})) is None
    assert lean_tokenizer(variant("missing-special", {"eos_token": "<|not-in-vocab|>"})) is None
    assert lean_tokenizer(variant("split", {"split_special_tokens": True})) is None
    tracked = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    assert lean_tokenizer(variant("generation-tag", template=tracked)) is None
    assert lean_tokenizer(variant("bos-flag", {"add_bos_token": False})) is None  # transformers rewrites BOS/EOS


def test_a_template_cannot_reach_python_internals(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import jinja2

    directory = Path(shutil.copytree(tiny_llama_dir, tmp_path / "hostile"))
    for template in (
        "{{ messages.__class__.__mro__ }}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ raise_exception('no') }}",
    ):
        (directory / "chat_template.jinja").write_text(template)
        lean = lean_tokenizer(directory)
        assert lean is not None
        with pytest.raises(jinja2.exceptions.TemplateError):
            lean.apply_chat_template([{"role": "user", "content": "hi"}])


def test_answering_with_the_fast_start_never_imports_transformers(
    trained_source: Path, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from expertkit.models.fingerprint import fingerprint

    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    fingerprint(tiny_llama_dir)  # a cached model: its fingerprint was computed when it was first used
    script = f"""
import sys
from expertkit.runtime.engine import Engine
from expertkit.runtime.settings import resolve_settings
engine = Engine.for_experts([{str(trained_source)!r}])
ids = engine.prompt_ids([{{"role": "user", "content": "How many singers?"}}])
engine.run("expert-tiny", ids, resolve_settings({{"temperature": 0.0, "max_tokens": 4}}, None))
print(type(engine.tokenizer).__name__, sorted(m for m in ("transformers", "peft") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "LeanTokenizer []"
