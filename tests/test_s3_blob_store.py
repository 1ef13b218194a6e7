"""The S3 blob store through the `BlobStore` seam, against a real S3 server (SeaweedFS): round
trips, folders, keys that never leave the store, prefixes that keep stores apart, SigV4 that
refuses a wrong secret, presigned URLs, and a store that goes away and comes back."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

from harness.s3server import S3Server, running_s3, services_required, unique_bucket
from photo_eraser.storage import BlobStore, BlobStoreError, result_key, task_results

# A real S3 server (SeaweedFS).
pytestmark = pytest.mark.services

try:
    from photo_eraser.storage.s3 import S3BlobStore
except ImportError:
    if services_required():  # a collection error: the S3 store must not go untested here
        raise
    pytest.skip("boto3 is not installed", allow_module_level=True)

TASK = "0b8f4a36-1d7e-4c2a-9f51-3a6e2b7c9d10"
SIBLING = "5d2c9e7a-8b1f-4e3d-a6c0-7f9b2e4d1a38"
INVALID_KEYS = ["../escape", "/etc/passwd", "results/../../x", "", "results/"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS for the module, with boto3's credential chain pointed at it."""
    with running_s3(tmp_path_factory.mktemp("s3")) as server, pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(name, raising=False)
        for name, value in server.env().items():
            mp.setenv(name, value)
        yield server


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    return s3.make_bucket()


@pytest.fixture
def store(s3: S3Server, bucket: str) -> S3BlobStore:
    """A store of its own: a fresh prefix in the module's bucket."""
    return S3BlobStore(bucket, f"run-{secrets.token_hex(4)}", endpoint_url=s3.endpoint_url)


@pytest.fixture
def refused(s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> S3BlobStore:
    """A store whose secret the server does not accept (made after any other store a test
    asks for, since a store reads the secret from the environment when made)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key[::-1])
    return S3BlobStore(bucket, "refused", endpoint_url=s3.endpoint_url)


def test_a_blob_reads_back_and_is_gone_once_deleted(store: BlobStore) -> None:
    key = result_key(TASK, 0, "png")
    store.put(key, b"\x89PNG...")
    assert store.size(key) == 7
    opened = store.open(key)
    assert opened is not None and opened.size == 7
    with opened.file as f:
        assert f.read() == b"\x89PNG..."
    assert store.open(task_results(TASK)) is None and store.size(task_results(TASK)) is None
    store.put(key, b"replaced")  # a retry overwrites
    assert store.size(key) == 8
    store.delete(key)
    assert store.open(key) is None and store.size(key) is None and store.modified(key) is None
    store.delete(key)  # deleting what is not there is no error


def test_an_open_blob_streams_in_chunks(store: BlobStore) -> None:
    data = secrets.token_bytes(3 << 20)
    store.put("results/big.png", data)
    opened = store.open("results/big.png")
    assert opened is not None and opened.size == len(data)
    chunks = []
    while chunk := opened.file.read(1 << 20):
        chunks.append(chunk)
    opened.file.close()
    assert b"".join(chunks) == data and len(chunks) == 3


def test_delete_prefix_removes_a_task_folder_and_nothing_beside_it(store: BlobStore) -> None:
    for index in range(3):
        store.put(result_key(TASK, index, "jpg"), b"x")
    store.put(f"{task_results(TASK)}/orphan/leftover.tmp", b"y")  # nobody recorded this one
    store.put(result_key(SIBLING, 0, "jpg"), b"sibling")
    store.put(f"{task_results(TASK)}-not-inside.jpg", b"z")  # shares the name, not the folder
    assert store.folders("results") == sorted([TASK, SIBLING])

    store.delete_prefix(task_results(TASK))

    assert [store.size(result_key(TASK, i, "jpg")) for i in range(3)] == [None, None, None]
    assert store.modified(task_results(TASK)) is None
    # SeaweedFS lists an emptied folder until it is deleted too: it must not come back.
    assert store.folders("results") == [SIBLING]
    assert store.size(result_key(SIBLING, 0, "jpg")) == 7
    assert store.size(f"{task_results(TASK)}-not-inside.jpg") == 1
    store.delete_prefix(task_results(TASK))  # again: nothing left, no error


def test_delete_prefix_deletes_more_than_one_batch(store: BlobStore) -> None:
    keys = [result_key(TASK, index, "png") for index in range(1001)]  # DeleteObjects takes 1000
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: store.put(key, b"x"), keys))
    store.delete_prefix(task_results(TASK))
    assert store.folders("results") == []
    assert store.size(keys[0]) is None and store.size(keys[-1]) is None


def test_folders_lists_direct_children_only(store: BlobStore) -> None:
    store.put(result_key(TASK, 0, "png"), b"x")
    store.put(f"results/{SIBLING}/deeper/still/1.png", b"x")
    store.put("results/a-file-not-a-folder.png", b"x")
    assert store.folders("results") == sorted([TASK, SIBLING])
    assert store.folders(f"results/{SIBLING}") == ["deeper"]
    assert store.folders("masks") == []


def test_deleting_the_last_blob_of_a_folder_removes_the_folder(store: BlobStore) -> None:
    store.put(result_key(TASK, 0, "png"), b"x")
    store.put(result_key(TASK, 1, "png"), b"x")
    store.delete(result_key(TASK, 0, "png"))
    assert store.folders("results") == [TASK]  # still holds 1.png
    store.delete(result_key(TASK, 1, "png"))
    assert store.folders("results") == []


def test_modified_is_when_the_blob_or_the_newest_in_a_folder_was_stored(store: BlobStore) -> None:
    store.put(result_key(TASK, 0, "png"), b"x")
    blob = store.modified(result_key(TASK, 0, "png"))
    folder = store.modified(task_results(TASK))
    assert blob is not None and abs(blob - time.time()) < 5
    assert folder == blob
    assert store.modified(task_results(SIBLING)) is None


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_keys_outside_the_store_are_not_found_and_never_sent(
    refused: S3BlobStore, key: str
) -> None:
    # The refusing store fails every request it sends, so None means none was sent.
    assert refused.open(key) is None and refused.size(key) is None
    assert refused.modified(key) is None
    with pytest.raises(ValueError, match="invalid blob key"):
        refused.put(key, b"x")
    with pytest.raises(BlobStoreError):  # the positive control: a valid key is sent
        refused.size("results/x.png")


def test_stores_with_other_prefixes_do_not_see_each_others_blobs(s3: S3Server, bucket: str) -> None:
    one = S3BlobStore(bucket, "tenant-one", endpoint_url=s3.endpoint_url)
    two = S3BlobStore.from_url(f"s3://{bucket}/tenant-two/", endpoint_url=s3.endpoint_url)
    one.put(result_key(TASK, 0, "png"), b"one")
    two.put(result_key(SIBLING, 0, "png"), b"two")
    assert one.folders("results") == [TASK] and two.folders("results") == [SIBLING]
    assert two.size(result_key(TASK, 0, "png")) is None
    two.delete_prefix("results")
    assert one.size(result_key(TASK, 0, "png")) == 3


def test_a_wrong_secret_is_refused(store: S3BlobStore, refused: S3BlobStore) -> None:
    # ``store`` first: ``refused`` swaps the secret in the environment the next store reads.
    store.check()  # the positive control: the right secret is accepted
    with pytest.raises(BlobStoreError, match="SignatureDoesNotMatch") as put_error:
        refused.put("results/x.png", b"x")
    assert refused.endpoint_url is not None and refused.endpoint_url in str(put_error.value)
    with pytest.raises(BlobStoreError, match="refused \\(403\\): check AWS_ACCESS_KEY_ID"):
        refused.check()


def test_check_names_a_missing_bucket(s3: S3Server) -> None:
    missing = S3BlobStore(unique_bucket(), endpoint_url=s3.endpoint_url)
    with pytest.raises(BlobStoreError, match="bucket 'pe-test-[0-9a-f]+' does not exist"):
        missing.check()


def test_a_presigned_url_downloads_the_blob_and_a_tampered_one_is_refused(
    store: S3BlobStore,
) -> None:
    store.put(result_key(TASK, 0, "png"), b"\x89PNG signed")
    url = store.presigned_url(result_key(TASK, 0, "png"), expires_in=60)
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"\x89PNG signed"
    assert response.headers["content-type"] == "image/png"
    signature = url[-1]
    tampered = url[:-1] + ("0" if signature != "0" else "1")
    assert httpx.get(tampered).status_code == 403


def test_a_presigned_url_for_a_public_endpoint_is_signed_for_that_host(
    s3: S3Server, store: S3BlobStore
) -> None:
    public = S3BlobStore(
        store.bucket,
        store.prefix,
        endpoint_url=s3.endpoint_url,
        public_endpoint_url="https://photos.example.com",
    )
    store.put(result_key(TASK, 0, "png"), b"public")
    url = public.presigned_url(result_key(TASK, 0, "png"), expires_in=60)
    assert url.startswith(f"https://photos.example.com/{store.bucket}/{store.prefix}/results/")
    # What a reverse proxy that keeps the Host header sends on to the store.
    internal = s3.endpoint_url + urlsplit(url).path + "?" + urlsplit(url).query
    response = httpx.get(internal, headers={"Host": "photos.example.com"})
    assert response.status_code == 200 and response.content == b"public"


def test_from_url_reads_the_bucket_and_the_prefix() -> None:
    store = S3BlobStore.from_url("s3://photo-results/eraser/prod/", endpoint_url="http://x:1")
    assert (store.bucket, store.prefix) == ("photo-results", "eraser/prod")


@pytest.mark.parametrize(
    "url", ["https://bucket/x", "s3://", "s3://Bad_Bucket/x", "s3://bkt:9000/x", "s3://bkt/a/../b"]
)
def test_from_url_rejects_what_is_not_an_s3_url(url: str) -> None:
    with pytest.raises(ValueError, match="S3"):
        S3BlobStore.from_url(url)


def test_a_store_that_is_down_fails_fast_and_works_again_once_back(
    s3: S3Server, store: S3BlobStore
) -> None:
    store.put(result_key(TASK, 0, "png"), b"before")
    with s3.down():
        started = time.monotonic()
        with pytest.raises(BlobStoreError, match="cannot connect"):
            store.put(result_key(TASK, 1, "png"), b"during")
        # Down is not "no such blob": a reader must not answer 404 for a result that exists.
        with pytest.raises(BlobStoreError):
            store.open(result_key(TASK, 0, "png"))
        assert time.monotonic() - started < 20
    # The same store (and its pooled connections) works again.
    opened = store.open(result_key(TASK, 0, "png"))
    assert opened is not None and opened.file.read() == b"before"
    store.put(result_key(TASK, 1, "png"), b"after")
    assert store.size(result_key(TASK, 1, "png")) == 5
