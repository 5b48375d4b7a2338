"""Each adapter type trains (only its parameters change), saves, reloads and reproduces its logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from expertkit.train.objective import causal_lm_of

from .helpers import train_tiny, write_tiny_expert

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {
    "lora": {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "dora": {"type": "dora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "ia3": {"type": "ia3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    "lokr": {"type": "lokr", "r": 4, "alpha": 8, "target_modules": ALL_LINEAR},
}


def base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def probe_ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(3, 27).reshape(2, 12)
    return ids, torch.arange(12).repeat(2, 1)


def reload_adapter(model_dir: Path, adapter_dir: Path) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_adapter_trains_saves_and_reloads(kind: str, tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = write_tiny_expert(tmp_path / "expert", [tiny_llama_dir], ADAPTERS[kind])
    result, job = train_tiny(expert)
    model = job.trainable.objective.model.eval()

    adapter_dir = result.weights_dir / "adapter"
    assert sorted(p.name for p in adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == {"lora": "LORA", "dora": "LORA", "ia3": "IA3", "lokr": "LOKR"}[kind]
    assert config.get("use_dora", False) is (kind == "dora")

    # Trainable parameters moved away from their initial values; frozen base weights did not.
    trained = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert trained and any(t.abs().sum() > 0 for t in trained.values())
    base_before = base_weights(tiny_llama_dir)
    base_after = {k.replace("base_model.model.", ""): v for k, v in causal_lm_of(model).state_dict().items()}
    unchanged = [k for k in base_before if k in base_after and torch.equal(base_before[k], base_after[k].float())]
    assert len(unchanged) == len([k for k in base_before if k in base_after]) > 0

    reloaded = reload_adapter(tiny_llama_dir, adapter_dir)
    ids, positions = probe_ids()
    with torch.no_grad():
        expected = model(input_ids=ids, position_ids=positions).logits
        got = reloaded(input_ids=ids, position_ids=positions).logits
        plain = reloaded.get_base_model()
        with reloaded.disable_adapter():
            base_logits = plain(input_ids=ids, position_ids=positions).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, base_logits, atol=1e-4), "the adapter must change the model's output"


def test_trainable_parameters_change_frozen_do_not(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from expertkit.train.job import TrainRequest
    from expertkit.train.run import train_expert

    expert = write_tiny_expert(tmp_path / "expert", [tiny_llama_dir])
    captured = {}

    def snapshot(job, trainer) -> None:
        captured["job"] = job
        captured["before"] = {n: p.detach().clone() for n, p in job.trainable.objective.named_parameters()}

    train_expert(TrainRequest(expert, progress=False), on_start=snapshot)
    after = dict(captured["job"].trainable.objective.named_parameters())
    before = captured["before"]
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(not torch.equal(before[n], after[n].detach()) for n in trainable if "lora_B" in n)
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert frozen and all(torch.equal(before[n], after[n].detach()) for n in frozen)
