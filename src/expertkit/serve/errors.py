"""OpenAI-style error objects, and the handlers that turn every failure into one (never a traceback)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from expertkit.serve.responses import ErrorBody, ErrorDetail

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}

    def body(self) -> ErrorBody:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        if self.status == 429:
            kind = "rate_limit_error"
        return ErrorBody(error=ErrorDetail(message=self.message, type=kind, param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().to_json(), status_code=self.status, headers=self.headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI, on_error: Any = None) -> None:
    """Every error becomes ``{"error": {message, type, param, code}}`` with a 4xx/5xx status."""

    def record(kind: str) -> None:
        if on_error is not None:
            on_error(kind)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        record(exc.code or str(exc.status))
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            record("invalid_json")
            return APIError(400, "the request body is not valid JSON", code="invalid_json").response()
        record("invalid_request")
        param = _location(tuple(first.get("loc", ())))
        return APIError(400, f"{param}: {first.get('msg')}", param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        record(str(exc.status_code))
        return APIError(exc.status_code, str(exc.detail), code=str(exc.status_code)).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        record("internal")
        return APIError(500, f"internal error: {type(exc).__name__}", code="internal_error").response()
