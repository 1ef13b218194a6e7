"""The OpenAPI document: every status a route can answer, with its envelope and codes.

Routes declare their errors with `errors(...)`; FastAPI's own 422 entries are removed, since
a validation error here is a 400 envelope (see `errors.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from photo_eraser.api.errors import CODE_TABLE, Code
from photo_eraser.api.schemas import Envelope

_REF_TEMPLATE = "#/components/schemas/{model}"
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


def _authorization_as_security(operation: dict[str, Any]) -> None:
    """The routes read ``Authorization`` as a header parameter; OpenAPI says tools must ignore
    a parameter of that name, and describes it as a security requirement instead."""
    params = operation.get("parameters", [])
    kept = [p for p in params if not (p["in"] == "header" and p["name"] == "Authorization")]
    if len(kept) != len(params):
        operation["security"] = [{"basic": []}]
        if kept:
            operation["parameters"] = kept
        else:
            operation.pop("parameters")


_REFERENCED: dict[str, type[BaseModel]] = {}


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A ``$ref`` to ``model``'s schema, added to the document's components (for bodies that
    routes read by hand and describe in ``openapi_extra``)."""
    _REFERENCED[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def install(app: FastAPI) -> None:
    """Serve the document without FastAPI's 422 entries (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                webhooks=app.webhooks.routes,
            )
            for path in [*schema.get("paths", {}).values(), *schema.get("webhooks", {}).values()]:
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
                    _authorization_as_security(operation)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            for name, model in _REFERENCED.items():
                components[name] = model.model_json_schema(ref_template=_REF_TEMPLATE)
            schema["components"]["securitySchemes"] = {
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "appkey as the user name, appsecret as the password",
                }
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
