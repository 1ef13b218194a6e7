"""Dependencies of the routes: the runtime of this process (embedded or an API process of a
cluster) and the caller's key."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request

from photo_eraser.api.auth import authenticate

if TYPE_CHECKING:
    from photo_eraser.runtime import Runtime


def get_service(request: Request) -> Runtime:
    service: Runtime = request.app.state.service
    return service


ServiceDep = Annotated["Runtime", Depends(get_service)]

AuthHeader = Annotated[
    str | None,
    Header(alias="Authorization", description="Basic base64(appkey:appsecret)"),
]


async def caller(service: ServiceDep, authorization: AuthHeader = None) -> str:
    """The appkey of the request's credentials; 401 without valid ones."""
    return await asyncio.to_thread(authenticate, authorization, service.store)


Caller = Annotated[str, Depends(caller)]
