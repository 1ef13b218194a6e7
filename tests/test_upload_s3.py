"""Uploads in the object store: an embedded server whose blob store is a real S3 server
(SeaweedFS) keeps uploads as objects under uploads/, serves them back through its own signed
link, and its worker reads them from the bucket for a task."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.client import ApiClient
from harness.images import encode, photo, rect_mask
from harness.s3server import S3Server
from harness.server import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.services]

W, H = 400, 300


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[ServerProcess]:
    bucket = s3.make_bucket()
    proc = ServerProcess(
        tmp_path_factory.mktemp("s3-uploads"),
        **s3.env(),
        PHOTO_ERASER_STORAGE_URL=f"s3://{bucket}/svc",
    ).start()
    proc.bucket = bucket  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def test_uploads_are_objects_in_the_bucket_and_tasks_read_them(
    s3_server: ServerProcess, s3: S3Server
) -> None:
    client = ApiClient(s3_server.base_url, *s3_server.create_key("s3-uploads"))
    auth = {"Authorization": client.http.headers["Authorization"]}
    png = encode(photo(W, H, seed=2), "PNG")
    r = httpx.post(f"{s3_server.base_url}/v3/pic/rw/upload", content=png, headers=auth)
    assert r.status_code == 200, r.text
    image = r.json()["data"]
    mask_png = encode(rect_mask(H, W, (100, 150, 100, 200)), "PNG")
    r = httpx.post(
        f"{s3_server.base_url}/v3/pic/rw/upload",
        files={"file": ("mask.png", mask_png, "image/png")},
        params={"kind": "mask"},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    mask = r.json()["data"]
    objects = s3.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="svc/uploads/")  # type: ignore[attr-defined]
    names = sorted(item["Key"] for item in objects.get("Contents", []))
    key = image["url"].split("/v3/pic/rw/files/")[1].split("?")[0]
    assert f"svc/{key}" in names and len(names) == 2
    assert not (Path(s3_server.data_dir) / "blobs" / "uploads").exists()  # nothing on disk
    got = httpx.get(image["url"])
    assert got.status_code == 200 and got.content == png
    assert got.headers["content-type"] == "image/png"
    task_id = client.create_ok([image["url"]], mask["url"], engine="opencv")
    data = client.wait(task_id)
    assert data["status"] == "3" and data["list"][0]["status"] == "3", data
    client.close()


def test_an_upload_while_the_object_store_is_down_is_a_503(
    s3_server: ServerProcess, s3: S3Server
) -> None:
    client = ApiClient(s3_server.base_url, *s3_server.create_key("s3-down"))
    auth = {"Authorization": client.http.headers["Authorization"]}
    png = encode(photo(W, H, seed=3), "PNG")
    url = f"{s3_server.base_url}/v3/pic/rw/upload"
    with s3.down():
        r = httpx.post(url, content=png, headers=auth, timeout=60)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == 50301 and r.json()["data"] == {}
    assert r.headers["retry-after"] == "5"
    r = httpx.post(url, content=png, headers=auth, timeout=60)  # back: accepted again
    assert r.status_code == 200, r.text
    client.close()
