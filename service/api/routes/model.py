"""What the loaded model pack offers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import SettingsDep
from service.pack_info import read_model_info
from service.schemas import AttributePublic, ErrorPublic, ModelPublic

router = APIRouter(tags=["model"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorPublic, "description": "No usable model pack is configured."}
}


@router.get("/model", response_model=ModelPublic, responses=_ERRORS, summary="The model pack in use")
def get_model(settings: SettingsDep) -> ModelPublic:
    return read_model_info(settings.pack_path)


@router.get(
    "/attributes", response_model=list[AttributePublic], responses=_ERRORS, summary="Editable attributes"
)
def get_attributes(settings: SettingsDep) -> list[AttributePublic]:
    return read_model_info(settings.pack_path).attributes
