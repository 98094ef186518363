"""Request and response bodies of the API."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema


class ErrorPublic(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. `pack_unavailable`.")
    message: str = Field(description="What went wrong, for a human.")
    detail: object | None = None


class AttributePublic(BaseModel):
    name: str = Field(examples=["smiling"])
    description: str = ""
    directions: list[str] = Field(
        description="Attribute-level direction kinds available.", examples=[["interfacegan", "averaged"]]
    )
    has_evaluator: bool = Field(
        description="Whether an independent evaluator classifier scores this attribute."
    )


class EditDefaults(BaseModel):
    step: float
    steps: int
    lambda1: float
    lambda2: float
    truncation_psi: float
    direction_kind: str


class ModelPublic(BaseModel):
    name: str
    description: str = ""
    generator_kind: str = Field(examples=["stylegan2"])
    img_resolution: int | None = None
    w_dim: int | None = None
    num_ws: int | None = None
    attributes: list[AttributePublic]
    defaults: EditDefaults


# ----------------------------------------------------------------------------
# Edits and jobs.

ATTRIBUTE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
DIRECTION_KINDS = ("interfacegan", "averaged", "ganspace")
EFFORTS = ("encoder", "fast", "balanced", "best")  # Presets of models.inversion.EFFORTS.
MAX_SEED = 2**32 - 1
MAX_CONDITIONS = 16

DirectionKind = Literal["interfacegan", "averaged", "ganspace"]
Effort = Literal["encoder", "fast", "balanced", "best"]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _not_a_bool(value: Any) -> Any:
    """Refuse JSON `true`/`false`, which pydantic would otherwise take as the integers 1 and 0."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinite float, at any depth, replaced by None.

    Strict JSON (the API's responses) has no NaN or Infinity; a metric such as PSNR can be infinite.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    return value


MAX_LATENT_VALUES = 2**20  # A single latent is at most num_ws * w_dim values (18 * 512 for FFHQ).


def _json_latent(value: Any) -> Any:
    """Check a JSON latent in one pass: lists nested 1 to 3 deep, of numbers (not booleans), at most
    `MAX_LATENT_VALUES` of them. The first bad entry is the one error, so a large bad body cannot make
    an error list (and response) many times its size, as typing the field as a union of nested
    `list[float]` would. Shape and values are checked against the pack by `service.uploads.check_latent`.
    """
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("must be a list of numbers (or of lists of numbers)")
    count = 0
    pending: list[tuple[list[Any], int]] = [(value, 1)]
    while pending:
        items, depth = pending.pop()
        for item in items:
            if isinstance(item, list):
                if depth == 3:
                    raise ValueError("lists nest at most 3 deep ([1, num_ws, w_dim])")
                pending.append((item, depth + 1))
                continue
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ValueError(f"entries must be numbers, got {type(item).__name__}")
            if isinstance(item, int) and abs(item) > 2**64:
                raise ValueError("a number is out of range")
            count += 1
            if count > MAX_LATENT_VALUES:
                raise ValueError(f"holds more than {MAX_LATENT_VALUES} numbers")
    return value


JsonLatent = Annotated[
    Any,
    BeforeValidator(_json_latent),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "number"}},
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                },
                {"type": "null"},
            ]
        }
    ),
]


# An integer, never a boolean (form fields still arrive as digit strings, so not pydantic's strict mode).
StrictInt = Annotated[int, BeforeValidator(_not_a_bool)]
AttributeName = Annotated[str, Field(pattern=ATTRIBUTE_PATTERN)]


class EditParams(BaseModel):
    """The edit, in the JSON body or as form fields. Unset values take the pack's defaults."""

    model_config = ConfigDict(extra="forbid")

    primal: AttributeName = Field(description="The attribute to change.", examples=["young"])
    conditions: list[AttributeName] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Attributes to keep while the primal changes.",
        examples=[["eyeglasses"]],
    )
    direction: Literal["increase", "decrease"] = Field(
        default="increase", description="Raise or lower the primal attribute."
    )
    steps: StrictInt | None = Field(default=None, ge=1, description="Number of steps n (n + 1 frames).")
    step: FiniteFloat | None = Field(
        default=None, gt=0, le=10, description="Step size k in W (paper: 0.1); `direction` sets its sign."
    )
    lambda1: FiniteFloat | None = Field(
        default=None, ge=0, le=1, description="Weight of the primal's attribute-level direction (0.75)."
    )
    lambda2: FiniteFloat | None = Field(
        default=None, ge=0, le=1, description="Weight of the conditions' attribute-level directions (0)."
    )
    directions: DirectionKind | None = Field(
        default=None,
        description="Attribute-level directions to build on. With lambda1 = lambda2 = 1 the edit is "
        "exactly that baseline (conditional InterfaceGAN, ...).",
    )
    target_score: FiniteFloat | None = Field(
        default=None, ge=0, le=1, description="Stop once the primal's probability crosses this."
    )
    truncation_psi: FiniteFloat | None = Field(
        default=None, ge=-2, le=2, description="Truncation psi (seeds: the pack's default; latents: none)."
    )
    effort: Effort | None = Field(default=None, description="Inversion effort of a photo.")
    source_job: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{32}$",
        description="A finished job whose input latent (or photo) this edit starts from.",
    )


class EditCreate(EditParams):
    """A JSON edit request: the edit and exactly one of `seed`, `latent` and `source_job`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"seed": 7, "primal": "young", "conditions": ["eyeglasses"], "steps": 20},
                {"source_job": "0123456789abcdef0123456789abcdef", "primal": "smiling"},
            ]
        },
    )

    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED, description="Seed of a generated face.")
    latent: JsonLatent = Field(
        default=None,
        description="A latent as nested lists: [w_dim], [1, w_dim], [num_ws, w_dim] or [1, num_ws, w_dim].",
    )


class SourceSpec(BaseModel):
    """Where a job's start latent comes from, resolved by the API."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["seed", "latent", "image"]
    seed: int | None = None
    key: str | None = None  # Store key of the uploaded latent (.npy) or photo.
    sha256: str | None = None  # Of the upload's bytes (the inversion cache key's first part).


class EditJob(BaseModel):
    """What a worker receives: an accepted edit, every default filled in (plain JSON values)."""

    model_config = ConfigDict(extra="forbid")

    source: SourceSpec
    primal: str
    conditions: list[str]
    steps: int
    step: float  # Signed: positive raises the primal attribute.
    lambda1: float
    lambda2: float
    directions: str
    target_score: float | None = None
    truncation_psi: float | None = None
    effort: str | None = None
    source_job: str | None = None


JobStatus = Literal["queued", "started", "finished", "failed", "canceled"]


class JobCreated(BaseModel):
    id: str = Field(examples=["0123456789abcdef0123456789abcdef"])
    url: str = Field(examples=["/v1/jobs/0123456789abcdef0123456789abcdef"])
    status: JobStatus = "queued"


class JobProgress(BaseModel):
    step: int
    total: int


class JobError(BaseModel):
    code: str = Field(examples=["no_face_found"])
    message: str


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    stage: Literal["queued", "align", "invert", "edit", "render", "done"] | None = None
    progress: JobProgress | None = None
    timings: dict[str, float | bool] = Field(
        default_factory=dict,
        description="Seconds per stage and in total; for photos `cached`: whether the alignment and "
        "inversion came from the cache (same photo, pack and effort).",
    )
    request: dict[str, Any] | None = Field(default=None, description="The request as accepted.")
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    artifacts: dict[str, str] | None = Field(default=None, description="Artifact name -> URL, once finished.")
    result: dict[str, Any] | None = Field(default=None, description="Scores summary, stop frame, inversion.")
    error: JobError | None = None
