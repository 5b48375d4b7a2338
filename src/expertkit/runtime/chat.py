"""Open a chat session from command-line choices: experts, decoding overrides, trust, dtype."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from expertkit.errors import UsageError
from expertkit.models.hardware import best_dtype, dtype_reason
from expertkit.package.signing import default_trusted_keys_dir, trusted_keys
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions, parse_decoder, parse_quantize
from expertkit.runtime.routing import build_router
from expertkit.runtime.session import ChatSession
from expertkit.runtime.settings import DecodingOverrides

DTYPES = ("auto", "bfloat16", "float32")


@dataclass(frozen=True)
class ChatRequest:
    experts: list[str]
    overrides: DecodingOverrides = field(default_factory=lambda: DecodingOverrides())
    use_grammar: bool = True
    allow_template_drift: bool = False
    require_signature: bool = False
    trusted_keys: Path | None = None
    base: str | None = None
    dtype: str = "auto"
    quantize: str | None = None  # none|int8|int4; None: each expert's manifest, else the default
    decoder: str | None = None  # lean|onnx|native; None: each expert's manifest, else the default
    router_embedder: str = "minilm"
    one_answer: bool = False  # a one-shot answer: LoRA experts are not merged (see LoadOptions.merge_experts)


def open_session(request: ChatRequest) -> tuple[ChatSession, list[str]]:
    """Load the base model and experts (checked against their locks); a router when there are several."""
    if request.dtype not in DTYPES:
        raise UsageError(f"--dtype {request.dtype!r}", f"choose one of: {', '.join(DTYPES)}")
    if not request.experts and request.base is None:
        raise UsageError("no expert given", "pass --experts NAME[,NAME...] (or --base MODEL for the base model alone)")
    keys = None
    if request.require_signature or request.trusted_keys is not None:
        keys = trusted_keys(request.trusted_keys or default_trusted_keys_dir())
    dtype = best_dtype() if request.dtype == "auto" else request.dtype
    options = LoadOptions(
        dtype=dtype,  # type: ignore[arg-type]
        quantize=parse_quantize(request.quantize),
        decoder=parse_decoder(request.decoder),
        allow_template_drift=request.allow_template_drift,
        base=request.base,
        keys=keys,
        require_signature=request.require_signature,
        merge_experts=not request.one_answer,
    )
    engine = Engine.for_experts(request.experts, options)
    notes = [f"using {expert.files.origin}" for expert in engine.experts.values()]
    notes += [note for expert in engine.experts.values() for note in expert.warnings]
    notes += engine.decoder_notes()
    if request.dtype == "auto":
        notes.append(f"--dtype auto chose {dtype}: {dtype_reason()}")
    router = build_router(engine, request.router_embedder, notes) if len(engine.experts) > 1 else None
    session = ChatSession(
        engine, router, overrides=DecodingOverrides(**request.overrides), use_grammar=request.use_grammar
    )
    return session, notes
