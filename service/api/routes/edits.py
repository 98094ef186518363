"""POST /v1/edits: accept an edit (JSON or multipart), enqueue it, answer 202 with the job's URL."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from service.deps import SettingsDep
from service.edits import Uploads, accept_edit
from service.errors import ApiError
from service.schemas import EditCreate, ErrorPublic, JobCreated

router = APIRouter(tags=["edits"])

_FILE_FIELDS = ("image", "latent")
_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["primal"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "A photo: PNG, JPEG or WebP."},
        "latent": {
            "type": "string",
            "format": "binary",
            "description": ".npy of shape [w_dim], [1, w_dim], [num_ws, w_dim] or [1, num_ws, w_dim].",
        },
        "seed": {"type": "integer"},
        "primal": {"type": "string", "example": "smiling"},
        "conditions": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Repeat the field, or separate names by commas.",
        },
        "direction": {"type": "string", "enum": ["increase", "decrease"]},
        "steps": {"type": "integer"},
        "step": {"type": "number"},
        "lambda1": {"type": "number"},
        "lambda2": {"type": "number"},
        "directions": {"type": "string", "enum": ["interfacegan", "averaged", "ganspace"]},
        "target_score": {"type": "number"},
        "truncation_psi": {"type": "number"},
        "effort": {"type": "string", "enum": ["encoder", "fast", "balanced", "best"]},
        "source_job": {"type": "string"},
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic, "description": text}
    for code, text in {
        400: "Malformed JSON or multipart body.",
        404: "`source_job` not found.",
        409: "`source_job` is not finished.",
        413: "Request body too large.",
        415: "Unsupported content type or image format.",
        422: "Invalid edit: unknown attribute, bad latent, unreadable image, too many steps, ...",
        429: "Too many queued jobs; see Retry-After.",
        503: "No model pack or no Redis.",
    }.items()
}


@router.post(
    "/edits",
    status_code=202,
    response_model=JobCreated,
    responses=_ERRORS,
    summary="Start an edit of a seed, a latent or a photo",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/EditCreate"}},
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            },
        }
    },
)
async def create_edit(request: Request, response: Response, settings: SettingsDep) -> JobCreated:
    """Answers 202 with the job id and a `Location` header; poll `GET /v1/jobs/{id}`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        edit, uploads = await _read_json(request), Uploads()
    elif content_type == "multipart/form-data":
        edit, uploads = await _read_form(request)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send application/json or multipart/form-data, got {content_type or 'no content type'!r}",
        )
    created = await run_in_threadpool(accept_edit, settings, edit, uploads)
    response.headers["Location"] = created.url
    return created


def _validate(fields: Any) -> EditCreate:
    try:
        return EditCreate.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


async def _read_json(request: Request) -> EditCreate:
    body = await request.body()
    try:
        fields = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body's JSON is nested too deeply") from None
    if not isinstance(fields, dict):
        raise ApiError(422, "invalid_request", "the JSON body must be an object")
    return _validate(fields)


async def _read_form(request: Request) -> tuple[EditCreate, Uploads]:
    try:
        form: FormData = await request.form(max_files=len(_FILE_FIELDS), max_fields=64)
    except ApiError:
        raise
    except HTTPException as exc:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc.detail}") from None
    try:
        fields: dict[str, Any] = {}
        uploads = Uploads()
        for name in dict.fromkeys(form.keys()):
            values = form.getlist(name)
            if name in _FILE_FIELDS:
                if len(values) != 1 or not isinstance(values[0], UploadFile):
                    raise ApiError(422, f"invalid_{name}_file", f"{name!r} must be one uploaded file")
                setattr(uploads, name, await values[0].read())
            elif any(isinstance(v, UploadFile) for v in values):
                raise ApiError(422, "invalid_request", f"{name!r} must be a plain field, not a file")
            elif name == "conditions":
                fields[name] = [c.strip() for v in values for c in str(v).split(",") if c.strip()]
            elif len(values) != 1:
                raise ApiError(422, "duplicate_field", f"the field {name!r} is given {len(values)} times")
            elif str(values[0]) != "":
                fields[name] = str(values[0])
    finally:
        await form.close()
    return _validate(fields), uploads
