"""Photo Eraser against IOPaint side by side: the same images and masks, end to end over HTTP,
on the same machine in the same run, interleaved.

    iopaint start --model=cv2 --device=cpu --port 8765 &            # the peer (its own venv)
    .venv/bin/python bench/peer.py http://127.0.0.1:8765 [--peer-nogc URL] [--rounds 2]
    .venv/bin/python bench/peer.py --images 20       # only ours at the floor (no peer needed)

Ours: the real server (one worker, one task of N images by URL from a loopback image host,
engine ``opencv`` and then ``auto``), from the create request to the last result downloaded;
the client polls the result every 0.1 s. IOPaint: its synchronous ``POST /api/v1/inpaint`` with
the image and mask in base64, one request per image, ``--peer-clients`` at a time (default:
one per core, so it may use every core as ours does). Its ``cv2`` model is OpenCV's
``cv2.inpaint`` on the whole image; by default it runs Navier-Stokes with radius 4
(``cv2_flag``, ``cv2_radius`` of its request). ``--peer-cv2 telea`` (the default here) asks it
for Telea with radius 3, exactly our ``opencv`` engine's algorithm, so both sides do the same
inpainting and the ratio is everything else; ``--peer-cv2 default`` leaves its own setting. Our
``auto`` is compared with the same peer (it has nothing like it).

IOPaint calls ``gc.collect()`` after every request (``torch_gc``), which costs it much of its
CPU on this kind of load. ``--peer-nogc URL`` names a second IOPaint started with that call
made a no-op::

    python -c "import gc, sys; gc.collect = lambda *a: 0; sys.argv[0] = 'iopaint'; \\
        from iopaint import entry_point; entry_point()" start --model=cv2 --device=cpu --port 8766

and the ratios are printed against both, so the share of the lead that is the peer's
``gc.collect()`` can be read off.

"Ours at the floor": the seconds ``opencv`` would take if a task were only the engine (Telea on
the mask's box) and the fastest decoder and encoder on PyPI, on every core, with nothing else
(no download, no storing, no HTTP): no pipeline can do better, so peer seconds over that is the
most any ratio against this peer can be (printed beside the median ratios).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import load_average, machine_line  # noqa: E402
from bench.task import SIZES, opencv_floors, stamped_photos  # noqa: E402
from harness.client import ApiClient  # noqa: E402
from harness.imagehost import ImageHost  # noqa: E402
from harness.server import ServerProcess  # noqa: E402
from photo_eraser.config import usable_cores  # noqa: E402


def text_mask(block: bytes) -> bytes:
    """The mark's own pixels (dilated), inside the block mask: a tight "text" mask."""
    box = cv2.imdecode(np.frombuffer(block, np.uint8), cv2.IMREAD_GRAYSCALE)
    ys, xs = np.nonzero(box)
    h, w = box.shape
    layer = np.zeros((h, w), np.uint8)
    scale = w / 640
    org = (int(w * 0.55), int(h * 0.9))
    cv2.putText(layer, "(c) AGENCY", org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, int(3 * scale))
    layer = cv2.dilate(layer, np.ones((5, 5), np.uint8))
    ok, data = cv2.imencode(".png", layer)
    assert ok and ys.size
    return data.tobytes()


def ours(server: ServerProcess, urls: list[str], mask: bytes, engine: str) -> float:
    """Seconds from the create request to the last result downloaded."""
    client = ApiClient(server.base_url, *server.create_key("peer"))
    try:
        t = time.perf_counter()
        task_id = client.create_ok(urls, base64.b64encode(mask).decode(), engine=engine)
        data = client.wait(task_id, timeout=600, until=("3", "4"))
        for item in data["list"]:
            assert item["status"] == "3", item
            client.http.get(item["image_result"]).raise_for_status()
        return time.perf_counter() - t
    finally:
        client.close()


PEER_CV2 = {
    "telea": {"cv2_flag": "INPAINT_TELEA", "cv2_radius": 3},  # our ``opencv`` engine's
    "default": {},  # IOPaint's own: INPAINT_NS, radius 4
}


def peer(
    base: str, files: list[bytes], mask: bytes, clients: int, cv2_options: dict[str, object]
) -> float:
    """Seconds for IOPaint to restore every file (``clients`` requests at a time)."""
    mask_b64 = base64.b64encode(mask).decode()
    with httpx.Client(base_url=base, timeout=600) as http:

        def one(data: bytes) -> None:
            body = {"image": base64.b64encode(data).decode(), "mask": mask_b64, **cv2_options}
            r = http.post("/api/v1/inpaint", json=body)
            r.raise_for_status()
            assert r.content

        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, files))
        return time.perf_counter() - t


def floors(sizes: list[str], images: int, masks: list[str]) -> dict[tuple[str, str], float]:
    """Seconds ``opencv`` would take on ``images`` images per (size, mask) if a task were
    nothing but the engine and the fastest codecs on PyPI (`bench.task.opencv_floors`, CPU on
    one thread), spread over every core: the bound of any ratio against a peer doing at least
    the same inpainting."""
    out = {}
    for size in sizes:
        files, block = stamped_photos(*SIZES[size], images)
        shapes = {"block": block, "text": text_mask(block)}
        for name in masks:
            ms = opencv_floors(files, shapes[name])
            per_image = ms["engine"] + ms["decode"] + ms["encode"]
            out[(size, name)] = images * per_image / 1000 / usable_cores()
            print(
                f"- {size} {name}: engine {ms['engine']:.0f} + decode {ms['decode']:.0f} + encode "
                f"{ms['encode']:.0f} ms per image -> {out[(size, name)]:.2f} s for {images} images "
                f"on {usable_cores()} cores",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "peer_url",
        nargs="?",
        help="a running IOPaint (`iopaint start --model=cv2`); without it only the floors",
    )
    parser.add_argument("--peer-nogc", help="a second IOPaint with gc.collect() made a no-op")
    parser.add_argument("--sizes", default="1080p,12mp")
    parser.add_argument("--images", default="1,20", help="task sizes to run")
    parser.add_argument("--engines", default="opencv,auto")
    parser.add_argument("--masks", default="block,text")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peer-clients", type=int, default=usable_cores())
    parser.add_argument(
        "--peer-cv2",
        choices=tuple(PEER_CV2),
        default="telea",
        help="the peer's cv2 algorithm: telea r3 (ours) or its own default (NS r4)",
    )
    args = parser.parse_args()
    print("# Photo Eraser against IOPaint, end to end over HTTP, same machine, same run")
    print(machine_line())
    print("command: .venv/bin/python bench/peer.py " + " ".join(sys.argv[1:]))
    print("\nOurs at the floor (the engine and the fastest codecs only):")
    bound = floors(
        args.sizes.split(","), max(int(n) for n in args.images.split(",")), args.masks.split(",")
    )
    if not args.peer_url:
        return
    peers = {"IOPaint": args.peer_url}
    if args.peer_nogc:
        peers["IOPaint without gc.collect"] = args.peer_nogc
    for name, url in peers.items():
        info = httpx.get(f"{url}/api/v1/server-config", timeout=10).json()
        print(f"{name}: {url}, model {info.get('modelInfos', [{}])[0].get('name', '?')}")
    print(f"peer's cv2 options: {PEER_CV2[args.peer_cv2] or 'its defaults (INPAINT_NS, radius 4)'}")
    host = ImageHost()
    tmp = tempfile.TemporaryDirectory()
    server = ServerProcess(
        Path(tmp.name) / "data", PHOTO_ERASER_RATE_LIMIT_PER_MINUTE="0", PHOTO_ERASER_WORKERS="1"
    ).start()
    try:
        print(
            "\n| size | mask | images | engine | round | load avg | ours s | "
            + " | ".join(f"{p} s | ours faster" for p in peers)
            + " |"
        )
        print("|---|---|---|---|---|---|---|" + "---|---|" * len(peers))
        ratios: dict[tuple[str, ...], list[float]] = {}
        peer_seconds: dict[tuple[str, str, str, str], list[float]] = {}
        for size in args.sizes.split(","):
            w, h = SIZES[size]
            files, block = stamped_photos(w, h, max(int(n) for n in args.images.split(",")))
            masks = {"block": block, "text": text_mask(block)}
            urls = [
                host.add(f"/peer/{size}/{i}.jpg", f, content_type="image/jpeg")
                for i, f in enumerate(files)
            ]
            ours(server, urls[:1], block, "opencv")  # warm-up
            for url in peers.values():
                peer(url, files[:1], block, 1, PEER_CV2[args.peer_cv2])
            for mask_name in args.masks.split(","):
                mask = masks[mask_name]
                for n in (int(v) for v in args.images.split(",")):
                    for engine in args.engines.split(","):
                        for rnd in range(args.rounds):
                            load = load_average()
                            # Interleaved: the peer first in odd rounds, ours first in even.
                            times: dict[str, float] = {}
                            order = ["ours", *peers] if rnd % 2 == 0 else [*peers, "ours"]
                            for who in order:
                                if who == "ours":
                                    times[who] = ours(server, urls[:n], mask, engine)
                                else:
                                    times[who] = peer(
                                        peers[who],
                                        files[:n],
                                        mask,
                                        args.peer_clients,
                                        PEER_CV2[args.peer_cv2],
                                    )
                            cells = []
                            for p in peers:
                                ratio = times[p] / times["ours"]
                                ratios.setdefault((size, mask_name, str(n), engine, p), []).append(
                                    ratio
                                )
                                cells.append(f"{times[p]:.2f} | {ratio:.2f}x")
                                if engine == "opencv":
                                    peer_seconds.setdefault(
                                        (size, mask_name, str(n), p), []
                                    ).append(times[p])
                            print(
                                f"| {size} | {mask_name} | {n} | {engine} | {rnd + 1} | {load} | "
                                f"{times['ours']:.2f} | " + " | ".join(cells) + " |",
                                flush=True,
                            )
        print("\nMedian ratio (peer seconds / ours) over the rounds, and the most it could be:")
        for key, values in ratios.items():
            size, mask_name, n, engine, who = key
            line = f"- {size} {mask_name} {n} {engine} vs {who}: {statistics.median(values):.2f}x"
            if engine == "opencv" and int(n) == max(int(v) for v in args.images.split(",")):
                most = (
                    statistics.median(peer_seconds[(size, mask_name, n, who)])
                    / bound[(size, mask_name)]
                )
                line += f" (ours at the floor: {most:.2f}x)"
            print(line)
    finally:
        server.stop()
        host.close()
        tmp.cleanup()
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
