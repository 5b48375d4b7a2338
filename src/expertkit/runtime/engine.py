"""One base model, any number of experts as named PEFT adapters, one active at a time.

Activating an expert merges its adapter into the weights the decoder reads (fast decoding), then
puts the model's own weights back exactly as they were (a snapshot of every adapted layer is
restored), so switching experts or returning to the base model leaves no rounding residue, even
in bf16. Each expert is checked against its lock before its adapter is attached.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from expertkit.errors import ModelLoadError, UsageError
from expertkit.manifest.sections import DecodingConfig
from expertkit.models.fingerprint import fingerprint
from expertkit.models.load import load_model
from expertkit.models.resolve import ResolvedModel, resolve_model
from expertkit.models.tokens import add_control_tokens
from expertkit.package.lock import TrainedWith, check_base_model, check_template, lock_from_meta
from expertkit.package.references import ExpertFiles, resolve_expert
from expertkit.runtime.constraints import ordered_by_constraints
from expertkit.runtime.generate import Decoder, GenerationRequest, GenerationResult, end_token_ids, generate
from expertkit.runtime.hf_decoder import HFDecoder
from expertkit.runtime.llama_decoder import LeanDecoder, lean_supported
from expertkit.runtime.lora_deltas import ExpertDeltas, lora_deltas
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.quantize import DEFAULT_QUANTIZE, Quantize
from expertkit.runtime.settings import DecodingOverrides, DecodingSettings, Source, resolve_settings
from expertkit.safepath import UnsafePathError, read_bounded

MAX_CONTROL_TOKENS, MAX_CONTROL_TOKEN_CHARS = 256, 64


@dataclass
class Expert:
    files: ExpertFiles
    soft_prompt: torch.Tensor | None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.files.loaded.manifest.name


def _lock_of(files: ExpertFiles, notes: list[str]) -> TrainedWith | None:
    if files.lock is not None:
        return files.lock.trained_with()
    meta = files.training_meta()
    if meta is None:
        notes.append(f"{files.root}: no expert.lock.json or training_meta.json; base model and template unchecked")
        return None
    return lock_from_meta(meta)


def _soft_prompt(files: ExpertFiles) -> torch.Tensor | None:
    from safetensors.torch import load_file

    parts = []
    for prompt in files.loaded.manifest.soft_prompts:
        path = files.soft_prompt_dir / f"{prompt.name}.safetensors"
        if not path.is_file():
            raise ModelLoadError(f"soft prompt {prompt.name!r} is configured but {path} is missing")
        parts.append(load_file(str(path))["prompt_embeddings"])
    return torch.cat(parts) if parts else None


class Engine:
    """The base model (loaded once), its tokenizer, the attached experts and the active decoder."""

    def __init__(self, base: ResolvedModel, options: LoadOptions) -> None:
        self.base, self.options = base, options
        self.model, self.tokenizer = load_model(base, options.dtype, options.device)
        # The base tokenizer's own special tokens (EOS, BOS, pad ...) are hidden from output text;
        # tokens an expert adds are plain text to every other expert, never stripped.
        self.hidden_ids = frozenset(int(i) for i in self.tokenizer.all_special_ids)
        self.fingerprint = fingerprint(base.path)
        self.experts: dict[str, Expert] = {}
        self.active: str | None = None
        self._decoder: Decoder | None = None
        # Merged decoders kept for switching back without re-merging (each holds a weight copy).
        self._lean_decoders: dict[str | None, LeanDecoder] = {}
        # Experts' LoRA factors for mixed-expert batches over the shared base decoder (None: must merge).
        self._deltas: dict[str, ExpertDeltas | None] = {}

    @classmethod
    def for_experts(cls, references: list[str], options: LoadOptions | None = None) -> Engine:
        """Load the base model the first expert names (or ``options.base``) and attach every expert."""
        options = options or LoadOptions()
        return cls.for_files([resolve_expert(r, options.keys, options.require_signature) for r in references], options)

    @classmethod
    def for_files(cls, files: list[ExpertFiles], options: LoadOptions) -> Engine:
        """:meth:`for_experts` with the experts already resolved."""
        if not files and options.base is None:
            raise UsageError("no expert and no base model given", "name at least one expert")
        for item in files:  # before any model is loaded: an untrained expert is the likeliest first mistake
            if (missing := item.missing_weights()) is not None:
                hint = (
                    "re-install the package"
                    if item.packaged
                    else f"train it first: expert-cli train --expert {item.loaded.root} (--max-steps N: a short run)"
                )
                raise UsageError(missing, hint, exit_code=1)
        files = ordered_by_constraints(files)
        first = files[0] if files else None
        name = options.base or (first.loaded.manifest.base_models[0].name if first else "")
        engine = cls(resolve_model(name, first.model_base_dir if first else None), options)
        for item in files:
            engine.attach(item)
        return engine

    def attach(self, files: ExpertFiles) -> Expert:
        """Check ``files`` against its lock, add its control tokens, load its adapter under its name."""
        notes: list[str] = []
        lock = _lock_of(files, notes)
        if lock is not None:
            check_base_model(lock, self.fingerprint, str(files.root))
        dataset = files.loaded.manifest.training.dataset if files.loaded.manifest.training else None
        tokens = list(dataset.special_tokens) if dataset else []
        self._check_control_tokens(files, tokens)
        add_control_tokens(self.tokenizer, tokens)
        if lock is not None and (
            drift := check_template(lock, self.tokenizer, str(files.root), self.options.allow_template_drift)
        ):
            notes.append(drift)
        if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(len(self.tokenizer))
        expert = Expert(files, _soft_prompt(files), notes)
        self._check_bounds(expert)
        self._load_adapter(expert)
        self.experts[expert.name] = expert
        self._decoder = None
        self._lean_decoders.clear()
        self._deltas.clear()
        return expert

    def _check_control_tokens(self, files: ExpertFiles, tokens: list[str]) -> None:
        """Control tokens are scoped by refusal: the tokenizer is shared, so an expert's added tokens
        would change how every other expert's prompts tokenise. Experts in one engine must declare
        the same control tokens (or none); the counts and lengths are bounded."""
        if len(tokens) > MAX_CONTROL_TOKENS or any(len(t) > MAX_CONTROL_TOKEN_CHARS or not t for t in tokens):
            raise UsageError(
                f"{files.root}: training.dataset.special_tokens lists {len(tokens)} tokens; at most "
                f"{MAX_CONTROL_TOKENS} of 1 to {MAX_CONTROL_TOKEN_CHARS} characters are accepted",
                "declare only the control tokens the expert was trained with",
            )
        for other in self.experts.values():
            dataset = other.files.loaded.manifest.training.dataset if other.files.loaded.manifest.training else None
            theirs = set(dataset.special_tokens) if dataset else set()
            if theirs != set(tokens):
                raise UsageError(
                    f"{files.loaded.manifest.name} and {other.name} declare different control tokens "
                    f"({sorted(set(tokens) ^ theirs)[:5]}); loaded together, one expert's tokens would "
                    "change how the other's prompts are tokenised",
                    "serve them in separate processes (one expert-cli serve each)",
                )

    def _check_bounds(self, expert: Expert) -> None:
        """An adapter's rank and a soft prompt's length within what the base model makes sensible."""
        config = self.model.config if not self.experts else self.model.get_base_model().config
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        path = expert.files.adapter_dir / "adapter_config.json"
        try:
            adapter = json.loads(read_bounded(path, "adapter_config.json", 1 << 20))
        except (OSError, ValueError, UnsafePathError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}", "re-train or re-install the expert") from exc
        rank = adapter.get("r") if isinstance(adapter, dict) else None
        if hidden and isinstance(rank, int) and not 0 < rank <= hidden:
            raise ModelLoadError(f"{path}: rank r={rank} is outside 1..{hidden} (the base model's hidden size)")
        if expert.soft_prompt is not None:
            rows, width = expert.soft_prompt.shape
            if rows > self.context_length // 2 or (hidden and width != hidden):
                raise ModelLoadError(
                    f"{expert.files.root}: soft prompt of {rows} x {width}; the base model allows at most "
                    f"{self.context_length // 2} tokens of width {hidden}"
                )

    def _load_adapter(self, expert: Expert) -> None:
        from peft import PeftModel

        with warnings.catch_warnings():  # PEFT reads a property transformers 5 deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(expert.files.adapter_dir), adapter_name=expert.name)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(expert.files.adapter_dir), adapter_name=expert.name
                )
        self.model.eval()

    def _adapted_layers(self) -> list[Any]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]

    def _merged_decoder(self, name: str) -> LeanDecoder:
        """Merge ``name`` into the weights, copy them into a lean decoder, restore the weights exactly."""
        layers = self._adapted_layers()
        snapshot = [layer.get_base_layer().weight.detach().clone() for layer in layers]
        self.model.set_adapter(name)
        self.model.merge_adapter([name])
        try:  # quantised (when asked) from the merged weights: the merge itself stays exact
            return LeanDecoder(self.model.get_base_model(), self.quantize_of(name)[0])
        finally:
            self.model.unmerge_adapter()
            with torch.no_grad():
                for layer, weight in zip(layers, snapshot, strict=True):
                    layer.get_base_layer().weight.copy_(weight)

    def activate(self, name: str | None) -> Decoder:
        """The decoder for expert ``name`` (``None``: the base model alone); rebuilt only on a switch."""
        if name is not None and name not in self.experts:
            raise UsageError(f"expert {name!r} is not loaded", f"loaded: {', '.join(self.experts) or 'none'}")
        if self._decoder is not None and self.active == name:
            return self._decoder
        model = self.model.get_base_model() if self.experts else self.model
        if lean_supported(model.config):
            lean = self._lean_decoders.pop(name, None) or (
                self._merged_decoder(name) if name else LeanDecoder(model, self.quantize_of(None)[0])
            )
            self._lean_decoders[name] = lean  # most recent last
            self._decoder = lean
            while len(self._lean_decoders) > self.options.cached_decoders:
                self._lean_decoders.pop(next(iter(self._lean_decoders)))
        else:
            self._decoder = self._hf_decoder(name)
        self.active = name
        return self._decoder

    @property
    def lean(self) -> bool:
        """Whether experts decode through the lean decoder (else transformers' forward)."""
        model = self.model.get_base_model() if self.experts else self.model
        return lean_supported(model.config)

    def quantize_of(self, name: str | None) -> tuple[Quantize, Source]:
        """Expert ``name``'s weight-only quantisation and where it came from: the load options (a
        CLI flag) > its manifest's ``runtime.quantize`` > the default. Architectures the lean
        decoder does not cover decode unquantised (transformers' forward)."""
        if not self.lean:
            return "none", "default"
        if self.options.quantize is not None:
            return self.options.quantize, "cli"
        expert = self.experts.get(name) if name else None
        runtime = expert.files.loaded.manifest.runtime if expert else None
        if runtime is not None and runtime.quantize is not None:
            return runtime.quantize, "manifest"
        return DEFAULT_QUANTIZE, "default"

    def deltas_of(self, name: str | None) -> ExpertDeltas | None:
        """Expert ``name``'s LoRA as deltas over the shared base decoder, when it can decode that way
        (a plain LoRA on the projections, quantised like the base decoder); ``None``: it decodes merged."""
        if name is None or not self.lean or name not in self.experts:
            return None
        if name not in self._deltas:
            same = self.quantize_of(name)[0] == self.quantize_of(None)[0]
            dtype = self.model.get_input_embeddings().weight.dtype  # the shared decoder's
            self._deltas[name] = lora_deltas(self.model, name, dtype) if same else None
        return self._deltas[name]

    def mixable(self, name: str | None) -> bool:
        """Whether ``name``'s sequences can share a batch with other experts' (the base model's can)."""
        return self.lean and (name is None or self.deltas_of(name) is not None)

    def decoder_notes(self) -> list[str]:
        """One line per expert: the dtype and quantisation it decodes in, and where each came from."""
        kind = "lean decoder" if self.lean else "transformers forward"
        notes = []
        for name in self.experts or [None]:
            quantize, source = self.quantize_of(name)
            notes.append(f"{name or 'base'}: {kind}, {self.options.dtype}, quantize {quantize} ({source})")
        return notes

    def _hf_decoder(self, name: str | None) -> Decoder:
        if not self.experts:
            return HFDecoder(self.model)
        if name is None:
            self.model.base_model.disable_adapter_layers()
        else:
            self.model.base_model.enable_adapter_layers()
            self.model.set_adapter(name)
        return HFDecoder(self.model)

    def expert_nbytes(self, name: str) -> int:
        """Bytes expert ``name`` holds beyond the base model: its adapter's parameters, and the merged
        weight copy its decoder keeps while cached (the lean decoder; the HF path merges nothing)."""
        adapter = sum(p.numel() * p.element_size() for n, p in self.model.named_parameters() if f".{name}." in n)
        decoder = self._lean_decoders.get(name)
        return adapter + (decoder.nbytes() if decoder is not None else 0)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation rendered with the chat template (generation prompt on), as training did."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def request(
        self, name: str | None, prompt_ids: list[int], settings: DecodingSettings, **extra: Any
    ) -> GenerationRequest:
        """A generation request for expert ``name`` (its soft prompt, the model's end tokens)."""
        expert = self.experts.get(name) if name else None
        end_ids = end_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        prefix = expert.soft_prompt if expert else None
        return GenerationRequest(
            prompt_ids, settings, end_ids, prefix=prefix, expert=name, hidden_ids=self.hidden_ids, **extra
        )

    def execute(self, request: GenerationRequest) -> GenerationResult:
        """Run one request on its expert's decoder."""
        return generate(self.activate(request.expert), self.tokenizer, request)

    def run(
        self, name: str | None, prompt_ids: list[int], settings: DecodingSettings, **extra: Any
    ) -> GenerationResult:
        """One completion by expert ``name`` (or the base model) with settings already resolved."""
        return self.execute(self.request(name, prompt_ids, settings, **extra))

    def decoding_of(self, name: str | None) -> DecodingConfig:
        """The expert's manifest ``training.decoding`` (empty for the base model)."""
        expert = self.experts.get(name) if name else None
        training = expert.files.loaded.manifest.training if expert else None
        return (training.decoding if training else None) or DecodingConfig()

    def generate(
        self, name: str | None, messages: list[dict[str, str]], overrides: DecodingOverrides | None = None, **extra: Any
    ) -> GenerationResult:
        """One completion, decoding settings resolved in three levels (overrides > manifest > defaults)."""
        settings = resolve_settings(overrides, self.decoding_of(name))
        return self.run(name, self.prompt_ids(messages), settings, **extra)

    def prefix_length(self, name: str | None) -> int:
        """Positions the expert's soft prompt takes before the prompt (0 without one)."""
        expert = self.experts.get(name) if name else None
        return 0 if expert is None or expert.soft_prompt is None else int(expert.soft_prompt.shape[0])

    @property
    def context_length(self) -> int:
        """The most positions one sequence may use (prompt + completion)."""
        config = self.model.config
        return int(getattr(config, "max_position_embeddings", None) or 2048)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)
