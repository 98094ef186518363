"""The FastAPI application. It never imports torch: the model pack is read as JSON here."""

from __future__ import annotations

from fastapi import FastAPI

from service.api.routes import health, model
from service.config import Settings, get_settings
from service.errors import install_error_handlers


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; tests pass their own `Settings`."""
    app = FastAPI(
        title="ials-service",
        version="0.1.0",
        summary="Disentangled face attribute editing with IALS (Instance-Aware Latent-Space Search).",
    )
    app.dependency_overrides[get_settings] = (lambda: settings) if settings is not None else get_settings
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(model.router, prefix="/v1")
    return app


app = create_app()
