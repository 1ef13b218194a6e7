"""Does LaMa's pre/post-processing cost follow the mask, not the image size?

Times ``LamaEngine.inpaint`` minus the model call, with a stand-in ONNX model of LaMa's
contract (fixed 512x512, built with onnx.helper), on a 4000x3000 and a 1000x750 image with the
same 300x100 mask, and prints the ratio (goal: <= 1.3). With ``--data-dir`` (or the usual
``PHOTO_ERASER_*`` settings) pointing at an installed LaMa model, also times real inference.

    .venv/bin/python bench/lama_crop.py [--repeat 30] [--threads 1] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from photo_eraser.config import Settings
from photo_eraser.engines.lama import LamaEngine
from photo_eraser.models.manager import installed_path

SIZES = [(4000, 3000), (1000, 750)]
MASK = (400, 500, 600, 900)  # y0, y1, x0, x1: 300 wide, 100 high, inside both images


def stand_in_model(path: Path, side: int = 512) -> Path:
    """image * (1 - mask) + 0.5 * mask, fixed 1x3xSIDExSIDE: the cheapest LaMa look-alike."""
    shape = [1, 3, side, side]
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["one", "mask"], ["keep"]),
            helper.make_node("Mul", ["image", "keep"], ["kept"]),
            helper.make_node("Mul", ["mask", "half"], ["painted"]),
            helper.make_node("Add", ["kept", "painted"], ["output"]),
        ],
        "lama_stand_in",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, side, side]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


class TimedEngine(LamaEngine):
    """Adds up the time spent in the model call."""

    model_seconds = 0.0

    def _infer(self, model, images, masks):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return super()._infer(model, images, masks)
        finally:
            self.model_seconds += time.perf_counter() - start


def time_processing(
    engine: TimedEngine, width: int, height: int, repeat: int, in_place: bool
) -> dict[str, float]:
    """Median seconds of one image minus the model call, and of the model call."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    y0, y1, x0, x1 = MASK
    mask[y0:y1, x0:x1] = True
    processing, model = [], []
    for i in range(repeat + 2):
        engine.model_seconds = 0.0
        start = time.perf_counter()
        if in_place:
            engine.restore([image], [mask], in_place=True)
        else:
            engine.inpaint(image, mask)
        total = time.perf_counter() - start
        if i >= 2:  # the first runs warm caches and the allocator
            processing.append(total - engine.model_seconds)
            model.append(engine.model_seconds)
    return {"processing": statistics.median(processing), "model": statistics.median(model)}


def real_inference(path: Path, threads: int, repeat: int) -> float:
    """Median seconds of one model call of the installed model on one crop."""
    engine = TimedEngine(path, threads=threads)
    image = np.random.default_rng(1).integers(0, 256, (750, 1000, 3), dtype=np.uint8)
    mask = np.zeros((750, 1000), bool)
    y0, y1, x0, x1 = MASK
    mask[y0:y1, x0:x1] = True
    engine.inpaint(image, mask)
    times = []
    for _ in range(repeat):
        engine.model_seconds = 0.0
        engine.inpaint(image, mask)
        times.append(engine.model_seconds)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, OpenCV {cv2.__version__}, "
        f"onnxruntime {ort.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--data-dir", type=Path, default=None, help="to find a real model")
    args = parser.parse_args()

    print(f"command: {Path(sys.executable).name} {' '.join(sys.argv)}")
    print(f"machine: {machine()}")
    y0, y1, x0, x1 = MASK
    print(
        f"mask: {x1 - x0}x{y1 - y0} at x={x0}, y={y0}; stand-in model 512x512; "
        f"median of {args.repeat} runs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        engine = TimedEngine(stand_in_model(Path(tmp) / "stand_in.onnx"), threads=args.threads)
        for label, in_place in [
            ("inpaint (returns a new array; e.g. the restore engine's fallback calls)", False),
            ("restore(in_place=True), what the service pipeline calls (no full-size copy)", True),
        ]:
            print(label)
            seconds = []
            for width, height in SIZES:
                r = time_processing(engine, width, height, args.repeat, in_place)
                seconds.append(r["processing"])
                print(
                    f"  {width}x{height}: pre/post {r['processing'] * 1e3:6.2f} ms, "
                    f"stand-in model call {r['model'] * 1e3:.2f} ms"
                )
            print(
                f"  ratio {SIZES[0][0]}x{SIZES[0][1]} / {SIZES[1][0]}x{SIZES[1][1]}: "
                f"{seconds[0] / seconds[1]:.2f} (goal <= 1.3)"
            )

    settings = Settings() if args.data_dir is None else Settings(data_dir=args.data_dir)
    path = installed_path("lama", settings.models_path)
    if path is None:
        print(f"real model: not installed in {settings.models_path} (inference not timed)")
    else:
        seconds = real_inference(path, args.threads, max(1, min(args.repeat, 5)))
        print(f"real model {path}: {seconds:.2f} s per 512x512 crop, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
