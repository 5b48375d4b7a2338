"""The training objective: supervised-only, weighted cross-entropy over packed rows.

:class:`SupervisedCausalLM` wraps the (PEFT) causal LM so the Trainer and DDP see one module
whose forward returns loss *sums*. The LM head runs only at supervised positions: with a 49k–151k
vocabulary, logits for prompt tokens are a large share of a step and are never needed. The sums
are normalised by the Trainer-side count of supervised tokens over the whole accumulated batch
(transformers PR #34191), not per micro-batch.

NEFTune noise (arXiv 2310.05914) is scaled by ``alpha / sqrt(L·d)`` with ``L`` the length of the
token's *own* example, read from the position runs, not the packed row's length
(transformers #34659).
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)

from expertkit.data.render import IGNORE_INDEX
from expertkit.errors import ExpertkitError
from expertkit.manifest.sections import SoftPrompt
from expertkit.train.soft_prompts import prompt_matrix


class PackingIsolationError(ExpertkitError):
    """A wrapper dropped ``position_ids`` on a packed batch: examples would attend to each other."""


def causal_lm_of(model: Any) -> Any:
    """The transformers causal LM inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def example_lengths(position_ids: Any) -> Any:
    """``[B, T]`` length of the packed example each token belongs to (runs start at position 0)."""
    starts = (position_ids == 0).long()
    segment = starts.cumsum(dim=1) - 1  # (B, T) index of the example within its row
    lengths = torch.zeros_like(position_ids)
    lengths.scatter_add_(1, segment, torch.ones_like(position_ids))  # (B, S) tokens per example
    return lengths.gather(1, segment)


def neftune_noise(embeds: Any, position_ids: Any, alpha: float) -> Any:
    """Uniform noise in ``±alpha/sqrt(L·d)``, ``L`` the token's own example length."""
    lengths = example_lengths(position_ids).to(embeds.dtype)  # (B, T)
    scale = alpha / torch.sqrt(lengths * embeds.shape[-1])
    return embeds + torch.empty_like(embeds).uniform_(-1, 1) * scale.unsqueeze(-1)


def require_position_ids(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook on the decoder: a packed batch must arrive with its position ids."""
    if kwargs.get("position_ids") is None:
        raise PackingIsolationError(
            "the decoder was called without position_ids on packed rows, so packed examples would attend to "
            "each other (PEFT prompt tuning drops position_ids this way)",
            "train soft prompts through expertkit's soft_prompts section, which keeps position ids",
        )


class LossSums(TypedDict):
    """What the objective's forward returns (a dict: accelerate's autocast wrapper passes dicts through)."""

    weighted: torch.Tensor  # the weighted CE summed over supervised tokens (differentiable)
    ce: torch.Tensor  # the plain CE sum (detached, for the eval loss)
    tokens: torch.Tensor  # supervised target tokens


class SupervisedCausalLM(torch.nn.Module):
    """``model`` (a PEFT or plain causal LM) plus soft prompts and NEFTune; forward returns loss sums.

    The forward returns :class:`LossSums`.
    """

    def __init__(
        self, model: Any, soft_prompts: Any = None, prompts: list[SoftPrompt] | None = None, neftune_alpha: float = 0
    ) -> None:
        super().__init__()
        self.model = model
        self.soft_prompts = soft_prompts
        self.prompts = prompts or []
        self.neftune_alpha = neftune_alpha
        causal_lm_of(model).get_decoder().register_forward_pre_hook(require_position_ids, with_kwargs=True)

    def embed(self, input_ids: Any, position_ids: Any, virtual_index: Any | None) -> Any:
        lm = causal_lm_of(self.model)
        embeds = lm.get_input_embeddings()(input_ids)  # (B, T, H)
        if virtual_index is not None:
            matrix = prompt_matrix(self.soft_prompts, self.prompts).to(embeds.dtype)  # (V, H)
            slots = virtual_index >= 0  # (B, T)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), matrix[virtual_index[slots]])
        if self.training and self.neftune_alpha:
            embeds = neftune_noise(embeds, position_ids, self.neftune_alpha)
        return embeds

    def forward(
        self, input_ids: Any, labels: Any, weights: Any, position_ids: Any, virtual_index: Any | None = None
    ) -> LossSums:
        lm = causal_lm_of(self.model)
        embeds = self.embed(input_ids, position_ids, virtual_index)
        # attention_mask=None + use_cache=False: transformers isolates packed runs by their position ids.
        hidden = lm.get_decoder()(
            inputs_embeds=embeds, position_ids=position_ids, attention_mask=None, use_cache=False
        ).last_hidden_state  # (B, T, H)
        targets = labels[:, 1:]  # (B, T-1): hidden state t predicts token t+1
        keep = targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V), supervised positions only
        ce = F.cross_entropy(logits, targets[keep], reduction="none")  # (N,)
        return LossSums(weighted=(ce * weights[:, 1:][keep]).sum(), ce=ce.detach().sum(), tokens=keep.sum())
