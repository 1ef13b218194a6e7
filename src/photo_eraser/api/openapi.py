"""The OpenAPI document: every status a route can answer, with its envelope and codes.

Routes declare their errors with `errors(...)`; FastAPI's own 422 entries are removed, since
a validation error here is a 400 envelope (see `errors.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from photo_eraser.api.errors import CODE_TABLE, Code
from photo_eraser.api.schemas import Envelope

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def errors(*codes: Code) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these error codes, grouped by HTTP status."""
    by_status: dict[int, list[Code]] = {}
    for code in codes:
        by_status.setdefault(code.http_status, []).append(code)
    out: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        entry: dict[str, Any] = {
            "model": Envelope,
            "description": "; ".join(f"`{int(c)}`: {CODE_TABLE[c]}" for c in group),
        }
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


def install(app: FastAPI) -> None:
    """Serve the document without FastAPI's 422 entries (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
