"""Rendering shared by the dashboard's routes: the Jinja2 templates and the JSON error body."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


TEMPLATES.env.filters["duration"] = _duration
TEMPLATES.env.filters["clock"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def error_json(status: int, message: str, hint: str = "") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "hint": hint}}, status_code=status)


def page(request: Request, template: str, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page of the dashboard (``name`` marks its tab), with the queue it reads in the header."""
    queue_url = request.app.state.queue_url
    values = {"title": name, "page": name, "queue_url": queue_url, "status": status, **context}
    return TEMPLATES.TemplateResponse(request, template, values, status_code=status)
