"""Dependencies of the routes: the runtime of this process (embedded, or an API process of a
cluster), the parts of it a route needs, and the caller's key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request

from photo_eraser.api.auth import authenticate
from photo_eraser.storage import BlobStore, UrlSigner
from photo_eraser.tasks.aio import AsyncTaskStore

if TYPE_CHECKING:
    from photo_eraser.runtime import Runtime


# The dependencies are coroutines though they do not wait: FastAPI runs a plain function in
# its thread pool, a thread hop per dependency on every request.


async def get_service(request: Request) -> Runtime:
    service: Runtime = request.app.state.service
    return service


ServiceDep = Annotated["Runtime", Depends(get_service)]


async def get_store(service: ServiceDep) -> AsyncTaskStore:
    return service.store


async def get_blobs(service: ServiceDep) -> BlobStore:
    return service.blobs


async def get_signer(service: ServiceDep) -> UrlSigner:
    return service.signer


Store = Annotated[AsyncTaskStore, Depends(get_store)]
Blobs = Annotated[BlobStore, Depends(get_blobs)]
Signer = Annotated[UrlSigner, Depends(get_signer)]

AuthHeader = Annotated[
    str | None,
    Header(alias="Authorization", description="Basic base64(appkey:appsecret)"),
]


async def caller(store: Store, authorization: AuthHeader = None) -> str:
    """The appkey of the request's credentials; 401 without valid ones."""
    return await authenticate(authorization, store)


Caller = Annotated[str, Depends(caller)]
