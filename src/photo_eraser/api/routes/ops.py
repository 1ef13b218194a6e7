"""Operations routes: health and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from photo_eraser.api.deps import ServiceDep
from photo_eraser.api.errors import Code, envelope
from photo_eraser.api.openapi import errors
from photo_eraser.api.schemas import Health, HealthData

router = APIRouter(tags=["ops"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": errors(Code.DISK_FULL)[503]["description"],
        }
    },
)
async def healthz(service: ServiceDep) -> JSONResponse:
    """200 while the server takes tasks; 503 when it is degraded (disk nearly full)."""
    disk = service.disk.state()
    if disk.low:
        return envelope(
            Code.DISK_FULL,
            f"degraded: {disk.describe()}; new tasks are refused until space is freed",
            data=HealthData(status="degraded", disk_free_bytes=disk.free_bytes).model_dump(
                exclude_none=True
            ),
        )
    data = HealthData(status="ok", engines=service.engines.availability())
    return envelope(Code.OK, data=data.model_dump(exclude_none=True))


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics of this server process (text exposition format)."""
    body = await asyncio.to_thread(generate_latest, service.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
