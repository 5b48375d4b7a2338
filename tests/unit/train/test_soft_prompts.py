"""Soft prompts: slots before every packed example, isolation kept, safetensors round trip."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from expertkit.data.render import IGNORE_INDEX
from expertkit.manifest.sections import SoftPrompt
from expertkit.train.collator import PackedCollator, insert_virtual_slots
from expertkit.train.objective import SupervisedCausalLM
from expertkit.train.soft_prompts import build_soft_prompts, load_soft_prompts, save_soft_prompts

from .helpers import train_tiny, write_tiny_expert

PROMPTS = [
    SoftPrompt(name="format", num_virtual_tokens=3, init="TEXT", init_text="Answer with SQL."),
    SoftPrompt(name="extra", num_virtual_tokens=2, init="RANDOM"),
]


def test_slots_go_before_each_packed_example() -> None:
    row = {
        "input_ids": [10, 11, 12, 20, 21],
        "labels": [IGNORE_INDEX, 11, 12, IGNORE_INDEX, 21],
        "weights": [0.0, 1.0, 1.0, 0.0, 1.0],
        "position_ids": [0, 1, 2, 0, 1],
        "seq_lens": [3, 2],
    }
    out = insert_virtual_slots(row, 2, pad_token_id=0)
    assert out["input_ids"] == [0, 0, 10, 11, 12, 0, 0, 20, 21]
    assert out["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert out["virtual_index"] == [0, 1, -1, -1, -1, 0, 1, -1, -1]
    assert out["labels"][:2] == [IGNORE_INDEX] * 2 and out["weights"][5:7] == [0.0, 0.0]
    batch = PackedCollator(pad_token_id=0, virtual_tokens=2)([row])
    assert batch["real_tokens"] == 5 and batch["virtual_index"].shape == batch["input_ids"].shape


def test_packed_examples_with_soft_prompts_stay_isolated(tiny_llama_dir: Path) -> None:
    """Example b's loss in a packed row equals its loss alone: the prompt and positions restart."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    bank = build_soft_prompts(PROMPTS, model.get_input_embeddings(), tokenizer, seed=0)
    objective = SupervisedCausalLM(model, bank, PROMPTS).eval()
    a = {"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, 6, 7, 8], "weights": [0.0, 1, 1, 1]}
    b = {"input_ids": [9, 10, 11], "labels": [IGNORE_INDEX, 10, 11], "weights": [0.0, 1, 1]}

    def row(parts: list[dict]) -> dict:
        joined: dict = {k: [x for p in parts for x in p[k]] for k in ("input_ids", "labels", "weights")}
        joined["position_ids"] = [i for p in parts for i in range(len(p["input_ids"]))]
        joined["seq_lens"] = [len(p["input_ids"]) for p in parts]
        return joined

    collate = PackedCollator(pad_token_id=0, virtual_tokens=5)
    with torch.no_grad():
        packed = objective(**{k: v for k, v in collate([row([a, b])]).items() if k != "real_tokens"})
        alone_a = objective(**{k: v for k, v in collate([row([a])]).items() if k != "real_tokens"})
        alone_b = objective(**{k: v for k, v in collate([row([b])]).items() if k != "real_tokens"})
    torch.testing.assert_close(packed["ce"], alone_a["ce"] + alone_b["ce"], rtol=1e-5, atol=1e-5)


def test_text_init_copies_token_embeddings_and_files_round_trip(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    bank = build_soft_prompts(PROMPTS, model.get_input_embeddings(), tokenizer, seed=0)
    first_id = tokenizer("Answer with SQL.", add_special_tokens=False)["input_ids"][0]
    torch.testing.assert_close(bank["format"][0], model.get_input_embeddings().weight[first_id])
    written = save_soft_prompts(bank, PROMPTS, tmp_path / "soft_prompts")
    assert [p.name for p in written] == ["format.safetensors", "extra.safetensors"]
    with safe_open(str(written[0]), "pt") as handle:
        assert handle.metadata()["num_virtual_tokens"] == "3"
    loaded = load_soft_prompts(PROMPTS, tmp_path / "soft_prompts")
    for prompt in PROMPTS:
        torch.testing.assert_close(loaded[prompt.name], bank[prompt.name].detach())


def test_training_with_soft_prompts_writes_safetensors_only(tmp_path: Path, tiny_llama_dir: Path) -> None:
    prompts = [p.model_dump(exclude_none=True) for p in PROMPTS]
    expert = write_tiny_expert(tmp_path / "expert", [tiny_llama_dir], soft_prompts=prompts)
    result, job = train_tiny(expert)
    files = sorted(p.name for p in (result.weights_dir / "soft_prompts").iterdir())
    assert files == ["extra.safetensors", "format.safetensors"]
    trained = load_soft_prompts(PROMPTS, result.weights_dir / "soft_prompts")
    initial = build_soft_prompts(PROMPTS, job.trainable.objective.model.get_input_embeddings(), job.tokenizer, 42)
    assert not torch.allclose(trained["format"], initial["format"].detach()), "soft prompts must be trained"
    written = [p for p in result.weights_dir.rglob("*") if p.is_file()]
    assert not [p for p in written if p.suffix in {".pt", ".bin", ".pkl"} and "checkpoints" not in p.parts]
    assert json.loads((result.weights_dir / "training_meta.json").read_text())["manifest"]["soft_prompts"]
