"""Request and response bodies of the API (separate from storage tables).

The response models are what the OpenAPI document promises; the routes build their answers
from them, so the document cannot drift from what is sent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from photo_eraser.engines.registry import ENGINE_NAMES
from photo_eraser.fetch import FetchError, parse_url
from photo_eraser.imaging.mask import MAX_DILATE, Anchor, Fit

MAX_URL_LENGTH = 2048
MAX_IMAGES = 20
MAX_SYNC_SECONDS = 30
MAX_RECTANGLES = 50
MAX_BASIS_SIDE = 5000


def check_http_url(value: str) -> str:
    """Accept what the downloader accepts (absolute http(s), a host, no credentials)."""
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    try:
        parse_url(value)
    except FetchError as exc:
        raise ValueError(exc.reason) from None
    return value.strip()


ImageUrl = Annotated[
    StrictStr,
    AfterValidator(check_http_url),
    Field(
        max_length=MAX_URL_LENGTH,
        json_schema_extra={"format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"},
    ),
]


Rectangle = Annotated[
    list[Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]],
    Field(min_length=4, max_length=4, description="[x, y, w, h]"),
]
Basis = Annotated[
    list[Annotated[StrictInt, Field(ge=1, le=MAX_BASIS_SIDE)]],
    Field(min_length=2, max_length=2, description="[width, height] in pixels"),
]


class CreateTaskRequest(BaseModel):
    """Body of ``POST /v3/pic/rw/batch``. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", title="CreateTaskRequest")

    # Each URL is checked on its own, so an error names the entry: "images.2: ...".
    images: list[ImageUrl] = Field(
        min_length=1,
        max_length=MAX_IMAGES,
        description="1 to 20 absolute http(s) image URLs (PNG, JPEG or BMP)",
    )
    mask: StrictStr | None = Field(
        default=None,
        min_length=1,
        description="the mask: an http(s) URL, raw base64 of an image file, or a data: URI; "
        "white / non-zero / opaque pixels mark the area to restore. Required unless "
        "`rectangles` is given (exactly one of the two). Extension: `auto` finds the watermark "
        "the batch's images share and restores it (at least 4 images; reliable from 8, see "
        "docs/detect.md); a batch without one fails with the reason 'no shared watermark "
        "found in N images; send a mask'",
    )
    priority: StrictInt = Field(
        ge=0, le=9, description="0 (lowest) to 9 (highest); a JSON integer, not 1.0 or '1'"
    )
    engine: Literal[ENGINE_NAMES] = Field(  # type: ignore[valid-type]
        default="auto", description="extension: auto, opencv, lama, patchmatch or restore"
    )
    sync: StrictInt = Field(
        default=0,
        ge=0,
        le=MAX_SYNC_SECONDS,
        description="extension: seconds (0..30) to wait for the task to finish; if it does, "
        "the answer also holds the result under data.result",
    )
    rectangles: list[Rectangle] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_RECTANGLES,
        description="extension, instead of `mask`: up to 50 boxes [x, y, w, h] to restore, in "
        "pixels of `rect_basis` (default: of the first image), or, when every value is within "
        "0..1 and no `rect_basis` is given, as fractions of each image",
    )
    rect_basis: Basis | None = Field(
        default=None,
        description="extension: [width, height] the pixel `rectangles` refer to; the mask "
        "drawn at this size is stretched to each image. Default: the first image's size",
    )
    mask_fit: Fit | None = Field(
        default=None,
        description="extension: how the mask is placed on an image of another size: stretch "
        "(default: resized to it, aspect ignored), contain (scaled uniformly to fit inside it, "
        "centred) or anchor (scaled by image short side / mask short side, placed at "
        "`mask_anchor`, the rest cut off)",
    )
    mask_anchor: Anchor | None = Field(
        default=None,
        description="extension, with mask_fit anchor: top-left, top, top-right, left, center "
        "(default), right, bottom-left, bottom or bottom-right",
    )
    mask_dilate: StrictInt = Field(
        default=0,
        ge=0,
        le=MAX_DILATE,
        description="extension: grow the marked area by 0..64 pixels of each image, after the "
        "mask is placed on it",
    )
    mask_invert: StrictBool = Field(
        default=False,
        description="extension: restore what the mask does not mark (after placement and dilation)",
    )
    callback_url: ImageUrl | None = Field(
        default=None,
        description="extension: an http(s) URL (at most 2048 characters, no credentials, a "
        "public address) that gets the result envelope by POST once the task has a final "
        "status, signed with the key's webhook secret (X-PhotoEraser-Signature), retried with "
        "backoff until a 2xx; see data.callback of the result and docs/webhooks.md",
    )


class Envelope(BaseModel):
    """Every response body: ``code`` 0 on success, else the error code; ``msg`` says why."""

    code: int = Field(description="0, or an error code; HTTP status = code // 100")
    msg: str
    data: dict[str, Any] = Field(description="the result; {} on errors")


class CreatedData(BaseModel):
    task_id: str
    result: ResultData | None = Field(
        default=None,
        description="extension, with `sync`: the finished task's result (as the result route "
        "answers it); absent if the task did not finish within `sync` seconds",
    )


class Created(Envelope):
    data: CreatedData  # type: ignore[assignment]


class ResultItem(BaseModel):
    image_result: str = Field(description="signed URL of the result, or '' until it is done")
    status: str = Field(description="1 waiting, 2 processing, 3 done, 4 failed")
    reason: str = Field(description="why the image failed; '' otherwise")
    method: str | None = Field(
        default=None, description="extension: how the image was restored (engine name)"
    )
    recovered_share: float | None = Field(
        default=None,
        description="extension, engine restore: share of masked pixels recovered, not inpainted",
    )


ResultItems = list[ResultItem]  # the field below is named "list", as in the seed contract


class CallbackState(BaseModel):
    """Where a task's callback stands (extension ``callback_url``)."""

    status: Literal["pending", "delivered", "failed"] = Field(
        description="pending: not sent yet (the task is not finished) or to be sent again; "
        "delivered: a 2xx answer; failed: given up after the retry time"
    )
    attempts: int = Field(description="attempts made so far (a repeat after a crash counts)")
    delivery_id: str = Field(
        description="sent as X-PhotoEraser-Delivery, the same on every attempt"
    )
    last_status_code: int | None = Field(
        default=None, description="the HTTP status of the last attempt's answer, if any"
    )
    last_error: str | None = Field(
        default=None, description="why the last attempt failed; absent once delivered"
    )


class ResultData(BaseModel):
    task_id: str | None = Field(
        default=None, description="extension: in callback bodies only (which task this is)"
    )
    status: str = Field(
        description="1 waiting, 2 in progress, 3 complete, 4 failed, 5 closed, 6 timed out"
    )
    wait_time: str = Field(description="seconds until the next useful poll; '0' when finished")
    list: ResultItems = Field(description="one entry per input image, in input order")
    callback: CallbackState | None = Field(
        default=None, description="extension: the callback's state, for a task with callback_url"
    )
    detected_mask: str | None = Field(
        default=None,
        description="extension, with mask auto: signed URL of the mask found in the batch "
        "(PNG, white = restored, in the largest image's size); absent until the task is "
        "complete, and when no mark was found",
    )


class Result(Envelope):
    data: ResultData  # type: ignore[assignment]


class ClosedData(BaseModel):
    task_id: str
    status: str = Field(description="the task's status after the call (5 if it was closed)")


class Closed(Envelope):
    data: ClosedData  # type: ignore[assignment]


class UploadedData(BaseModel):
    url: str = Field(
        description="signed link to the upload, usable in `images` and `mask` of a task of "
        "the same key and to download the file (no Authorization needed) until it expires"
    )
    expires_at: int = Field(description="when the link expires, seconds since the epoch")
    format: str = Field(description="the format found in the content: PNG, JPEG, BMP, ...")
    width: int = Field(description="width in pixels, as displayed (EXIF orientation applied)")
    height: int = Field(description="height in pixels, as displayed")


class Uploaded(Envelope):
    data: UploadedData  # type: ignore[assignment]


class HealthData(BaseModel):
    status: Literal["ok", "degraded"]
    engines: dict[str, bool] | None = None
    disk_free_bytes: int | None = None


class Health(Envelope):
    data: HealthData  # type: ignore[assignment]


CreatedData.model_rebuild()
Created.model_rebuild()
