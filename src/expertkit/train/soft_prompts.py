"""Soft prompts: trainable virtual-token embeddings, saved as safetensors (never pickles).

Written here rather than with PEFT's ``PromptTuningConfig`` for two reasons. PEFT cannot put
prompt tuning and LoRA/DoRA/IA³/LoKr in one ``PeftModel``, and the seed experts use both. And
PEFT's prompt-tuning forward drops ``position_ids``, which silently breaks packed-sequence
isolation (every packed example would see the ones before it). Here the virtual tokens are
inserted before *each* packed example by the collator, and each example with its prompt is one
position run ``0..V+L-1``: exactly what a single unpacked request sees at serving time, with
isolation kept by the position ids. Initialisation follows PEFT's ``PromptEmbedding``: TEXT
repeats or trims the text's token embeddings to ``num_virtual_tokens``; RANDOM samples rows of the
vocabulary's embeddings (PEFT's SAMPLE_VOCAB), which keeps the scale of real embeddings.

Several named prompts are concatenated in manifest order and each is saved to its own file,
``soft_prompts/<name>.safetensors``, with its name, size and init in the safetensors metadata.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertkit.errors import ModelLoadError
from expertkit.manifest.sections import SoftPrompt

if TYPE_CHECKING:
    import torch

TENSOR_NAME = "prompt_embeddings"


def _init_rows(prompt: SoftPrompt, embeddings: Any, tokenizer: Any, generator: Any) -> Any:
    import torch

    count = prompt.num_virtual_tokens
    if prompt.init == "TEXT":
        ids = tokenizer(prompt.init_text or prompt.name, add_special_tokens=False)["input_ids"] or [0]
        ids = (ids * math.ceil(count / len(ids)))[:count]
    else:
        ids = torch.randint(0, embeddings.num_embeddings, (count,), generator=generator).tolist()
    index = torch.tensor(ids, dtype=torch.long, device=embeddings.weight.device)
    return embeddings(index).detach().to(torch.float32).clone()


def build_soft_prompts(prompts: list[SoftPrompt], embeddings: Any, tokenizer: Any, seed: int) -> Any:
    """A ``ParameterDict`` name → ``[V, H]`` fp32 parameter, initialised like PEFT."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.nn.ParameterDict(
        {p.name: torch.nn.Parameter(_init_rows(p, embeddings, tokenizer, generator)) for p in prompts}
    )


def total_virtual_tokens(prompts: list[SoftPrompt]) -> int:
    return sum(p.num_virtual_tokens for p in prompts)


def prompt_matrix(bank: Any, prompts: list[SoftPrompt]) -> Any:
    """The concatenated ``[sum V, H]`` prompt, in manifest order."""
    import torch

    return torch.cat([bank[p.name] for p in prompts], dim=0)


def save_soft_prompts(bank: Any, prompts: list[SoftPrompt], directory: Path) -> list[Path]:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for order, prompt in enumerate(prompts):
        path = directory / f"{prompt.name}.safetensors"
        metadata = {
            "name": prompt.name,
            "num_virtual_tokens": str(prompt.num_virtual_tokens),
            "init": prompt.init,
            "order": str(order),
        }
        tensor = bank[prompt.name].detach().to("cpu").contiguous()
        save_file({TENSOR_NAME: tensor}, str(path), metadata=metadata)
        written.append(path)
    return written


def load_soft_prompts(prompts: list[SoftPrompt], directory: Path) -> dict[str, torch.Tensor]:
    """name → ``[V, H]`` tensor for every configured prompt, checked against the manifest."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    loaded = {}
    for prompt in prompts:
        path = directory / f"{prompt.name}.safetensors"
        try:
            tensor = load_file(str(path))[TENSOR_NAME]
        except (OSError, SafetensorError, KeyError) as exc:
            raise ModelLoadError(f"cannot read soft prompt {path}: {exc}", "re-run expert-cli train") from exc
        if tensor.shape[0] != prompt.num_virtual_tokens:
            raise ModelLoadError(
                f"{path} has {tensor.shape[0]} virtual tokens, the manifest says {prompt.num_virtual_tokens}",
                "re-train, or fix soft_prompts in the manifest",
            )
        loaded[prompt.name] = tensor
    return loaded
