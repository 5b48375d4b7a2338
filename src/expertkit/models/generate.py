"""A short greedy generation with plain transformers, to show a base model works.

The runtime (``expertkit.runtime``) is where decoding contracts are enforced; this is only the
smoke test ``models run`` and the demo use.
"""

from __future__ import annotations

from typing import Any


def generate_reply(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 48) -> str:
    """Greedy reply of the model to one user message, rendered with its own chat template."""
    import torch

    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    new_tokens = output[0, encoded["input_ids"].shape[1] :]
    return str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
