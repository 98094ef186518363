"""The FastAPI application. It never imports torch: the model pack is read as JSON here, and jobs are
enqueued by dotted path for the workers."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from service.api.routes import edits, health, jobs, model
from service.config import Settings, get_settings
from service.errors import install_error_handlers
from service.limits import BodySizeLimit
from service.schemas import EditCreate


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; tests pass their own `Settings`."""
    app = FastAPI(
        title="ials-service",
        version="0.1.0",
        summary="Disentangled face attribute editing with IALS (Instance-Aware Latent-Space Search).",
        description=(
            "POST an edit of a seed, a latent or a photo to `/v1/edits`, poll `/v1/jobs/{id}`, then "
            "fetch the artifacts it links (frames, GIF, WebP, zip, latents, scores)."
        ),
    )
    app.dependency_overrides[get_settings] = (lambda: settings) if settings is not None else get_settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=(settings or get_settings()).max_upload_bytes)
    app.include_router(health.router)
    app.include_router(model.router, prefix="/v1")
    app.include_router(edits.router, prefix="/v1")
    app.include_router(jobs.router, prefix="/v1")
    _document_models(app, EditCreate)
    return app


def _document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add request models that routes read by hand (JSON or multipart) to the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
