"""Request and response bodies of the API."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
