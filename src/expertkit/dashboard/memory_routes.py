"""The memory calculator's page (``/memory``, a GET form: usable without JavaScript) and ``/api/memory``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from expertkit.dashboard.memory import (
    CPU_PRESET,
    GPU_PRESETS,
    Calculator,
    CalculatorUnavailableError,
    presets,
    ready_models,
)
from expertkit.dashboard.render import page
from expertkit.errors import UsageError
from expertkit.train.estimate_report import ShapeRequest

FIELDS = set(ShapeRequest.model_fields) - {"device"}
COLOURS = ("#1f6feb", "#8250df", "#d29922", "#1a7f37", "#cf222e", "#0598bc", "#bf3989", "#6e7781", "#953800")


def form_values(query: dict[str, str]) -> tuple[dict[str, Any], str]:
    """The calculator's inputs from a query string (targets comma-separated, a checkbox for checkpointing)."""
    values: dict[str, Any] = {k: v for k, v in query.items() if k in FIELDS and v != ""}
    if "targets" in values:
        values["targets"] = [t.strip() for t in values["targets"].split(",") if t.strip()]
    values["gradient_checkpointing"] = query.get("gradient_checkpointing") in ("on", "true", "1")
    return values, query.get("preset", "H100 (80 GB)")


def breakdown(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The stacked bar's segments: each component's MiB and its share of the total."""
    scale = max(report["total_mib"], 1e-9)
    return [
        {"name": name, "mib": mib, "percent": 100 * mib / scale, "colour": COLOURS[i % len(COLOURS)]}
        for i, (name, mib) in enumerate(report["components_mib"].items())
    ]


def install_memory_routes(app: FastAPI) -> Calculator:
    calculator = Calculator()

    @app.get("/memory", response_class=HTMLResponse)
    async def memory_page(request: Request) -> HTMLResponse:
        query = dict(request.query_params)
        values, preset = form_values(query)
        report, error = None, None
        if query:
            try:
                report = await calculator.estimate(values, preset)
            except UsageError as exc:
                error = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
            except CalculatorUnavailableError as exc:
                error = str(exc)
        defaults = ShapeRequest().model_dump()
        shown = {**defaults, **values, "targets": ",".join(values.get("targets", defaults["targets"]))}
        context = {
            "values": shown,
            "preset": preset,
            "presets": presets(),
            "models": list(ready_models()),
            "report": report,
            "segments": breakdown(report) if report else [],
            "error": error,
        }
        return page(request, "memory.html", "memory", status=400 if error else 200, **context)

    @app.get("/api/memory")
    async def memory_api(request: Request) -> dict[str, Any]:
        values, preset = form_values(dict(request.query_params))
        try:
            report = await calculator.estimate(values, preset)
        except CalculatorUnavailableError as exc:
            raise HTTPException(503, str(exc)) from exc
        return {**report, "breakdown": breakdown(report)}

    @app.get("/api/memory/presets")
    def memory_presets() -> dict[str, Any]:
        return {"presets": presets(), "gpu": list(GPU_PRESETS), "cpu": CPU_PRESET, "models": list(ready_models())}

    return calculator
