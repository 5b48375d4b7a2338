"""``expert-cli package | keygen | sign | verify``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from expertkit.cli.console import err_console, out_console, reports_errors


@reports_errors
def package(
    manifest: Path = typer.Option(
        Path(),
        "--expert",
        "--manifest",
        help="Expert directory (holding manifest.json) or manifest file. --manifest is its old name (until 0.3).",
    ),
    weights: Path | None = typer.Option(None, "--weights", help="Weights directory (default: weights/ beside it)."),
    model: str | None = typer.Option(None, "--model", help="Base model to package (one trained model: picked)."),
    output: Path | None = typer.Option(None, "--output", help="Directory to write the package to (default: .)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    require_gate: bool = typer.Option(False, "--require-gate", help="Refuse unless the last eval passed its gate."),
    measure: bool = typer.Option(
        True,
        "--measure/--no-measure",
        help="Measure the expert on this machine (speed, latency and memory against the base model) "
        "and ship it as the manifest's perf; --no-measure ships no perf.",
    ),
    dtype: str = typer.Option("auto", "--dtype", help="dtype to measure in: auto (bf16 where the CPU has it), ..."),
) -> None:
    """Build <name>-<model>.v<version>.expert (deterministic tar.gz with expert.lock.json) and its .sha256."""
    from expertkit.package.build import PackageRequest
    from expertkit.workflows.ship import package_measured

    request = PackageRequest(manifest, weights, model, output, require_gate)
    with err_console.status("packaging and measuring on this machine…" if measure else "packaging…"):
        result = package_measured(request, measure=measure, dtype=dtype)  # type: ignore[arg-type]
    perf = result.manifest.perf
    if as_json:
        files = {"package": str(result.path), "sha256": result.sha256, "checksum": str(result.checksum_path)}
        measured = perf.model_dump(mode="json", exclude_none=True) if perf else None
        print(json.dumps({**files, "files": result.files, "perf": measured}, indent=2))
        return
    out_console.print(f"wrote {escape(str(result.path))} ({result.path.stat().st_size:,} bytes)")
    out_console.print(f"  sha256 {result.sha256} → {escape(result.checksum_path.name)}")
    for name in sorted(result.files):
        out_console.print(f"  {escape(name)}")
    if perf is not None:
        out_console.print(perf_line(perf))


def perf_line(perf: Any) -> str:
    """One line of the measured figures, e.g. ``perf (cpu, bfloat16): 41.2 tokens/s at batch 1 ...``."""
    machine = perf.measured_on
    rates = ", ".join(f"{rate:g} tokens/s at batch {batch}" for batch, rate in (perf.tokens_per_s or {}).items())
    memory = f"+{perf.memory_mb_overhead:g} MiB" if perf.memory_mb_overhead is not None else "memory not measured"
    where = f"{machine.device}, {machine.dtype}" if machine else "this machine"
    return (
        f"perf ({escape(where)}): {rates} (base model {perf.base_tokens_per_s:g} at batch 1); "
        f"+{perf.latency_ms_overhead:g} ms per request; {memory}"
    )


@reports_errors
def keygen(
    out: Path = typer.Option(..., "--out", help="Directory for expert.key (private, 0600) and expert.pub."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing keys."),
) -> None:
    """Create an Ed25519 signing key pair."""
    from expertkit.package.signing import keygen as make_keys

    key, pub, key_id = make_keys(out, force)
    out_console.print(
        f"private key {escape(str(key))} (keep it secret)\npublic key  {escape(str(pub))}\nkey id      {key_id}"
    )


@reports_errors
def sign(
    package_path: Path = typer.Argument(..., metavar="PACKAGE", help="The .expert file."),
    key: Path = typer.Option(..., "--key", help="Private key (expert.key from keygen)."),
) -> None:
    """Sign a package's file digests; writes PACKAGE.sig and never changes the package."""
    from expertkit.package.verify import sign_package

    path, key_id = sign_package(package_path, key)
    out_console.print(f"signed {escape(package_path.name)} with {key_id} → {escape(str(path))}")


@reports_errors
def verify(
    package_path: Path = typer.Argument(..., metavar="PACKAGE", help="The .expert file."),
    key: Path | None = typer.Option(None, "--key", help="The signer's public key (expert.pub)."),
    trusted_keys: Path | None = typer.Option(None, "--trusted-keys", help="Directory of trusted *.pub keys."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check the checksum, every file digest, the lock and the signature; exit 1 on any problem."""
    from expertkit.package.signing import load_public_key
    from expertkit.package.signing import trusted_keys as load_trusted
    from expertkit.package.verify import inspect_package

    keys = ([load_public_key(key)] if key else []) + (load_trusted(trusted_keys) if trusted_keys else [])
    report = inspect_package(package_path, keys or None, require_signature=bool(keys))
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        raise typer.Exit(0 if report.ok else 1)
    for problem in report.problems:
        out_console.print(f"[red]✗[/] {escape(problem)}")
    for warning in report.warnings:
        out_console.print(f"[yellow]![/] {escape(warning)}")
    if not report.ok:
        err_console.print(f"[bold red]error:[/] {escape(package_path.name)} failed verification")
        raise typer.Exit(1)
    signer = (
        f"signed by {report.signer} ({escape(report.trusted_source or '')})" if report.trusted else "integrity only"
    )
    out_console.print(f"[green]✓[/] {escape(package_path.name)}: {len(report.scan.members)} files intact, {signer}")
