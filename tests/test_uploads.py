"""The upload extension end to end: a real server process, real files. An upload (raw body or
multipart) comes back as a signed link that serves the file and that a task of the same key
can name as an image or as the mask; another key, a tampered or expired link, and every kind
of bad body are refused with the envelope."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.client import ApiClient
from harness.images import encode, photo, rect_mask
from photo_eraser.storage import UrlSigner
from tests.inprocess import LocalServer

W, H = 400, 300
BOX = (120, 160, 150, 250)
"""The mask's rectangle: (y0, y1, x0, x1)."""
UPLOAD = "/v3/pic/rw/upload"


@pytest.fixture(scope="module")
def http(client: ApiClient) -> Iterator[httpx.Client]:
    """The client's credentials without its JSON Content-Type (uploads send their own)."""
    with httpx.Client(
        base_url=str(client.http.base_url),
        headers={"Authorization": client.http.headers["Authorization"]},
        timeout=30,
    ) as c:
        yield c


@pytest.fixture(scope="module")
def other(server: LocalServer) -> Iterator[ApiClient]:
    c = ApiClient(server.base_url, *server.create_key("client-b"))
    yield c
    c.close()


def upload(http: httpx.Client, body: bytes, content_type: str = "image/png", **params: str) -> dict:
    r = http.post(UPLOAD, content=body, headers={"Content-Type": content_type}, params=params)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["code"] == 0 and out["msg"] == ""
    return dict(out["data"])


def refused(r: httpx.Response, code: int, words: str) -> None:
    assert r.status_code == code // 100, r.text
    body = r.json()
    assert body["code"] == code and body["data"] == {}, body
    assert words in body["msg"], body["msg"]


def test_a_raw_png_comes_back_as_a_signed_link_that_serves_it(
    http: httpx.Client, server: LocalServer
) -> None:
    png = encode(photo(W, H, seed=3), "PNG")
    before = int(time.time())
    data = upload(http, png)
    assert (data["format"], data["width"], data["height"]) == ("PNG", W, H)
    assert before + 24 * 3600 <= data["expires_at"] <= int(time.time()) + 24 * 3600
    url = urlsplit(data["url"])
    assert data["url"].startswith(server.base_url + "/v3/pic/rw/files/uploads/")
    assert url.path.endswith(".png")
    assert parse_qs(url.query)["expires"] == [str(data["expires_at"])]
    got = httpx.get(data["url"])  # no Authorization: the link is the credential
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png" and got.content == png
    assert got.headers["x-content-type-options"] == "nosniff"
    head = httpx.head(data["url"])
    assert head.status_code == 200 and head.headers["content-length"] == str(len(png))


def test_a_multipart_jpeg_is_read_from_its_file_field(http: httpx.Client) -> None:
    jpeg = encode(photo(W, H, seed=4), "JPEG", quality=90)
    r = http.post(UPLOAD, files={"file": ("photo.jpg", jpeg, "image/jpeg")}, data={"x": "1"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["format"] == "JPEG" and urlsplit(data["url"]).path.endswith(".jpg")
    got = httpx.get(data["url"])
    assert got.headers["content-type"] == "image/jpeg" and got.content == jpeg


def test_the_format_is_read_from_the_content_not_the_declared_type(http: httpx.Client) -> None:
    bmp = encode(photo(W, H, seed=5), "BMP")
    data = upload(http, bmp, content_type="image/png")
    assert data["format"] == "BMP"
    assert httpx.get(data["url"]).headers["content-type"] == "image/bmp"


def test_an_uploaded_image_and_mask_make_a_task_that_completes(
    http: httpx.Client, client: ApiClient, image_host: object
) -> None:
    original = photo(W, H, seed=6)
    image = upload(http, encode(original, "PNG"))
    # A mask may be smaller than an image may (it is resized to the image).
    small_mask = rect_mask(H // 2, W // 2, (60, 80, 75, 125))
    mask = upload(http, encode(small_mask, "PNG"), kind="mask")
    assert (mask["width"], mask["height"]) == (W // 2, H // 2)
    task_id = client.create_ok([image["url"], image["url"]], mask["url"], engine="opencv")
    data = client.wait(task_id)
    assert data["status"] == "3", data
    assert [i["status"] for i in data["list"]] == ["3", "3"]
    out = np.asarray(Image.open(io.BytesIO(httpx.get(data["list"][0]["image_result"]).content)))
    inside = rect_mask(H, W, BOX)
    assert np.array_equal(out[~inside], original[~inside])
    assert not np.array_equal(out[inside], original[inside])


def test_a_link_seen_through_another_host_name_is_still_recognised(
    http: httpx.Client, client: ApiClient
) -> None:
    """Behind a load balancer the host differs: the path and signature decide, and the file
    is read from the blob store (localhost would be refused as a download without
    ALLOW_PRIVATE_URLS, and no such host resolves)."""
    image = upload(http, encode(photo(W, H, seed=7), "PNG"))
    mask = upload(http, encode(rect_mask(H, W, BOX), "PNG"), kind="mask")
    elsewhere = "https://eraser.invalid:8443/prefix" + urlsplit(image["url"]).path
    elsewhere += "?" + urlsplit(image["url"]).query
    task_id = client.create_ok([elsewhere], mask["url"], engine="opencv")
    assert client.wait(task_id)["status"] == "3"


def test_another_keys_upload_is_refused_when_the_task_is_created(
    http: httpx.Client, other: ApiClient, client: ApiClient
) -> None:
    image = upload(http, encode(photo(W, H, seed=8), "PNG"))
    mask = upload(http, encode(rect_mask(H, W, BOX), "PNG"), kind="mask")
    refused(other.create([image["url"]], mask["url"]), 40001, "images.0: the upload belongs")
    refused(
        other.create(["https://shop.example/a.png"], mask["url"]),
        40001,
        "mask: the upload belongs to another key",
    )
    client.create_ok([image["url"]], mask["url"])  # positive control: the owner may


def test_tampered_and_expired_links_are_refused(
    http: httpx.Client, client: ApiClient, server: LocalServer
) -> None:
    image = upload(http, encode(photo(W, H, seed=9), "PNG"))
    mask = "https://shop.example/m.png"
    parts = urlsplit(image["url"])
    key = parts.path.removeprefix("/v3/pic/rw/files/")
    tampered = image["url"][:-4] + ("0000" if not image["url"].endswith("0000") else "1111")
    refused(client.create([tampered], mask), 40001, "signature is not valid")
    refused(httpx.get(tampered), 40301, "invalid or has expired")
    # The server's own key signs a link that expired a minute ago.
    signer = UrlSigner((server.data_dir / "signing.key").read_text().strip().encode())
    past = int(time.time()) - 60
    expired = f"{server.base_url}/v3/pic/rw/files/{key}?expires={past}"
    expired += f"&signature={signer.signature(key, past)}"
    refused(client.create([expired], mask), 40001, "images.0: the upload link has expired")
    refused(httpx.get(expired), 40301, "invalid or has expired")


def test_an_upload_deleted_before_the_task_runs_fails_that_image(
    http: httpx.Client, client: ApiClient, server: LocalServer
) -> None:
    """The worker's own check: the link passed at creation, the blob was gone when it ran
    (as after the retention sweep): that image fails like a download, the other is done."""
    kept = upload(http, encode(photo(W, H, seed=10), "PNG"))
    gone = upload(http, encode(photo(W, H, seed=11), "PNG"))
    mask = upload(http, encode(rect_mask(H, W, BOX), "PNG"), kind="mask")
    key = urlsplit(gone["url"]).path.removeprefix("/v3/pic/rw/files/")
    (server.data_dir / "blobs" / key).unlink()
    task_id = client.create_ok([kept["url"], gone["url"]], mask["url"], engine="opencv")
    data = client.wait(task_id)
    assert data["status"] == "3"
    assert [i["status"] for i in data["list"]] == ["3", "4"]
    assert data["list"][1]["reason"] == "download failed: the upload no longer exists"
    refused(httpx.get(gone["url"]), 40401, "no longer exists")


def _truncated_png() -> bytes:
    png = encode(photo(W, H, seed=12), "PNG")
    return png[: len(png) // 2]


@pytest.mark.parametrize(
    ("body", "params", "words"),
    [
        (b"", {}, "body: empty"),
        (encode(photo(W, H), "GIF"), {}, "image: unsupported format: GIF"),
        (b"<html><body>hi</body></html>", {}, "image: unsupported format: HTML"),
        (_truncated_png(), {}, "image: image is truncated or corrupt"),
        (encode(photo(200, 200), "PNG"), {}, "is below 256x256"),
        (encode(photo(1200, 256), "PNG"), {}, "aspect ratio"),
        (encode(np.zeros((H, W), np.uint8), "PNG"), {"kind": "mask"}, "mask: "),
    ],
    ids=["empty", "gif", "html", "truncated", "too-small", "aspect", "blank-mask"],
)
def test_unusable_files_are_400s(
    http: httpx.Client, body: bytes, params: dict[str, str], words: str
) -> None:
    r = http.post(UPLOAD, content=body, headers={"Content-Type": "image/png"}, params=params)
    refused(r, 40001, words)


def test_too_many_pixels_is_a_400_before_decoding(http: httpx.Client) -> None:
    """A PNG header claiming 60000x60000 pixels (a decompression bomb) is refused by size."""
    png = encode(photo(300, 300), "PNG")
    bomb = png[:16] + (60000).to_bytes(4, "big") * 2 + png[24:]
    refused(http.post(UPLOAD, content=bomb), 40001, "above 5000x5000")


def test_a_body_over_50_mb_is_a_413_while_it_streams(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield encode(photo(W, H), "PNG")
        for _ in range(51):
            yield bytes(1 << 20)

    r = http.post(UPLOAD, content=chunks(), headers={"Content-Type": "image/png"})
    refused(r, 41301, "exceeds")


def test_a_multipart_body_without_the_file_is_a_400(http: httpx.Client) -> None:
    form = b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--b--\r\n'
    r = http.post(UPLOAD, content=form, headers={"Content-Type": "multipart/form-data; boundary=b"})
    refused(r, 40001, "body: the form has no field 'file'")
    r = http.post(UPLOAD, content=b"--x--", headers={"Content-Type": "multipart/form-data"})
    refused(r, 40001, "boundary")
    cut = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n\x89PNG'
    r = http.post(UPLOAD, content=cut, headers={"Content-Type": "multipart/form-data; boundary=b"})
    refused(r, 40001, "closing delimiter")
    garbage = b"--b\r\nno header end here\r\n--b--\r\n"
    r = http.post(
        UPLOAD, content=garbage, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert r.status_code == 400 and r.json()["code"] == 40001, r.text


def test_credentials_are_required(server: LocalServer) -> None:
    png = encode(photo(W, H), "PNG")
    refused(httpx.post(server.base_url + UPLOAD, content=png), 40101, "Authorization")
    bad = {"Authorization": "Basic " + "bm9ib2R5Om5vdGhpbmc="}  # nobody:nothing
    refused(httpx.post(server.base_url + UPLOAD, content=png, headers=bad), 40102, "invalid")
