"""A client of the API, as an integrating customer would write it."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
from PIL import Image


class ApiClient:
    """A thin client of the seed contract, as an integrating customer would write it."""

    def __init__(
        self,
        base_url: str,
        appkey: str,
        appsecret: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = base64.b64encode(f"{appkey}:{appsecret}".encode()).decode()
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
            timeout=30,
            transport=transport,
        )

    def create(
        self, images: list[str], mask: str, priority: int = 1, **extra: object
    ) -> httpx.Response:
        return self.create_body({"images": images, "mask": mask, "priority": priority, **extra})

    def create_body(self, body: dict[str, object]) -> httpx.Response:
        """A create with exactly ``body`` (e.g. ``rectangles`` and no ``mask``)."""
        return self.http.post("/v3/pic/rw/batch", json=body)

    def result_pixels(self, url: str) -> np.ndarray:
        """The RGB pixels of a result link."""
        r = self.http.get(url)
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))

    def create_ok(self, images: list[str], mask: str, priority: int = 1, **extra: object) -> str:
        r = self.create(images, mask, priority, **extra)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["code"] == 0 and body["msg"] == ""
        return str(body["data"]["task_id"])

    def result(self, task_id: str) -> httpx.Response:
        return self.http.get(f"/v3/pic/rw/result/{task_id}")

    def wait(
        self, task_id: str, timeout: float = 60, until: tuple[str, ...] = ("3", "4", "5", "6")
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.result(task_id)
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            if data["status"] in until:
                return dict(data)
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} still {data['status']} after {timeout} s")

    def close(self) -> None:
        self.http.close()
