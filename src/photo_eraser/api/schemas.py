"""Request and response bodies of the API (separate from storage tables)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from photo_eraser.fetch import FetchError, parse_url

MAX_URL_LENGTH = 2048


def check_http_url(value: str) -> str:
    """Accept what the downloader accepts (absolute http(s), a host, no credentials)."""
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    try:
        parse_url(value)
    except FetchError as exc:
        raise ValueError(exc.reason) from None
    return value.strip()


class CreateTaskRequest(BaseModel):
    """Body of ``POST /v3/pic/rw/batch``. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    # Each URL is checked on its own, so an error names the entry: "images.2: ...".
    images: list[Annotated[StrictStr, AfterValidator(check_http_url)]] = Field(
        min_length=1, description="1 to 20 http(s) image URLs"
    )
    mask: StrictStr = Field(min_length=1, description="mask as a URL, raw base64 or data: URI")
    priority: StrictInt = Field(ge=0, le=9, description="0 (lowest) to 9 (highest)")
    engine: StrictStr = Field(
        default="auto", description="extension: auto, opencv, lama or restore"
    )


class ResultItem(BaseModel):
    image_result: str
    status: str
    reason: str
    method: str | None = Field(
        default=None, description="extension: how the image was restored (engine name)"
    )
    recovered_share: float | None = Field(
        default=None,
        description="extension, engine restore: share of masked pixels recovered, not inpainted",
    )


class ResultData(BaseModel):
    status: str
    wait_time: str
    list: list[ResultItem]
