"""One base model, any number of experts, one active at a time (or several in a mixed batch).

Fast start: when the lean decoder covers the base model and an expert is a plain LoRA or DoRA, the
engine reads the model's tensors and the adapter's factors straight from their files and merges a
LoRA itself (a DoRA runs as deltas; :mod:`expertkit.runtime.model_files`), and tokenises without transformers when the
model's tokenizer allows it (:mod:`expertkit.models.lean_tokenizer`): no transformers import, no
model object and no PEFT on that path. Anything else (other adapter types, other architectures,
control tokens, the base-model router, perf measurement) reads ``engine.model``, which loads
transformers + PEFT on first use.

Torch is imported where a decoder that computes with it is built, not here: an expert that decodes
through the ONNX Runtime decoder from a graph already built answers without loading torch at all
(a one-shot ``chat``; about 1.5 s of import on a 2-core CPU).

Through PEFT, activating an expert merges its adapter into the weights the decoder reads, then
puts the model's own weights back exactly as they were (a snapshot of every adapted layer is
restored), so switching experts or returning to the base model leaves no rounding residue, even
in bf16. Each expert is checked against its lock before its adapter is attached.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from expertkit.errors import UsageError
from expertkit.manifest.sections import DecodingConfig
from expertkit.models.fingerprint import fingerprint
from expertkit.models.load import decode_tokenizer, load_model
from expertkit.models.pull import ensure_ready
from expertkit.models.resolve import ResolvedModel, resolve_model
from expertkit.models.tokens import add_control_tokens
from expertkit.package.lock import check_base_model, check_template
from expertkit.package.references import ExpertFiles, resolve_expert
from expertkit.runtime.constraints import ordered_by_constraints
from expertkit.runtime.expert_checks import Expert, check_bounds, check_control_tokens, lock_of, soft_prompt
from expertkit.runtime.file_tensors import FileTensors
from expertkit.runtime.generate import Decoder, GenerationRequest, GenerationResult, end_token_ids, generate
from expertkit.runtime.lora_file import LoraFile, plain_lora_file
from expertkit.runtime.model_config import fast_config, generation_end_ids, lean_supported
from expertkit.runtime.onnx_decoder import OnnxDecoder
from expertkit.runtime.options import DEFAULT_DECODER, DEFAULT_QUANTIZE, DecoderKind, LoadOptions, Quantize
from expertkit.runtime.settings import DecodingOverrides, DecodingSettings, Source, resolve_settings

if TYPE_CHECKING:
    from expertkit.runtime.llama_decoder import LeanDecoder
    from expertkit.runtime.lora_deltas import ExpertDeltas
    from expertkit.runtime.model_files import DefaultRope
    from expertkit.runtime.native_decoder import NativeDecoder, NativeWeights
    from expertkit.runtime.onnx_cache import OnnxModel


DECODER_NAMES = {"onnx": "ONNX Runtime decoder", "native": "native decoder"}
ACTIVATIONS = {"onnx": "float32 activations", "native": "int8 activations"}


class Engine:
    """The base model (loaded once), its tokenizer, the attached experts and the active decoder."""

    def __init__(self, base: ResolvedModel, options: LoadOptions) -> None:
        base = ensure_ready(base)  # an embedded model is converted once, before its files are read
        self.base, self.options = base, options
        self._model: Any = None
        self._tensors: FileTensors | None = None  # fast start: the base weights, each read on first use
        self._config = fast_config(base.path) if options.fast_start and options.device == "cpu" else None
        if self._config is not None and options.dtype != "auto":
            self._tensors = FileTensors(base.path, options.dtype)
            self.tokenizer = decode_tokenizer(base)
        else:
            self._config = None
            self._model, self.tokenizer = load_model(base, options.dtype, options.device)
        self._lora: dict[str, LoraFile] = {}  # experts read from their files (fast start)
        self._default_rope: DefaultRope | None = None
        self._end_config: SimpleNamespace | None = None  # generation_config.json's end ids (fast start)
        # The base tokenizer's own special tokens (EOS, BOS, pad ...) are hidden from output text;
        # tokens an expert adds are plain text to every other expert, never stripped.
        self.hidden_ids = frozenset(int(i) for i in self.tokenizer.all_special_ids)
        self.fingerprint = fingerprint(base.path)
        self.experts: dict[str, Expert] = {}
        self.active: str | None = None
        self._decoder: Decoder | None = None
        # Decoders kept for switching back without rebuilding (a merged one holds a weight copy).
        self._lean_decoders: dict[str | None, LeanDecoder | OnnxDecoder | NativeDecoder] = {}
        # Experts' LoRA factors for mixed-expert batches over the shared base decoder (None: must merge).
        self._deltas: dict[str, ExpertDeltas | None] = {}
        self._bases: dict[Quantize, LeanDecoder] = {}  # quantised base decoders under experts' deltas
        self._native: dict[Quantize, NativeWeights] = {}  # the base packed for the native decoder
        self._native_gaps: dict[str | None, str | None] = {}  # why the native decoder cannot run each

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

    @property
    def model(self) -> Any:
        """The transformers model with every attached expert as a PEFT adapter (loaded on first use)."""
        if self._model is None:
            self._decoder = None  # the active decoder is rebuilt from here on as it would have been
            self._model, _ = load_model(self.base, self.options.dtype, self.options.device)
            self._resize_embeddings()
            for expert in self.experts.values():
                self._load_adapter(expert)
        return self._model

    @property
    def model_config(self) -> Any:
        """The base model's config (read from config.json on the fast path)."""
        if self._config is not None:
            return self._config
        return self.model.get_base_model().config if self.experts else self.model.config

    def _resize_embeddings(self) -> None:
        if len(self.tokenizer) > self._model.get_input_embeddings().num_embeddings:
            self._model.resize_token_embeddings(len(self.tokenizer))

    def attach(self, files: ExpertFiles) -> Expert:
        """Check ``files`` against its lock, add its control tokens, load its adapter under its name."""
        notes: list[str] = []
        lock = lock_of(files, notes)
        if lock is not None:
            check_base_model(lock, self.fingerprint, str(files.root))
        dataset = files.loaded.manifest.training.dataset if files.loaded.manifest.training else None
        tokens = list(dataset.special_tokens) if dataset else []
        check_control_tokens(files, tokens, list(self.experts.values()))
        if tokens and self._model is None:
            self._leave_fast_start()  # new embedding rows: transformers resizes them
        add_control_tokens(self.tokenizer, tokens)
        if lock is not None and (
            drift := check_template(lock, self.tokenizer, str(files.root), self.options.allow_template_drift)
        ):
            notes.append(drift)
        if self._model is not None:
            self._resize_embeddings()
        expert = Expert(files, soft_prompt(files), notes)
        check_bounds(expert, self.model_config, self.context_length)
        lora = plain_lora_file(files.adapter_dir, self._tensors.shapes) if self._tensors is not None else None
        if lora is not None:
            self._lora[expert.name] = lora
        if self._model is not None or lora is None:
            self._load_adapter(expert)
        self.experts[expert.name] = expert
        self._decoder = None
        self._lean_decoders.clear()
        self._bases.clear()
        self._native_gaps.clear()
        self._deltas.clear()
        return expert

    def _load_adapter(self, expert: Expert) -> None:
        from peft import PeftModel

        with warnings.catch_warnings():  # PEFT reads a property transformers 5 deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(expert.files.adapter_dir), adapter_name=expert.name)
            else:
                self._model = PeftModel.from_pretrained(
                    self.model, str(expert.files.adapter_dir), adapter_name=expert.name
                )
        self.model.eval()

    def _leave_fast_start(self) -> None:
        """From here on, everything through transformers + PEFT (the tensors read from files no
        longer describe the model once its vocabulary grows)."""
        _ = self.model
        self._tensors, self._config = None, None
        self._lora.clear()
        self._lean_decoders.clear()
        self._bases.clear()
        self._native.clear()
        self._native_gaps.clear()
        self._deltas.clear()
        self._decoder = None

    def activate(self, name: str | None) -> Decoder:
        """The decoder for expert ``name`` (``None``: the base model alone); rebuilt only on a switch."""
        if name is not None and name not in self.experts:
            raise UsageError(f"expert {name!r} is not loaded", f"loaded: {', '.join(self.experts) or 'none'}")
        if self._decoder is not None and self.active == name:
            return self._decoder
        if self.lean:
            lean = self._lean_decoders.pop(name, None) or self._new_decoder(name)
            self._lean_decoders[name] = lean  # most recent last
            self._decoder = lean
            while len(self._lean_decoders) > self.options.cached_decoders:
                self._lean_decoders.pop(next(iter(self._lean_decoders)))
        else:
            self._decoder = self._hf_decoder(name)
        self.active = name
        return self._decoder

    def _new_decoder(self, name: str | None) -> LeanDecoder | OnnxDecoder | NativeDecoder:
        if self.decoder_of(name)[0] == "native":
            from expertkit.runtime.native_experts import native_base, native_decoder

            quantize = self.quantize_of(name)[0]
            if quantize not in self._native:
                self._native[quantize] = native_base(
                    self._tensors, self._config, quantize, self.fingerprint.weights_sha256
                )
            return native_decoder(self._native[quantize], self._lora.get(name) if name else None, self._tensors)
        if self.decoder_of(name)[0] == "onnx":
            model = self._onnx_graph(name)
            assert self._tensors is not None  # decoder_of says onnx only on the fast start
            embeddings = self._tensors.float_rows("model.embed_tokens.weight")  # the graph computes in fp32
            return OnnxDecoder(model, embeddings, self._config)
        return self._new_lean(name)

    def prepare(self, name: str) -> str | None:
        """Build now what expert ``name``'s first answer would otherwise build: its ONNX Runtime graph
        when it decodes through that (once per expert and quantisation, cached). What was done, or
        ``None`` when its decoder needs nothing built. The native decoder's library is compiled
        (once per machine and compiler)."""
        if self.decoder_of(name)[0] == "native":
            from expertkit.runtime.native_build import load_library

            return f"native decoder library ready ({load_library()._name})"
        if self.decoder_of(name)[0] != "onnx":
            return None
        model = self._onnx_graph(name, log=False)
        done = f"built in {model.built_s:.1f} s" if model.built_s else "already built"
        return f"ONNX Runtime decoder ({model.quantize}) {done}"

    def _onnx_graph(self, name: str | None, log: bool = True) -> OnnxModel:
        """Expert ``name``'s ONNX graph: opened from the cache without torch, else built (with torch)."""
        from expertkit.runtime.onnx_cache import cached_onnx_model

        lora = self._lora.get(name) if name is not None else None
        sha, quantize = self.fingerprint.weights_sha256, self.quantize_of(name)[0]
        model = cached_onnx_model(sha, lora, quantize)
        if model is None:
            from expertkit.runtime.onnx_build import onnx_model

            model = onnx_model(self.base.path, sha, lora, quantize, log=log)
        return model

    @property
    def _rope(self) -> DefaultRope:
        """The rotary tables the fast start's lean decoders share (made on first use)."""
        if self._default_rope is None:
            from expertkit.runtime.model_files import DefaultRope

            assert self._config is not None  # only the fast start builds decoders from the files
            self._default_rope = DefaultRope(self._config)
        return self._default_rope

    def _new_lean(self, name: str | None) -> LeanDecoder:
        """A lean decoder for ``name``: merged by hand from the files (fast start), else through PEFT.
        Quantised, a LoRA expert is not merged: rounding the merged weights to an int4 (or int8) grid
        would erase most of a low-rank change (measured: a 4-bit base model's weights sit on that grid,
        and the merged expert decoded like the base model), so it runs as the quantised base decoder
        plus its deltas (in fp32). Asked not to merge (``merge_experts``: one answer), likewise."""
        from expertkit.runtime.llama_decoder import LeanDecoder
        from expertkit.runtime.model_files import merged
        from expertkit.runtime.peft_merge import peft_merged_decoder

        quantize = self.quantize_of(name)[0]
        unmerged = quantize != "none" or not self.options.merge_experts
        if name is not None and unmerged and (deltas := self._expert_deltas(name)) is not None:
            return self._base_decoder(quantize).with_deltas(deltas)
        if self._tensors is not None and name in self._lora:
            if self._lora[name].dora and (deltas := self._expert_deltas(name)) is not None:
                return self._base_decoder(quantize).with_deltas(deltas)  # DoRA read from files: as deltas
            factors = self._lora[name].factors()
            return LeanDecoder.from_tensors(merged(self._tensors, factors), self._config, self._rope, quantize)
        if name is None:
            return self._base_decoder(quantize)
        return peft_merged_decoder(self.model, name, quantize)

    def _base_decoder(self, quantize: Quantize) -> LeanDecoder:
        """The base model's decoder quantised as asked, kept once per quantisation."""
        from expertkit.runtime.llama_decoder import LeanDecoder

        if quantize not in self._bases:
            if self._tensors is not None:
                self._bases[quantize] = LeanDecoder.from_tensors(self._tensors, self._config, self._rope, quantize)
            else:
                self._bases[quantize] = LeanDecoder(self._hf_base(), quantize)
        return self._bases[quantize]

    def _hf_base(self) -> Any:
        """The transformers model itself (inside PEFT's wrapper when experts are attached through it)."""
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def lean(self) -> bool:
        """Whether experts decode through the lean decoder (else transformers' forward)."""
        return self._config is not None or lean_supported(self._hf_base().config)

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
        if self._asked_decoder(name)[0] == "native" and self.native_gap(name) is None:
            return "int4", "default"  # the native decoder's own: the embedded model's exact grid (README)
        return DEFAULT_QUANTIZE, "default"

    def decoder_of(self, name: str | None) -> tuple[DecoderKind, Source]:
        """What runs expert ``name``'s decode steps and where that came from (the load options > its
        manifest's ``runtime.decoder`` > the default); ``lean`` wherever the ONNX path does not cover
        the expert: only a base model and LoRA/DoRA experts read from their files build as ONNX."""
        kind, source = self._asked_decoder(name)
        covered = self._tensors is not None and (name is None or name in self._lora)
        if kind == "native":
            covered = self.native_gap(name) is None and self.quantize_of(name)[0] != "none"
        return (kind if covered else "lean"), source

    def native_gap(self, name: str | None) -> str | None:
        """Why the native decoder cannot run expert ``name`` (``None``: it can, quantised); decided once."""
        if name not in self._native_gaps:
            from expertkit.runtime.native_experts import native_gap

            if self._tensors is None or (name is not None and name not in self._lora):
                gap: str | None = "it runs experts read from their files (a plain LoRA or DoRA) on Llama/Qwen2 bases"
            else:
                gap = native_gap(self._config, self._tensors.shapes, self._lora.get(name) if name else None)
            self._native_gaps[name] = gap
        return self._native_gaps[name]

    def _asked_decoder(self, name: str | None) -> tuple[DecoderKind, Source]:
        expert = self.experts.get(name) if name else None
        runtime = expert.files.loaded.manifest.runtime if expert else None
        if self.options.decoder is not None:
            return self.options.decoder, "cli"
        if runtime is not None and runtime.decoder is not None:
            return runtime.decoder, "manifest"
        return DEFAULT_DECODER, "default"

    def deltas_of(self, name: str | None) -> ExpertDeltas | None:
        """Expert ``name``'s LoRA as deltas over the shared base decoder, when it can decode that way
        (a plain LoRA on the projections, quantised like the base decoder); ``None``: it decodes merged."""
        if name is None or not self.lean or name not in self.experts:
            return None
        if self.quantize_of(name)[0] != self.quantize_of(None)[0]:
            return None  # the shared decoder is quantised otherwise
        return self._expert_deltas(name)

    def _expert_deltas(self, name: str) -> ExpertDeltas | None:
        """Expert ``name``'s LoRA as the lean decoder's deltas (``None``: not a plain LoRA)."""
        from expertkit.runtime.lora_deltas import lora_deltas
        from expertkit.runtime.model_files import deltas_from

        if name not in self._deltas:
            lora = self._lora.get(name)
            if lora is not None and self._tensors is not None:
                layers = int(self.model_config.num_hidden_layers)
                self._deltas[name] = deltas_from(lora.factors(), self._tensors, layers)
            else:
                self._deltas[name] = lora_deltas(self.model, name)
        return self._deltas[name]

    def mixable(self, name: str | None) -> bool:
        """Whether ``name``'s sequences can share a batch with other experts' (the base model's can)."""
        if self.decoder_of(name)[0] in ("onnx", "native"):
            return False
        return self.lean and (name is None or self.deltas_of(name) is not None)

    def decoder_notes(self) -> list[str]:
        """One line per expert: the dtype and quantisation it decodes in, and where each came from."""
        notes = []
        for name in self.experts or [None]:
            quantize, source = self.quantize_of(name)
            decoder, chosen = self.decoder_of(name)
            kind = DECODER_NAMES.get(decoder) or ("lean decoder" if self.lean else "transformers forward")
            dtype = ACTIVATIONS.get(decoder, self.options.dtype)
            kind += f" ({chosen})" if chosen != "default" else ""
            note = f"{name or 'base'}: {kind}, {dtype}, quantize {quantize} ({source})"
            if decoder != "onnx" and self._asked_decoder(name)[0] == "onnx":
                note += "; the ONNX decoder covers LoRA and DoRA experts read from their files, not this one"
            if decoder != "native" and self._asked_decoder(name)[0] == "native":
                gap = self.native_gap(name) or "it decodes int4 or int8 weights, not --quantize none"
                note += f"; not the native decoder: {gap}"
            if decoder == "lean" and name and not self.options.merge_experts and self._expert_deltas(name):
                note += "; as deltas over the base weights (one answer: not merged)"
            if decoder == "lean" and name is not None and quantize != "none" and self._expert_deltas(name) is None:
                note += "; merged, then quantised: a small adapter change can round away (check eval --quantize)"
            notes.append(note)
        return notes

    def _hf_decoder(self, name: str | None) -> Decoder:
        from expertkit.runtime.hf_decoder import HFDecoder

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
        if name in self._lora:
            adapter = self._lora[name].nbytes()
        else:
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
        end_ids = end_token_ids(self.tokenizer, self._generation_config())
        prefix = expert.soft_prompt if expert else None
        return GenerationRequest(
            prompt_ids, settings, end_ids, prefix=prefix, expert=name, hidden_ids=self.hidden_ids, **extra
        )

    def _generation_config(self) -> Any:
        if self._config is None:
            return getattr(self.model, "generation_config", None)
        if self._end_config is None:  # read once
            configured = generation_end_ids(self.base.path)
            self._end_config = SimpleNamespace(
                eos_token_id=sorted(configured) or getattr(self._config, "eos_token_id", None)
            )
        return self._end_config

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
        return int(getattr(self.model_config, "max_position_embeddings", None) or 2048)

    @property
    def vocab_size(self) -> int:
        if self._tensors is not None:
            return int(self._tensors.shapes["model.embed_tokens.weight"][0])
        return int(self.model.get_input_embeddings().num_embeddings)
