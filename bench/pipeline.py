"""Pipeline benchmark: per-stage cost of one 1920x1080 JPEG vs the decode+encode floor,
the engine's cost vs image size, end-to-end latency and creation throughput of the real server.

    .venv/bin/python bench/pipeline.py [--repeat 20] [--requests 400] [--concurrency 16]

Prints what it measured, on what machine, and how to reproduce it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.client import ApiClient  # noqa: E402
from harness.imagehost import ImageHost  # noqa: E402
from harness.images import b64, psnr  # noqa: E402
from harness.server import ServerProcess  # noqa: E402
from photo_eraser.engines.opencv import OpenCVEngine  # noqa: E402
from photo_eraser.fetch import Fetcher  # noqa: E402
from photo_eraser.imaging import ImageLimits, decode_image, decode_mask  # noqa: E402
from photo_eraser.pipeline import StageTimes, restore_images  # noqa: E402
from photo_eraser.storage import LocalBlobStore  # noqa: E402


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, OpenCV {cv2.__version__}"


def test_photo(width: int, height: int) -> np.ndarray:
    return test_photo_named("astronaut", width, height)


def test_photo_named(name: str, width: int, height: int) -> np.ndarray:
    """A photo that ships with scikit-image, resized (RGB uint8)."""
    return cv2.resize(getattr(skdata, name)(), (width, height), interpolation=cv2.INTER_CUBIC)


def watermark_mask(width: int, height: int, mw: int, mh: int) -> np.ndarray:
    """A bottom-right rectangle of mw x mh pixels, where stock watermarks sit."""
    m = np.zeros((height, width), np.uint8)
    x0, y0 = width - mw - width // 20, height - mh - height // 20
    m[y0 : y0 + mh, x0 : x0 + mw] = 255
    return m


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_stages(repeat: int, host: ImageHost) -> None:
    img = test_photo(1920, 1080)
    payload = jpeg(img)
    mask = watermark_mask(1920, 1080, 400, 100)  # 1.9 % of the area
    url = host.add("/bench/1080p.jpg", payload, content_type="image/jpeg")
    mask_bytes = png(mask)
    limits = ImageLimits()
    engine = OpenCVEngine()
    fetcher = Fetcher(
        allow_private=True,
        max_bytes=limits.max_bytes,
        connect_timeout=5,
        read_timeout=5,
        total_timeout=30,
    )
    blobs = LocalBlobStore(Path(tempfile.mkdtemp()))
    stages: dict[str, list[float]] = {}
    floor: list[float] = []

    async def download() -> bytes:
        return await fetcher.fetch(url)

    loop = asyncio.new_event_loop()
    for i in range(repeat):
        t = time.perf_counter()
        body = loop.run_until_complete(download())
        stages.setdefault("download", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        decoded = decode_image(body, limits)
        stages.setdefault("decode", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        m = decode_mask(mask_bytes, limits.max_bytes)
        stages.setdefault("mask decode (once per task)", []).append(time.perf_counter() - t)
        times = StageTimes()
        [result] = restore_images([decoded], m, engine, jpeg_quality=95, times=times)
        for k, v in times.seconds.items():
            stages.setdefault(k, []).append(v)
        t = time.perf_counter()
        blobs.put(f"bench/{i}.jpg", result.encoded.data)
        stages.setdefault("store", []).append(time.perf_counter() - t)
        # The floor: the same bytes decoded and re-encoded by Pillow alone, same quality.
        t = time.perf_counter()
        plain = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
        out = io.BytesIO()
        Image.fromarray(plain).save(out, "JPEG", quality=95, subsampling=0)
        floor.append(time.perf_counter() - t)
    loop.run_until_complete(fetcher.aclose())
    loop.close()

    print(f"\n## Stages, 1920x1080 JPEG, 400x100 mask (1.9 %), median of {repeat}")
    print("| stage | ms |\n|---|---|")
    per_image = ("download", "decode", "mask", "engine", "encode", "store")
    for k in (*per_image, "mask decode (once per task)"):
        print(f"| {k} | {median_ms(stages[k]):.1f} |")
    overhead = sum(median_ms(stages[k]) for k in per_image if k != "engine")
    print(f"| floor: Pillow decode+encode alone | {median_ms(floor):.1f} |")
    print(
        f"\nper image, everything except the engine: {overhead:.1f} ms = "
        f"{overhead / median_ms(floor):.2f}x the floor (goal <= 1.3x)"
    )
    codec = median_ms(stages["decode"]) + median_ms(stages["encode"])
    print(f"our decode+encode alone (checks, EXIF, ICC): {codec / median_ms(floor):.2f}x the floor")


def bench_engine_scaling(repeat: int) -> None:
    print(f"\n## OpenCV engine vs image size, same 300x100 mask, median of {repeat}")
    print("| image | radius | engine ms |\n|---|---|---|")
    for w, h in ((1000, 750), (4000, 3000)):
        img = test_photo(w, h)
        m = watermark_mask(w, h, 300, 100) > 0
        for radius in (1, 3, 5):
            eng = OpenCVEngine(radius=radius)
            samples = []
            for _ in range(repeat):
                t = time.perf_counter()
                eng.inpaint(img, m)
                samples.append(time.perf_counter() - t)
            print(f"| {w}x{h} | {radius} | {median_ms(samples):.1f} |")


def bench_radius_quality() -> None:
    """Masked-region PSNR of Telea against the true pixels, by radius (the default is 3)."""
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
    photos = [test_photo_named(n, 1920, 1080) for n in names]
    layer = Image.new("L", (1920, 1080), 0)
    ImageDraw.Draw(layer).text(
        (1300, 900), "© PHOTO AGENCY", fill=255, font=ImageFont.load_default(size=60)
    )
    text = cv2.dilate((np.asarray(layer) > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    masks = {"400x100 block": watermark_mask(1920, 1080, 400, 100) > 0, "60 px text": text}
    print(
        f"\n## OpenCV Telea by radius: mean masked PSNR vs the true photo over {len(names)} photos"
    )
    print("| mask | radius | PSNR | engine ms (median) |\n|---|---|---|---|")
    for name, m in masks.items():
        for radius in (1, 2, 3, 5):
            engine = OpenCVEngine(radius=radius)
            psnrs, times = [], []
            for photo in photos:
                t = time.perf_counter()
                out = engine.inpaint(photo, m)
                times.append(time.perf_counter() - t)
                psnrs.append(psnr(out, photo, m))
            print(f"| {name} | {radius} | {np.mean(psnrs):.2f} dB | {median_ms(times):.1f} |")


def bench_server(requests: int, concurrency: int, host: ImageHost, iopaint_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            Path(tmp) / "accept", PHOTO_ERASER_WORKERS="0", PHOTO_ERASER_RATE_LIMIT_PER_MINUTE="0"
        ).start()
        try:
            appkey, appsecret = server.create_key("bench")
            url = host.url("/bench/1080p.jpg")
            mask = b64(png(watermark_mask(1920, 1080, 400, 100)))
            latencies = asyncio.run(
                _create_load(server.base_url, appkey, appsecret, url, mask, requests, concurrency)
            )
        finally:
            server.stop()
        lat = sorted(latencies[1])
        print(
            f"\n## Task creation under load: {requests} requests, {concurrency} concurrent, inline PNG mask"
        )
        print(
            f"p50 {lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms, "
            f"{requests / latencies[0]:.0f} requests/s"
        )

        server = ServerProcess(Path(tmp) / "e2e", PHOTO_ERASER_WORKERS="1").start()
        try:
            client = ApiClient(server.base_url, *server.create_key("bench"))
            ours = []
            for _ in range(10):
                t = time.perf_counter()
                task_id = client.create_ok([url], mask, engine="opencv")
                while (data := client.result(task_id).json()["data"])["status"] not in ("3", "4"):
                    time.sleep(0.005)
                client.http.get(data["list"][0]["image_result"]).raise_for_status()
                ours.append(time.perf_counter() - t)
            client.close()
        finally:
            server.stop()
    print(
        "\n## End to end, one 1920x1080 JPEG per task, engine opencv, 1 worker "
        "(create, poll every 5 ms, download the result)"
    )
    print(f"Photo Eraser: median {median_ms(ours):.0f} ms over 10 tasks")
    if iopaint_url:
        theirs = _iopaint(iopaint_url, host)
        print(
            f"IOPaint ({iopaint_url}, its cv2 model, same image and mask, synchronous "
            f"/api/v1/inpaint): median {median_ms(theirs):.0f} ms over 10 calls -> Photo Eraser is "
            f"{median_ms(theirs) / median_ms(ours):.1f}x faster"
        )


def _iopaint(base: str, host: ImageHost) -> list[float]:
    """Time IOPaint's HTTP API on the same image and mask (a server the user started)."""
    image = host.resources["/bench/1080p.jpg"].body
    body = {
        "image": base64.b64encode(image).decode(),
        "mask": base64.b64encode(png(watermark_mask(1920, 1080, 400, 100))).decode(),
    }
    samples = []
    with httpx.Client(timeout=120) as http:  # one client for both, as for ours
        for _ in range(10):
            t = time.perf_counter()
            http.post(f"{base}/api/v1/inpaint", json=body).raise_for_status()
            samples.append(time.perf_counter() - t)
    return samples


async def _create_load(
    base: str, appkey: str, appsecret: str, url: str, mask: str, n: int, concurrency: int
) -> tuple[float, list[float]]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with httpx.AsyncClient(
        base_url=base,
        auth=(appkey, appsecret),
        timeout=60,
        limits=httpx.Limits(max_connections=concurrency),
    ) as http:

        async def one(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                r = await http.post(
                    "/v3/pic/rw/batch", json={"images": [url], "mask": mask, "priority": i % 10}
                )
                latencies.append(time.perf_counter() - t)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0, latencies


def memory_child(n_images: int, engine_name: str) -> None:
    """Run in a child process: peak RSS of decoding, restoring and encoding one task."""
    import resource

    from photo_eraser.engines.registry import EngineRegistry

    payload = jpeg(test_photo(1920, 1080))
    mask = decode_mask(png(watermark_mask(1920, 1080, 400, 100)), 10**8)
    engine = EngineRegistry(Path(tempfile.mkdtemp())).get(engine_name)
    # Peak (high-water mark) minus the resident size now, both in kB.
    base = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() // 1024
    decoded = [decode_image(payload, ImageLimits()) for _ in range(n_images)]
    results = restore_images(decoded, mask, engine, jpeg_quality=95)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pixels_mb = n_images * 1920 * 1080 * 3 / 2**20
    print(f"| {engine_name} | {n_images} | {(peak - base) / 1024:.0f} MB | {pixels_mb:.0f} MB |")
    assert len(results) == n_images


def bench_memory() -> None:
    print("\n## Peak memory of one task (1920x1080 JPEGs), above the process baseline")
    print("| engine | images | peak RSS growth | decoded pixels alone |\n|---|---|---|---|")
    for engine in ("opencv", "restore"):
        for n in (1, 20):
            subprocess.run([sys.executable, __file__, "--memory-child", str(n), engine], check=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        memory_child(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--iopaint-url",
        help="also time a running IOPaint server (`iopaint start --model=cv2 --device=cpu`)",
    )
    args = parser.parse_args()
    print(
        f"# Photo Eraser pipeline benchmark\nmachine: {machine()}\n"
        f"command: .venv/bin/python bench/pipeline.py --repeat {args.repeat} "
        f"--requests {args.requests} --concurrency {args.concurrency}"
        + (f" --iopaint-url {args.iopaint_url}" if args.iopaint_url else "")
    )
    host = ImageHost()
    try:
        bench_stages(args.repeat, host)
        bench_engine_scaling(max(3, args.repeat // 4))
        bench_radius_quality()
        bench_memory()
        bench_server(args.requests, args.concurrency, host, args.iopaint_url)
    finally:
        host.close()


if __name__ == "__main__":
    main()
