"""``expert-cli chat``: one-shot (``--prompt`` or stdin) or interactive, with streaming."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer
from rich.markup import escape
from rich.table import Table

from expertkit.cli.console import err_console, out_console, reports_errors
from expertkit.errors import ExpertkitError

if TYPE_CHECKING:
    from expertkit.runtime.settings import DecodingOverrides

HELP = "commands: /reset  /expert NAME|auto|base  /params  /help  /quit"


def _overrides(**values: Any) -> DecodingOverrides:
    """The flags given, by setting name (the flags are named as the settings are)."""
    stops = values.pop("stop")
    given = {k: v for k, v in values.items() if v is not None} | ({"stop_sequences": stops} if stops else {})
    return cast("DecodingOverrides", given)


@reports_errors
def chat(
    experts: str = typer.Option("", "--experts", "-e", help="Comma-separated experts: names, name@version, paths."),
    prompt: str | None = typer.Option(
        None, "--prompt", "-p", help="One prompt (else stdin if piped, else interactive)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print {text, expert, finish_reason, valid, ...} as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show each decoding value and where it came from."),
    explain_routing: bool = typer.Option(False, "--explain-routing", help="Show routing scores and the decision."),
    temperature: float | None = typer.Option(None, "--temperature", min=0, help="Sampling temperature (0: greedy)."),
    top_p: float | None = typer.Option(None, "--top-p", min=0, max=1, help="Nucleus sampling: keep this mass."),
    top_k: int | None = typer.Option(None, "--top-k", min=0, help="Sample among the k likeliest tokens (0: all)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="Most tokens to generate."),
    stop: list[str] = typer.Option([], "--stop", help="Stop sequence (repeatable); replaces the manifest's."),
    repetition_penalty: float | None = typer.Option(
        None, "--repetition-penalty", min=0, help="Penalise tokens already seen (1: off)."
    ),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed for reproducible sampling."),
    no_grammar: bool = typer.Option(False, "--no-grammar", help="Do not constrain decoding with the expert's grammar."),
    allow_template_drift: bool = typer.Option(False, "--allow-template-drift", help="Load despite template drift."),
    require_signature: bool = typer.Option(False, "--require-signature", help="Only experts with a trusted signature."),
    trusted_keys: Path | None = typer.Option(None, "--trusted-keys", help="Directory of trusted *.pub keys."),
    base: str | None = typer.Option(None, "--base", help="Base model (default: the one the experts name)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 where the CPU has it), bfloat16 or float32."),
    router_embedder: str = typer.Option("minilm", "--router-embedder", help="minilm, base or none."),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="Weight-only quantisation: none, int8 or int4 (default: the manifest's runtime.quantize).",
    ),
    decoder: str | None = typer.Option(
        None,
        "--decoder",
        help="What runs decode steps: lean (PyTorch), onnx (ONNX Runtime, built once per expert) or native "
        "(expertkit's C decoder over 4/8-bit blocks; int4 unless --quantize says int8); default: the manifest's "
        "runtime.decoder, else lean.",
    ),
) -> None:
    """Talk to one expert, or to several with routing; each expert's decoding contract is enforced."""
    from expertkit.runtime.chat import ChatRequest, open_session

    values = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, stop=stop)
    values |= dict(repetition_penalty=repetition_penalty, seed=seed)
    one_shot = prompt is not None or not sys.stdin.isatty()
    request = ChatRequest(
        experts=[e.strip() for e in experts.split(",") if e.strip()],
        overrides=_overrides(**values),
        use_grammar=not no_grammar,
        allow_template_drift=allow_template_drift,
        require_signature=require_signature,
        trusted_keys=trusted_keys,
        base=base,
        dtype=dtype,
        quantize=quantize,
        decoder=decoder,
        router_embedder=router_embedder,
        one_answer=one_shot,
    )
    with err_console.status("loading the base model and experts…"):
        session, notes = open_session(request)
    for note in notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
    text = prompt if prompt is not None else (sys.stdin.read() if one_shot else None)
    if text is None:
        _interactive(session, verbose, explain_routing)
        return
    _one_shot(session, text, as_json, verbose, explain_routing)


def _show_params(params: dict[str, Any]) -> None:
    table = Table("setting", "value", "source", title="decoding")
    for name, item in params.items():
        table.add_row(name, escape(json.dumps(item["value"])), item["source"])
    err_console.print(table)


def _show_routing(routing: dict[str, Any] | None) -> None:
    if routing is None:
        return
    table = Table(
        "expert", "score", "similarity", "patterns", "keywords", title=f"routing → {routing['expert'] or 'base'}"
    )
    for name, s in routing["scores"].items():
        sim = "-" if s["similarity"] is None else f"{s['similarity']:.3f}"
        table.add_row(
            name, f"{s['score']:.3f}", sim, escape(", ".join(s["patterns"])), escape(", ".join(s["keywords"]))
        )
    err_console.print(table)
    err_console.print(f"[dim]{escape(routing['reason'])}[/]")


@reports_errors
def _one_shot(session: Any, text: str, as_json: bool, verbose: bool, explain: bool) -> None:
    if as_json:
        answer = session.respond(text)
    else:
        answer = session.respond(text, on_text=lambda piece: out_console.print(piece, end="", markup=False))
        out_console.print()
    if as_json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
    if verbose:
        _show_params(answer.to_json()["decoding"])
    if explain:
        _show_routing(answer.routing)
    if not as_json and answer.validation.valid is False:
        err_console.print(f"[red]invalid:[/] {escape(answer.validation.error or '')}")


def _command(session: Any, line: str) -> bool:
    """Run a slash command; False means quit."""
    word, _, rest = line[1:].partition(" ")
    if word in ("quit", "exit", "q"):
        return False
    if word == "reset":
        session.history.clear()
        err_console.print("history cleared")
    elif word == "expert":
        try:
            err_console.print(session.pin(rest.strip() or "auto"))
        except ExpertkitError as error:
            err_console.print(f"[red]error:[/] {escape(error.message)} [dim]({escape(error.hint)})[/]")
    elif word == "params":
        _show_params(session.params().to_json())
    else:
        err_console.print(HELP)
    return True


def _interactive(session: Any, verbose: bool, explain: bool) -> None:
    import contextlib

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    names = ", ".join(session.engine.experts) or "base model only"
    err_console.print(f"experts: {escape(names)}. {HELP}. Ctrl-C stops a generation, Ctrl-D quits.")
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            err_console.print()
            return
        if not line:
            continue
        if line.startswith("/"):
            if not _command(session, line):
                return
            continue
        _turn(session, line, verbose, explain)


def _turn(session: Any, line: str, verbose: bool, explain: bool) -> None:
    def retry(attempt: int, validation: Any) -> None:
        err_console.print(f"\n[yellow]invalid ({escape(validation.error or '')}); retry {attempt}[/]")

    try:
        answer = session.respond(
            line, on_text=lambda piece: out_console.print(piece, end="", markup=False), on_retry=retry
        )
    except KeyboardInterrupt:
        out_console.print()
        err_console.print("[dim]generation interrupted[/]")
        return
    except ExpertkitError as error:
        err_console.print(f"[red]error:[/] {escape(error.message)}")
        return
    out_console.print()
    if answer.attempts > 1:
        out_console.print(answer.text, markup=False)
    status = (
        "valid"
        if answer.validation.valid
        else f"invalid: {answer.validation.error}"
        if answer.validation.valid is False
        else answer.validation.error
    )
    summary = f"[{answer.expert or 'base'} · {answer.result.finish_reason} · {status}]"
    err_console.print(f"[dim]{escape(summary)}[/]")
    if verbose:
        _show_params(answer.to_json()["decoding"])
    if explain:
        _show_routing(answer.routing)
