"""Soak: the real server under a steady mixed load for an hour, its memory sampled every 30 s.

    .venv/bin/python bench/soak.py [--minutes 60] [--warmup-minutes 10] [--rate 0.5]

A loopback image host (harness.imagehost.ImageHost) serves photos that ship with scikit-image.
Every two seconds (``--rate 0.5``) one task of 4 images is created, alternating the engines ``auto``,
``opencv`` and ``restore``, with the mask inline or by URL; every open task is polled and each
result downloaded. Malformed and unauthenticated requests, missing images and /metrics scrapes
are mixed in. Results live 5 minutes (``PHOTO_ERASER_RESULT_TTL_SECONDS=300``), so the
retention sweeper deletes files during the run too.

The server's resident set (VmRSS) is read every ``--sample-seconds``; after the warm-up a
least-squares line gives the slope in MiB per hour, and the residuals the noise. Verdict: flat
when the growth the slope predicts over the measured span is within twice the residual
standard deviation (or 2 % of the mean). Every loop is bounded by the deadline; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.imagehost import ImageHost  # noqa: E402
from harness.images import b64, encode, rect_mask  # noqa: E402
from harness.server import ServerProcess  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
W, H = 1024, 768


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def stamped(name: str, box: tuple[int, int, int, int]) -> np.ndarray:
    """A photo with a semi-transparent white box over ``box`` = (y0, y1, x0, x1), as a
    watermark would be."""
    img = cv2.resize(getattr(skdata, name)(), (W, H), interpolation=cv2.INTER_AREA)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = (0.6 * img[y0:y1, x0:x1] + 0.4 * 255).astype(np.uint8)
    return img


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(slope, intercept, residual standard deviation) of the least-squares line."""
    slope, intercept = np.polyfit(xs, ys, 1)
    residuals = [y - (slope * x + intercept) for x, y in zip(xs, ys, strict=True)]
    return float(slope), float(intercept), statistics.pstdev(residuals)


async def run(args: argparse.Namespace) -> int:
    box = (H - 120, H - 40, W - 300, W - 40)
    host = ImageHost()
    urls = []
    for name in PHOTOS:
        pixels = stamped(name, box)
        urls.append(host.add(f"/soak/{name}.png", encode(pixels, "PNG")))
        urls.append(
            host.add(
                f"/soak/{name}.jpg", encode(pixels, "JPEG", quality=90), content_type="image/jpeg"
            )
        )
    mask_png = encode(rect_mask(H, W, box), "PNG")
    mask_url = host.add("/soak/mask.png", mask_png)
    missing = host.url("/soak/missing.png")

    data_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    server = ServerProcess(
        data_dir,
        PHOTO_ERASER_WORKERS="2",
        PHOTO_ERASER_RATE_LIMIT_PER_MINUTE="0",
        PHOTO_ERASER_RESULT_TTL_SECONDS="300",
    ).start()
    try:
        return await _soak(args, server, host, urls, mask_png, mask_url, missing)
    finally:
        server.stop()
        host.close()


async def _soak(
    args: argparse.Namespace,
    server: ServerProcess,
    host: ImageHost,
    urls: list[str],
    mask_png: bytes,
    mask_url: str,
    missing: str,
) -> int:
    assert server.proc is not None
    pid = server.proc.pid
    appkey, appsecret = server.create_key("soak")
    auth = httpx.BasicAuth(appkey, appsecret)
    counts = dict.fromkeys(("created", "complete", "failed", "other", "results", "errors"), 0)
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    deadline = started + args.minutes * 60
    engines = itertools.cycle(("auto", "opencv", "restore"))

    async with (
        httpx.AsyncClient(base_url=server.base_url, auth=auth, timeout=60) as client,
        httpx.AsyncClient(base_url=server.base_url, timeout=60) as anonymous,
    ):

        async def one_task(n: int) -> None:
            engine = next(engines)
            images = [urls[(n + k) % len(urls)] for k in range(4)]
            if n % 10 == 0:
                images[-1] = missing
            mask = b64(mask_png) if n % 2 else mask_url
            r = await client.post(
                "/v3/pic/rw/batch",
                json={"images": images, "mask": mask, "priority": n % 10, "engine": engine},
            )
            if r.status_code != 200:
                counts["errors"] += 1
                return
            counts["created"] += 1
            task_id = r.json()["data"]["task_id"]
            while time.monotonic() < deadline + 120:
                await asyncio.sleep(0.5)
                data = (await client.get(f"/v3/pic/rw/result/{task_id}")).json()["data"]
                if data["status"] in ("3", "4", "5", "6"):
                    break
            else:
                return
            key = {"3": "complete", "4": "failed"}.get(data["status"], "other")
            counts[key] += 1
            for item in data["list"]:
                if item["image_result"]:
                    got = await client.get(item["image_result"])
                    counts["results"] += got.status_code == 200

        async def hostile(n: int) -> None:
            kind = n % 3
            if kind == 0:
                await client.post("/v3/pic/rw/batch", content=b"{not json")
            elif kind == 1:
                await anonymous.get("/v3/pic/rw/result/x")
            else:
                await client.get("/metrics")

        async def sampler() -> None:
            while time.monotonic() < deadline:
                samples.append(((time.monotonic() - started) / 60, rss_mib(pid)))
                print(
                    f"{samples[-1][0]:6.1f} min  RSS {samples[-1][1]:7.1f} MiB  {counts}",
                    flush=True,
                )
                await asyncio.sleep(args.sample_seconds)

        running: set[asyncio.Task[None]] = set()
        sampling = asyncio.create_task(sampler())
        for n in itertools.count():
            if time.monotonic() >= deadline or n >= args.max_tasks:
                break
            for coro in (one_task(n), hostile(n)):
                t = asyncio.create_task(coro)
                running.add(t)
                t.add_done_callback(running.discard)
            await asyncio.sleep(1 / args.rate)
        await asyncio.gather(*running, return_exceptions=True)
        await sampling

    measured = [(t, r) for t, r in samples if t >= args.warmup_minutes]
    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"
    )
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"tasks: {counts}")
    if len(measured) < 3:
        print("too few samples after the warm-up for a slope")
        return 1
    xs = [t for t, _ in measured]
    ys = [r for _, r in measured]
    slope, _, noise = fit_line(xs, ys)
    span = xs[-1] - xs[0]
    drift = slope * span
    print(
        f"RSS after {args.warmup_minutes:g} min warm-up: {len(ys)} samples, "
        f"min {min(ys):.1f} max {max(ys):.1f} mean {statistics.mean(ys):.1f} MiB"
    )
    print(
        f"slope {slope * 60:+.2f} MiB/h; drift over the {span:.0f} min measured "
        f"{drift:+.1f} MiB; residual std {noise:.1f} MiB"
    )
    # Only growth is a leak; a falling line (memory handed back after the warm-up) is fine.
    flat = drift <= max(2 * noise, 0.02 * statistics.mean(ys))
    print("verdict:", "FLAT within noise" if flat else "GROWING: drift beyond noise")
    return 0 if flat else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--warmup-minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=0.5, help="tasks created per second")
    parser.add_argument("--sample-seconds", type=float, default=30)
    parser.add_argument("--max-tasks", type=int, default=20000)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
