"""Errors answered as JSON with a machine-readable `code` and a human `message`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error the API answers with `status_code` and body `{"code", "message", "detail"}`."""

    def __init__(self, status_code: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.detail = detail


def install_error_handlers(app: FastAPI) -> None:
    """Register the handler that turns `ApiError` into its JSON body."""

    async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        body = {"code": exc.code, "message": exc.message, "detail": exc.detail}
        return JSONResponse(status_code=exc.status_code, content=body)

    app.add_exception_handler(ApiError, handle_api_error)
