"""The studio page (``/`` and ``/studio``), driven in a real browser against a real server.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; where it is missing the
browser tests skip with the reason, except under ``PHOTO_ERASER_REQUIRE_SERVICES=1`` (CI),
where they fail. ``PHOTO_ERASER_SCREENSHOTS=1`` writes the screenshots of the main states to
``docs/img/`` (the README shows one); otherwise they go to the test's temporary directory.

Uploads: the page sends local files to ``POST /v3/pic/rw/upload`` (its ``uploadImage``),
and the tasks it submits name the links that endpoint answers with.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from harness.images import encode, photo
from harness.server import ServerProcess
from photo_eraser.imaging import (
    MaskPlacement,
    decode_mask,
    fit_mask,
    parse_mask_field,
    place_mask,
)
from tests import watermarks as wm

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture says so
    expect = sync_playwright = None

pytestmark = pytest.mark.process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parent.parent
TASK_TIMEOUT_MS = 120_000


def _unavailable(reason: str) -> None:
    if os.environ.get("PHOTO_ERASER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"a browser is required here (PHOTO_ERASER_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("studio")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        _unavailable(f"chromium is not installed ({CHROMIUM}; apt-get install chromium)")
    if sync_playwright is None:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    """A fresh tab (1280x800) on the server; it fails the test on any console error, any
    uncaught exception and any request to another origin than the server's."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    tab = context.new_page()
    problems: list[str] = []
    tab.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    tab.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    tab.on(
        "request",
        lambda r: (
            None
            if r.url.startswith((server.base_url, "data:", "blob:"))
            else problems.append(f"external request: {r.url}")
        ),
    )
    tab.set_default_timeout(15_000)
    yield tab
    context.close()
    assert problems == []


def _screenshot(page: Any, name: str, tmp_path: Path, *, full_page: bool = False) -> None:
    folder = (
        REPO / "docs" / "img" if os.environ.get("PHOTO_ERASER_SCREENSHOTS") == "1" else tmp_path
    )
    page.screenshot(path=str(folder / name), full_page=full_page, animations="disabled")


def _sign_in(page: Any, server: ServerProcess, appkey: str, appsecret: str) -> None:
    page.goto(server.base_url + "/")
    page.fill("#appkey", appkey)
    page.fill("#appsecret", appsecret)
    page.click("#signin-btn")


def _png_file(name: str, pixels: np.ndarray) -> dict[str, Any]:
    return {"name": name, "mimeType": "image/png", "buffer": encode(pixels)}


def _marked(page: Any) -> int:
    return int(page.get_attribute("#mask-info", "data-marked"))


def _drag(page: Any, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*p, steps=4)
    page.mouse.up()


def test_upload_paint_run_compare_download(
    page: Any, server: ServerProcess, tmp_path: Path
) -> None:
    appkey, appsecret = server.create_key("studio")
    _sign_in(page, server, appkey, appsecret)
    page.wait_for_selector("#workspace:not([hidden])")
    assert json.loads(page.evaluate("sessionStorage.getItem('photo-eraser.credentials')")) == {
        "appkey": appkey,
        "appsecret": appsecret,
    }
    assert page.context.cookies() == []
    assert appsecret not in page.url

    inputs = [photo(640, 400, seed=1), photo(640, 400, seed=2), photo(320, 480, seed=3)]
    names = ["wide-1.png", "wide-2.png", "tall.png"]
    page.set_input_files(
        "#file-input", [_png_file(n, p) for n, p in zip(names, inputs, strict=True)]
    )
    expect(page.locator("#image-list li")).to_have_count(3)

    # A brush stroke, then a rectangle, on the first (landscape) image.
    box = page.locator("#view").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    _drag(page, [(cx - 200, cy - 100), (cx - 100, cy - 80), (cx, cy - 110)])
    after_stroke = _marked(page)
    assert after_stroke > 0
    page.keyboard.press("r")
    _drag(page, [(cx + 40, cy + 20), (cx + 160, cy + 90)])
    after_rect = _marked(page)
    assert after_rect > after_stroke
    page.keyboard.press("Control+z")
    assert _marked(page) == after_stroke
    page.keyboard.press("Control+Shift+z")
    assert _marked(page) == after_rect
    # Every image shows the mask: its thumbnail is drawn with it, the portrait included.
    page.click("#image-list li:nth-child(3) .pick")
    _screenshot(page, "studio-mask.png", tmp_path)

    polls: list[Any] = []  # the result requests, finished
    page.on("requestfinished", lambda r: polls.append(r) if "/rw/result/" in r.url else None)
    page.select_option("#engine", "opencv")
    with page.expect_request("**/v3/pic/rw/batch") as sent:
        page.click("#submit")
    batch = json.loads(sent.value.post_data)
    assert batch["engine"] == "opencv"
    # The batch names the uploaded files, in order (an upload's URL gives back its file).
    assert [httpx.get(url).content for url in batch["images"]] == [encode(p) for p in inputs]
    page.wait_for_selector("#run-status[data-status='3']", timeout=TASK_TIMEOUT_MS)
    # The page asked again only once the wait_time of the previous answer had passed.
    # (Browser timings, in ms: when each request started and its answer ended.)
    answers = [(r.timing["startTime"], r.response().json()["data"]["wait_time"]) for r in polls]
    # The first poll follows the create at once, before a worker has fetched three images.
    assert len(answers) >= 2 and answers[-1][1] == "0"
    for prev, (started, _) in zip(polls, answers[1:], strict=False):
        wait = float(prev.response().json()["data"]["wait_time"])
        answered = prev.timing["startTime"] + prev.timing["responseEnd"]
        assert started - answered >= wait * 1000 - 20
    rows = page.locator("#results tbody tr")
    assert rows.count() == 3
    for i in range(3):
        assert rows.nth(i).get_attribute("data-status") == "3"
        assert rows.nth(i).locator("td").nth(3).inner_text() == "opencv"

    # The before/after slider moves the divide.
    page.wait_for_selector("#compare-panel:not([hidden])")
    # (No wait_for_function: it evaluates strings, which the page's policy forbids.)
    expect(page.locator("#after")).to_have_js_property("complete", True)
    _screenshot(page, "studio-results.png", tmp_path, full_page=True)
    clip = "getComputedStyle(document.querySelector('#after')).clipPath"
    assert page.evaluate(clip) == "inset(0px 0px 0px 50%)"
    page.focus("#compare-slider")
    for _ in range(20):
        page.keyboard.press("ArrowLeft")
    assert page.evaluate(clip) == "inset(0px 0px 0px 30%)"
    page.click("#zoom-mask")
    assert "scale" in page.evaluate("document.querySelector('#compare-zoom').style.transform")
    _screenshot(page, "studio-compare.png", tmp_path)

    # Each result differs from its input inside the mask (as the service stretched it) and is
    # bit-identical outside it.
    mask = decode_mask(parse_mask_field(batch["mask"]).data or b"", 10 << 20)
    assert mask.shape == (400, 640)  # the first image's size
    downloads = []
    for i, pixels in enumerate(inputs):
        with page.expect_download() as dl:
            rows.nth(i).locator("a.download").click()
        assert dl.value.suggested_filename == names[i].replace(".png", "-erased.png")
        data = Path(dl.value.path()).read_bytes()
        downloads.append(data)
        result = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert result.shape == pixels.shape
        inside = fit_mask(mask, *pixels.shape[:2])
        changed = (result != pixels).any(axis=-1)
        assert not changed[~inside].any(), f"{names[i]}: pixels outside the mask changed"
        assert changed[inside].mean() > 0.5, f"{names[i]}: the masked area was not restored"

    with page.expect_download() as dl:
        page.click("#download-all")
    archive = zipfile.ZipFile(Path(dl.value.path()))
    assert archive.testzip() is None
    assert [archive.read(n) for n in archive.namelist()] == downloads
    assert archive.namelist() == [f"0{i + 1}-{n[:-4]}-erased.png" for i, n in enumerate(names)]


def test_wrong_key_is_named(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    _sign_in(page, server, "no-such-key", "wrong")
    msg = page.locator("#signin-msg")
    expect(msg).to_contain_text("not accepted")
    expect(msg).to_contain_text("invalid appkey or appsecret")
    assert page.locator("#workspace").is_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    _screenshot(page, "studio-wrong-key.png", tmp_path)


def test_too_small_image_is_refused_with_its_reason(
    page: Any, server: ServerProcess, tmp_path: Path
) -> None:
    appkey, appsecret = server.create_key("studio-small")
    _sign_in(page, server, appkey, appsecret)
    page.wait_for_selector("#workspace:not([hidden])")
    # Dropped on the drop zone, as a user drags files from their desktop.
    files = [("small.png", encode(photo(200, 200))), ("ok.png", encode(photo(300, 300)))]
    transfer = page.evaluate_handle(
        """files => {
            const dt = new DataTransfer();
            for (const [name, bytes] of files)
                dt.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
            return dt;
        }""",
        [[name, list(data)] for name, data in files],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    refused = page.locator("#refused li")
    expect(refused).to_have_count(1)
    assert refused.all_inner_texts() == ["small.png: resolution 200x200 is below 256x256"]
    expect(page.locator("#image-list li")).to_have_count(1)

    # Pasted URLs: another origin is listed for the service to fetch, never fetched by the
    # page (the fixture fails the test on any request to another origin).
    page.click("#url-box summary")
    page.fill("#url-input", "ftp://example.com/a.png https://images.example/photo.jpg")
    page.click("#add-urls")
    expect(page.locator("#image-list li")).to_have_count(2)
    assert refused.all_inner_texts() == [
        "ftp://example.com/a.png: only http and https URLs can be fetched by the service"
    ]

    # A narrow window: one column, nothing wider than the window.
    page.set_viewport_size({"width": 420, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    page.locator("#submit").scroll_into_view_if_needed()
    assert page.locator("#submit").is_visible()
    _screenshot(page, "studio-narrow.png", tmp_path)


def test_page_and_assets_types_and_policy(server: ServerProcess) -> None:
    """Served with explicit types and a policy that keeps the page to its own origin; not in
    the API's OpenAPI document."""
    with httpx.Client(base_url=server.base_url) as http:
        for path in ("/", "/studio"):
            r = http.get(path)
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/html; charset=utf-8"
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "http" not in csp  # no other origin
        for name, media in [
            ("studio.js", "text/javascript; charset=utf-8"),
            ("zip.js", "text/javascript; charset=utf-8"),
            ("studio.css", "text/css; charset=utf-8"),
        ]:
            r = http.get(f"/studio/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"] == media
            assert r.headers["x-content-type-options"] == "nosniff"
        r = http.get("/studio/static/../config.py")
        assert r.status_code == 404 and r.json()["code"] == 40401
        assert not any(
            p.startswith("/studio") or p == "/" for p in http.get("/openapi.json").json()["paths"]
        )


def test_mask_tools(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    """Brush size keys, eraser, clear and undo, zoom, hold to see the original, and a mask
    saved as PNG then loaded back."""
    appkey, appsecret = server.create_key("studio-tools")
    _sign_in(page, server, appkey, appsecret)
    page.wait_for_selector("#workspace:not([hidden])")
    big = {"name": "big.jpg", "mimeType": "image/jpeg", "buffer": encode(photo(2600, 1300), "JPEG")}
    page.set_input_files("#file-input", [_png_file("one.png", photo(600, 300, seed=4)), big])
    expect(page.locator("#image-list li")).to_have_count(2)
    expect(page.locator("#image-list li .meta").nth(1)).to_have_text("2600×1300")
    box = page.locator("#view").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    for _ in range(3):
        page.keyboard.press("]")
    assert int(page.inner_text("#brush-size-out")) > 40
    _drag(page, [(cx - 150, cy), (cx + 150, cy)])
    painted = _marked(page)
    page.keyboard.press("e")
    _drag(page, [(cx, cy - 60), (cx, cy + 60)])
    erased = _marked(page)
    assert 0 < erased < painted
    page.click("#clear")
    assert _marked(page) == 0
    page.click("#undo")
    assert _marked(page) == erased

    page.keyboard.press("+")
    expect(page.locator("#stage")).to_have_attribute("data-zoom", "1.250")
    page.keyboard.press("0")
    expect(page.locator("#stage")).to_have_attribute("data-zoom", "1.000")
    page.keyboard.down("o")
    expect(page.locator("#show-original")).to_have_attribute("aria-pressed", "true")
    page.keyboard.up("o")
    expect(page.locator("#show-original")).to_have_attribute("aria-pressed", "false")

    with page.expect_download() as dl:
        page.click("#save-mask")
    saved = np.asarray(Image.open(Path(dl.value.path())).convert("L"))
    assert saved.shape == (300, 600) and set(np.unique(saved)) == {0, 255}
    assert int((saved == 255).sum()) == erased

    loaded = np.zeros((150, 300), np.uint8)
    loaded[10:60, 20:120] = 255
    page.set_input_files(
        "#load-mask", [{"name": "m.png", "mimeType": "image/png", "buffer": encode(loaded)}]
    )
    expect(page.locator("#mask-info")).to_have_attribute("data-marked", str(50 * 100))
    page.click("#undo")
    assert _marked(page) == erased


def test_anchored_mask_follows_a_portrait_image(
    page: Any, server: ServerProcess, tmp_path: Path
) -> None:
    """A mark painted at the bottom-right of a landscape photo, run with "anchor" at the
    top-right: the portrait photo's thumbnail shows the mask there (not where stretching would
    put it), the batch names the placement, and the service restores exactly that area."""
    appkey, appsecret = server.create_key("studio-anchor")
    _sign_in(page, server, appkey, appsecret)
    page.wait_for_selector("#workspace:not([hidden])")
    inputs = [photo(640, 400, seed=7), photo(320, 480, seed=8)]
    page.set_input_files(
        "#file-input", [_png_file("wide.png", inputs[0]), _png_file("tall.png", inputs[1])]
    )
    expect(page.locator("#image-list li")).to_have_count(2)

    # A rectangle over image pixels x 500..600, y 300..380 of the landscape photo.
    view = page.locator("#view").bounding_box()
    scale = min(view["width"] / 640, view["height"] / 400) * 0.96
    left = view["x"] + (view["width"] - 640 * scale) / 2
    top = view["y"] + (view["height"] - 400 * scale) / 2
    page.keyboard.press("r")
    _drag(page, [(left + 500 * scale, top + 300 * scale), (left + 600 * scale, top + 380 * scale)])
    assert _marked(page) > 0

    # The portrait thumbnail at the anchored box's centre (x 248, y 272 of the image, where a
    # stretched mask leaves the photo bare), before and after choosing the placement.
    overlay = """([x, y]) => {
      const c = document.querySelectorAll('#image-list li canvas')[1];
      const s = Math.min(c.width / 320, c.height / 480);
      const px = Math.round((c.width - 320 * s) / 2 + x * s);
      const py = Math.round((c.height - 480 * s) / 2 + y * s);
      return Array.from(c.getContext('2d').getImageData(px, py, 1, 1).data);
    }"""
    stretched = page.evaluate(overlay, [248, 272])
    page.select_option("#mask-fit", "anchor")
    expect(page.locator("#mask-anchor-label")).to_be_visible()
    page.select_option("#mask-anchor", "top-right")
    anchored = page.evaluate(overlay, [248, 272])
    bare = page.evaluate(overlay, [275, 408])  # where stretching put the mark

    def shows_photo(rgba: list[int], y: int, x: int) -> bool:  # the thumbnail is scaled down
        return bool(np.abs(np.array(rgba[:3]) - inputs[1][y, x].astype(int)).max() < 30)

    assert shows_photo(stretched, 272, 248) and shows_photo(bare, 408, 275)
    assert anchored[0] > 200 and anchored[1] < 110  # the mask's overlay (255, 48, 96) at 0.8
    page.click("#image-list li:nth-child(2) .pick")  # the portrait, with the mask's footprint
    _screenshot(page, "studio-anchor.png", tmp_path)

    page.select_option("#engine", "opencv")
    with page.expect_request("**/v3/pic/rw/batch") as sent:
        page.click("#submit")
    batch = json.loads(sent.value.post_data)
    assert (batch["mask_fit"], batch["mask_anchor"]) == ("anchor", "top-right")
    page.wait_for_selector("#run-status[data-status='3']", timeout=TASK_TIMEOUT_MS)
    mask = decode_mask(parse_mask_field(batch["mask"]).data or b"", 10 << 20)
    placement = MaskPlacement(fit="anchor", anchor="top-right")
    rows = page.locator("#results tbody tr")
    for i, pixels in enumerate(inputs):
        with page.expect_download() as dl:
            rows.nth(i).locator("a.download").click()
        result = np.asarray(Image.open(Path(dl.value.path())).convert("RGB"))
        inside = place_mask(mask, *pixels.shape[:2], placement)
        changed = (result != pixels).any(axis=-1)
        assert inside[272, 248] == (i == 1)  # the portrait's mark is where the thumbnail showed
        assert not changed[~inside].any() and changed[inside].mean() > 0.5


# ---- "mask": "auto": the service finds the watermark the batch shares --------------------

AUTO_H, AUTO_W = 270, 360  # real photos, above the 256 px minimum, small enough to stay fast
OVERLAY_RGB = np.array([255, 48, 96])  # the page's mask colour (studio.js MASK_RGB)
OVERLAY_OPACITY = 0.55  # the page's default mask opacity


def _auto_batch(n: int, seed: int) -> list[np.ndarray]:
    """``n`` crops of scikit-image's photos, each with the same white text at opacity 0.5."""
    photos = wm.crops(n, AUTO_H, AUTO_W, seed=seed)
    coverage = wm.text_coverage(AUTO_H, AUTO_W)
    white = wm.solid_colour((255, 255, 255), AUTO_H, AUTO_W)
    return wm.stamp(photos, 0.5 * coverage, white)


def _view_pixel(page: Any, image_w: int, image_h: int, x: int, y: int) -> np.ndarray:
    """The editor canvas's RGB at image pixel (x, y) of the shown image (fitted, not zoomed)."""
    rgba = page.evaluate(
        """([w, h, x, y]) => {
          const c = document.querySelector('#view');
          const s = Math.min(c.width / w, c.height / h) * 0.96;
          const px = Math.floor((c.width - w * s) / 2 + (x + 0.5) * s);
          const py = Math.floor((c.height - h * s) / 2 + (y + 0.5) * s);
          return Array.from(c.getContext('2d').getImageData(px, py, 1, 1).data);
        }""",
        [image_w, image_h, x, y],
    )
    return np.array(rgba[:3], float)


def _deepest(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` farthest from its edge: safe to sample once scaled."""
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return int(x), int(y)


def test_auto_mask_finds_the_watermark_and_shows_it(
    page: Any, server: ServerProcess, tmp_path: Path
) -> None:
    """Six photos sharing a semi-transparent text mark: with "Find the watermark
    automatically" no painting happens and no placement is offered, the batch says
    ``"mask": "auto"``, and after the run the mask the service found is drawn on the images
    (the same pixels as ``data.detected_mask``), each row gives its method, and the mask can
    be taken over as a painted one."""
    appkey, appsecret = server.create_key("studio-auto")
    _sign_in(page, server, appkey, appsecret)
    page.wait_for_selector("#workspace:not([hidden])")
    stamped = _auto_batch(6, seed=5)
    page.set_input_files(
        "#file-input", [_png_file(f"shop-{i}.png", im) for i, im in enumerate(stamped)]
    )
    expect(page.locator("#image-list li")).to_have_count(6)

    choice = page.get_by_label("Find the watermark automatically")
    expect(choice).to_be_visible()
    assert "needs 4+ images sharing a mark" in page.inner_text("#mask-mode")
    choice.check()
    expect(page.locator("#mask-tools")).to_be_hidden()
    expect(page.locator("#mask-fit-label")).to_be_hidden()
    expect(page.locator("#mask-info")).to_contain_text("all 6 images carry")
    # A drag over the photo moves the view; it paints nothing.
    box = page.locator("#view").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.keyboard.press("b")  # the brush key does nothing either
    _drag(page, [(cx - 100, cy), (cx + 100, cy)])
    assert _marked(page) == 0
    page.keyboard.press("0")  # fit the view again

    answers: list[dict[str, Any]] = []
    page.on(
        "requestfinished",
        lambda r: answers.append(r.response().json()) if "/rw/result/" in r.url else None,
    )
    page.select_option("#engine", "restore")
    with page.expect_request("**/v3/pic/rw/batch") as sent:
        page.click("#submit")
    batch = json.loads(sent.value.post_data)
    assert batch["mask"] == "auto" and "mask_fit" not in batch and "mask_anchor" not in batch
    page.wait_for_selector("#run-status[data-status='3']", timeout=TASK_TIMEOUT_MS)
    expect(page.locator("#detected")).to_be_visible()
    data = answers[-1]["data"]
    assert data["status"] == "3"
    detected = np.asarray(Image.open(io.BytesIO(httpx.get(data["detected_mask"]).content))) > 0
    assert detected.shape == (AUTO_H, AUTO_W) and detected.any()
    assert page.get_attribute("#detected-download", "href") == data["detected_mask"]
    expect(page.locator("#detected")).to_have_attribute("data-marked", str(int(detected.sum())))
    expect(page.locator("#auto-msg")).to_be_hidden()

    # Each image's method, as the service reported it.
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(6)
    for i, item in enumerate(data["list"]):
        assert item["status"] == "3" and item["method"].startswith("restore"), item
        assert rows.nth(i).get_attribute("data-status") == "3"
        assert rows.nth(i).locator("td").nth(3).inner_text() == item["method"]

    # The editor shows the mask found over the current image: the overlay's colour inside
    # it, the photo as it is far from it.
    page.click("#image-list li:nth-child(1) .pick")
    page.wait_for_timeout(200)  # the next animation frame draws it
    x, y = _deepest(detected)
    expected = (1 - OVERLAY_OPACITY) * stamped[0][y, x] + OVERLAY_OPACITY * OVERLAY_RGB
    assert np.abs(_view_pixel(page, AUTO_W, AUTO_H, x, y) - expected).max() < 30
    x, y = _deepest(~cv2.dilate(detected.astype(np.uint8), np.ones((15, 15))).astype(bool))
    assert np.abs(_view_pixel(page, AUTO_W, AUTO_H, x, y) - stamped[0][y, x]).max() < 30
    _screenshot(page, "studio-auto.png", tmp_path, full_page=True)

    # Taken over as a painted mask: the painting tools come back with exactly that mask.
    page.click("#detected-edit")
    expect(page.locator("#mask-tools")).to_be_visible()
    assert page.is_checked("input[name='mask-mode'][value='paint']")
    assert _marked(page) == int(detected.sum())


def test_auto_mask_failure_says_why(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    """Two images: the page says automatic detection needs four and sends nothing. Six photos
    without a shared mark: the task fails and the page shows the service's reason, not a
    generic error."""
    appkey, appsecret = server.create_key("studio-auto-fail")
    _sign_in(page, server, appkey, appsecret)
    page.wait_for_selector("#workspace:not([hidden])")
    clean = [wm.jpeg(p) for p in wm.crops(6, AUTO_H, AUTO_W, seed=21)]
    files = [_png_file(f"clean-{i}.png", im) for i, im in enumerate(clean)]
    page.set_input_files("#file-input", files[:2])
    expect(page.locator("#image-list li")).to_have_count(2)
    page.get_by_label("Find the watermark automatically").check()
    info = page.locator("#mask-info")
    expect(info).to_contain_text("Add 2 more images")
    expect(info).to_have_class("hint warn")

    batches: list[str] = []
    page.on("request", lambda r: batches.append(r.url) if "/rw/batch" in r.url else None)
    page.click("#submit")
    notice = page.locator("#auto-msg")
    expect(notice).to_be_visible()
    expect(page.locator("#auto-msg-title")).to_have_text(
        "Not enough images to find the watermark automatically"
    )
    expect(page.locator("#auto-msg-reason")).to_have_text(
        "Automatic detection needs at least 4 images that carry the same watermark; "
        "this batch has 2."
    )
    expect(page.locator("#auto-msg-help")).to_contain_text('"Paint a mask"')
    assert batches == []

    page.set_input_files("#file-input", files[2:])
    expect(page.locator("#image-list li")).to_have_count(6)
    expect(info).to_have_class("hint")
    page.select_option("#engine", "restore")
    page.click("#submit")
    expect(notice).to_be_hidden()  # the new run clears the old message
    page.wait_for_selector("#run-status[data-status='4']", timeout=TASK_TIMEOUT_MS)
    reason = "no shared watermark found in 6 images; send a mask"
    expect(notice).to_be_visible()
    expect(page.locator("#auto-msg-title")).to_have_text(
        "No watermark was found, so nothing was erased"
    )
    expect(page.locator("#auto-msg-reason")).to_have_text(reason)
    assert len(batches) == 1
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(6)
    for i in range(6):
        assert rows.nth(i).get_attribute("data-status") == "4"
        assert rows.nth(i).locator("td.reason").inner_text() == reason
    expect(page.locator("#detected")).to_be_hidden()
    assert page.locator("#compare-panel").is_hidden()
    _screenshot(page, "studio-auto-failed.png", tmp_path, full_page=True)


def test_auto_mask_found_but_not_drawable_keeps_the_results(
    page: Any, server: ServerProcess, tmp_path: Path
) -> None:
    """The mask found cannot be read by the page (here its link answers something that is not
    an image, as an object store that forbids reading it would): the page says so, the
    results stand, and the link to the mask is still offered."""
    appkey, appsecret = server.create_key("studio-auto-undrawable")
    _sign_in(page, server, appkey, appsecret)
    page.wait_for_selector("#workspace:not([hidden])")
    page.route(
        "**/detected-mask.png?*",
        lambda route: route.fulfill(status=200, content_type="image/png", body=b"not a png"),
    )
    stamped = _auto_batch(6, seed=5)
    page.set_input_files(
        "#file-input", [_png_file(f"shop-{i}.png", im) for i, im in enumerate(stamped)]
    )
    expect(page.locator("#image-list li")).to_have_count(6)
    page.get_by_label("Find the watermark automatically").check()
    page.select_option("#engine", "opencv")
    page.click("#submit")
    page.wait_for_selector("#run-status[data-status='3']", timeout=TASK_TIMEOUT_MS)
    expect(page.locator("#auto-msg-title")).to_have_text(
        "The watermark was found, but its mask cannot be drawn here"
    )
    expect(page.locator("#detected")).to_be_visible()
    expect(page.locator("#detected-edit")).to_be_hidden()
    assert "detected-mask.png?" in (page.get_attribute("#detected-download", "href") or "")
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(6)
    for i in range(6):
        assert rows.nth(i).get_attribute("data-status") == "3"
        assert rows.nth(i).locator("td").nth(3).inner_text() == "opencv"
