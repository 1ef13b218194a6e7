"""Memory of a create request with an inline mask stays bounded whatever the mask claims.

Measured on a real server process: its peak resident set (VmHWM, reset through
/proc/PID/clear_refs before each burst) while six create requests arrive at once."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.client import ApiClient
from harness.images import b64, rgba_mask_png
from harness.server import ServerProcess

# The peak resident set of a server process of its own.
pytestmark = pytest.mark.process

MiB = 1 << 20


def peak_rss_during(server: ServerProcess, burst: list[str], client: ApiClient) -> tuple[int, list]:
    """(peak RSS growth in bytes, responses) while ``burst`` masks are sent at once."""
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status")

    def field(name: str) -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith(name + ":"))
        return int(line.split()[1]) * 1024

    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = field("VmHWM")
    with ThreadPoolExecutor(len(burst)) as pool:
        responses = list(pool.map(lambda m: client.create(["https://a.example/x.png"], m), burst))
    return field("VmHWM") - before, responses


@pytest.fixture(scope="module")
def accept_only(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ApiClient]]:
    server = ServerProcess(
        tmp_path_factory.mktemp("mask-memory"),
        PHOTO_ERASER_WORKERS="0",
        PHOTO_ERASER_RATE_LIMIT_PER_MINUTE="0",
    ).start()
    client = ApiClient(server.base_url, *server.create_key("memory"))
    yield server, client
    client.close()
    server.stop()


def test_a_mask_larger_than_any_image_is_refused_before_decoding(
    accept_only: tuple[ServerProcess, ApiClient],
) -> None:
    server, client = accept_only
    burst = [b64(rgba_mask_png(8192, seed)) for seed in range(6)]
    assert max(len(m) for m in burst) < 1 * MiB  # small bodies, huge pictures
    growth, responses = peak_rss_during(server, burst, client)
    for r in responses:
        assert r.status_code == 400, r.text
        assert r.json()["msg"].startswith("mask: mask resolution 8192x8192 is above 5000x5000")
    assert growth < 48 * MiB, f"peak grew {growth / MiB:.0f} MiB"


def test_concurrent_large_masks_are_decoded_within_a_bound(
    accept_only: tuple[ServerProcess, ApiClient],
) -> None:
    """Six valid 5000x5000 RGBA masks at once: all accepted, at most two decoded at a time
    (about 170 MB each while decoding), and at most 128 MB of decoded masks kept: under
    480 MiB in all (the code before: 715 MiB here, and 8192x8192 masks were accepted)."""
    server, client = accept_only
    burst = [b64(rgba_mask_png(5000, seed)) for seed in range(6)]
    growth, responses = peak_rss_during(server, burst, client)
    for r in responses:
        assert r.status_code == 200, r.text
    assert growth < 480 * MiB, f"peak grew {growth / MiB:.0f} MiB"
