"""Errors answered as JSON with a machine-readable `code` and a human `message`.

Every error the API answers has the body `{"code", "message", "detail"}`: the `ApiError`s raised by the
routes, FastAPI's request validation (422, with a code per field), and Starlette's own HTTP errors
(unknown route, wrong method).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

# Field name -> code of a request validation error on that field.
FIELD_CODES = {
    "steps": "invalid_steps",
    "step": "invalid_step",
    "lambda1": "invalid_lambda",
    "lambda2": "invalid_lambda",
    "seed": "invalid_seed",
    "latent": "invalid_latent",
    "primal": "invalid_attribute",
    "conditions": "invalid_attribute",
    "direction": "invalid_direction",
    "directions": "invalid_direction_kind",
    "target_score": "invalid_target_score",
    "truncation_psi": "invalid_truncation_psi",
    "effort": "invalid_effort",
    "source_job": "invalid_source_job",
}
MAX_DETAIL_ERRORS = 20  # Validation errors listed in a 422's `detail`.
STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "queue_full",
}


class ApiError(HTTPException):
    """An error the API answers with `status_code` and body `{"code", "message", "detail"}`.

    It is an `HTTPException`, so FastAPI lets it through when it is raised while the body is read
    (the size limit) rather than turning it into a generic 400.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=dict(headers or {}))
        self.code = code
        self.message = message
        self.extra = detail


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "detail": detail}


def validation_code(errors: Sequence[Any]) -> str:
    """The code of a pydantic error list: that of the first field with a known code."""
    for error in errors:
        if error.get("type") == "missing":
            return "missing_field"
        for part in error.get("loc", ()):
            if isinstance(part, str) and part in FIELD_CODES:
                return FIELD_CODES[part]
        if error.get("type") in ("json_invalid", "json_type"):
            return "invalid_json"
    return "invalid_request"


def _plain_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic errors reduced to JSON-safe `loc`, `msg` and `type` (no input echo, no ctx objects)."""
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the `{"code", "message", "detail"}` body."""

    async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if isinstance(exc, ApiError):
            body = error_body(exc.code, exc.message, exc.extra)
        else:
            code = STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
            body = error_body(code, str(exc.detail))
        return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)

    async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        code = validation_code(errors)
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))
        if len(errors) > MAX_DETAIL_ERRORS:  # The body stays small whatever the request.
            message += f" ({len(errors)} errors; detail lists the first {MAX_DETAIL_ERRORS})"
        detail = _plain_errors(errors[:MAX_DETAIL_ERRORS])
        return JSONResponse(status_code=422, content=error_body(code, message, detail))

    async def handle_redis_error(request: Request, exc: Exception) -> JSONResponse:
        body = error_body("redis_unavailable", f"Redis is not reachable: {exc}")
        return JSONResponse(status_code=503, content=body, headers={"Retry-After": "5"})

    app.add_exception_handler(HTTPException, handle_http_error)
    app.add_exception_handler(RedisError, handle_redis_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
