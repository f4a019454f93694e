"""HTTP transport (FastAPI on uvicorn)."""

from .app import create_app

__all__ = ["create_app"]
