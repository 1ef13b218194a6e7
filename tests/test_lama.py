"""LamaEngine against small ONNX models with LaMa's contract, built here with onnx.helper."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.images import rect_mask
from photo_eraser.engines import lama as lama_module
from photo_eraser.engines.base import EngineError, EngineUnavailable
from photo_eraser.engines.lama import LamaEngine, seam_weights
from photo_eraser.engines.registry import EngineRegistry

FILL = 0.4  # the "fill" model paints masked pixels with this value; 0.4 * 255 = 102


def build_model(
    path: Path,
    kind: str = "fill",
    size: tuple[int, int] | None = (64, 64),
    batch: int | None = 1,
    scale: float = 1.0,
    elem: int = TensorProto.FLOAT,
) -> Path:
    """Write an ONNX model with inputs ``image`` [N,3,H,W], ``mask`` [N,1,H,W], one output.

    kinds: ``fill`` = image * (1 - mask) + FILL * mask; ``negate`` = 1 - image;
    ``echo`` = the mask on all three channels. The output is multiplied by ``scale``.
    """
    h, w = size if size is not None else ("H", "W")
    n = batch if batch is not None else "N"
    inputs = [
        helper.make_tensor_value_info("image", elem, [n, 3, h, w]),
        helper.make_tensor_value_info("mask", elem, [n, 1, h, w]),
    ]
    output = helper.make_tensor_value_info("output", elem, [n, 3, h, w])
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    consts = {"one": 1.0, "zero": 0.0, "fill": FILL, "scale": scale}
    initializers = [numpy_helper.from_array(np.array(v, dtype), k) for k, v in consts.items()]
    mk = helper.make_node
    if kind == "fill":
        nodes = [
            mk("Sub", ["one", "mask"], ["keep"]),
            mk("Mul", ["image", "keep"], ["kept"]),
            mk("Mul", ["mask", "fill"], ["painted"]),
            mk("Add", ["kept", "painted"], ["result"]),
        ]
    elif kind == "negate":
        nodes = [
            mk("Sub", ["one", "image"], ["negated"]),
            mk("Mul", ["mask", "zero"], ["nothing"]),
            mk("Add", ["negated", "nothing"], ["result"]),
        ]
    elif kind == "echo":
        nodes = [
            mk("Mul", ["image", "zero"], ["zeros"]),
            mk("Add", ["zeros", "mask"], ["result"]),
        ]
    else:
        raise ValueError(kind)
    nodes.append(mk("Mul", ["result", "scale"], ["output"]))
    graph = helper.make_graph(nodes, "lama_stand_in", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


class RecordingEngine(LamaEngine):
    """Records the shape of every model call."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[int, ...]] = []

    def _infer(self, model, images, masks):  # type: ignore[no-untyped-def]
        self.calls.append(images.shape)
        assert masks.shape == (images.shape[0], 1, *images.shape[2:])
        assert set(np.unique(masks)) <= {0.0, 1.0}
        return super()._infer(model, images, masks)


def gradient(h: int, w: int) -> np.ndarray:
    """A smooth RGB image (linear ramps), which resampling reproduces closely."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = [20 + 200 * y / h, 20 + 200 * x / w, 20 + 100 * (x + y) / (w + h)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def assert_outside_unchanged(result: np.ndarray, image: np.ndarray, mask: np.ndarray) -> None:
    assert result.shape == image.shape and result.dtype == np.uint8
    assert np.array_equal(result[~mask], image[~mask])


# --- output values, both ranges, fixed and dynamic sizes -----------------------------------


@pytest.mark.parametrize("scale", [1.0, 255.0], ids=["unit", "byte"])
@pytest.mark.parametrize("size", [(64, 64), None], ids=["fixed", "dynamic"])
def test_fill_values_are_exact_in_both_output_ranges(
    tmp_path: Path, scale: float, size: tuple[int, int] | None
) -> None:
    engine = LamaEngine(build_model(tmp_path / "m.onnx", "fill", size, scale=scale), feather=0)
    image = noise(300, 200)
    mask = rect_mask(300, 200, (100, 160, 50, 90))  # 60x40, scaled for the fixed model
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert (result[mask] == 102).all()
    expected_scale = 1 / 255 if scale == 255.0 else 1.0
    assert engine.load().output_scale == expected_scale


@pytest.mark.parametrize("shape", [(120, 200), (200, 120)], ids=["landscape", "portrait"])
def test_unscaled_crop_is_placed_exactly(tmp_path: Path, shape: tuple[int, int]) -> None:
    # A 10x12 mask on a fixed 64x64 model: the crop is exactly 64x64, no resampling.
    engine = RecordingEngine(build_model(tmp_path / "m.onnx", "negate"), feather=0)
    image = noise(*shape, seed=1)
    mask = rect_mask(*shape, (5, 15, 100, 112))  # near the top edge: the crop is shifted
    mask[8, 112] = True  # a ragged edge
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert np.array_equal(result[mask], 255 - image[mask])
    assert engine.calls == [(1, 3, 64, 64)]


def test_image_smaller_than_the_model_is_padded_not_stretched(tmp_path: Path) -> None:
    # Height 40 < 64: the crop is 40x64, padded by reflection to 64x64; values stay exact.
    engine = RecordingEngine(build_model(tmp_path / "m.onnx", "negate"), feather=0)
    image = noise(40, 300, seed=2)
    mask = rect_mask(40, 300, (10, 30, 140, 150))
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert np.array_equal(result[mask], 255 - image[mask])
    assert engine.calls == [(1, 3, 64, 64)]


def test_scaled_crop_maps_back_to_the_right_place(tmp_path: Path) -> None:
    # A 60x45 mask needs a 180x180 crop, shrunk to 64x64 and enlarged back.
    engine = RecordingEngine(build_model(tmp_path / "m.onnx", "negate"), feather=0)
    image = gradient(400, 300)
    mask = rect_mask(400, 300, (150, 210, 100, 145))
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    error = np.abs(result[mask].astype(int) - (255 - image[mask].astype(int)))
    assert error.max() <= 3
    assert engine.calls == [(1, 3, 64, 64)]


def test_small_image_is_enlarged_for_a_fixed_model(tmp_path: Path) -> None:
    engine = LamaEngine(build_model(tmp_path / "m.onnx", "negate"), feather=0)
    image = gradient(40, 48)
    mask = rect_mask(40, 48, (15, 25, 20, 30))
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    error = np.abs(result[mask].astype(int) - (255 - image[mask].astype(int)))
    assert error.max() <= 3


def test_mask_reaches_the_model_aligned(tmp_path: Path) -> None:
    # The echo model returns the mask it got: every masked pixel must read back as 255.
    engine = LamaEngine(build_model(tmp_path / "m.onnx", "echo"), feather=0)
    image = noise(64, 64, seed=3)
    mask = rect_mask(64, 64, (20, 30, 10, 50), (40, 41, 5, 60))
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert (result[mask] == 255).all()


def test_dynamic_model_pads_to_a_multiple_of_8_without_resizing(tmp_path: Path) -> None:
    engine = RecordingEngine(build_model(tmp_path / "m.onnx", "negate", size=None), feather=0)
    image = noise(300, 250, seed=4)
    mask = rect_mask(300, 250, (100, 190, 80, 170))  # 90x90 -> a 270x270 crop, clamped to 250
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert np.array_equal(result[mask], 255 - image[mask])
    [(n, c, h, w)] = engine.calls
    assert (n, c) == (1, 3) and h % 8 == 0 and w % 8 == 0
    assert (h, w) == (272, 256)  # 270x250 rounded up: padded, not resized


def test_dynamic_model_resizes_crops_above_the_limit(tmp_path: Path) -> None:
    engine = RecordingEngine(
        build_model(tmp_path / "m.onnx", "negate", size=None), feather=0, max_dynamic_side=96
    )
    image = gradient(300, 400)
    mask = rect_mask(300, 400, (120, 180, 150, 210))  # 60x60 -> 180x180 crop -> 96x96
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    error = np.abs(result[mask].astype(int) - (255 - image[mask].astype(int)))
    assert error.max() <= 3
    assert engine.calls == [(1, 3, 96, 96)]


# --- several masks, batching -----------------------------------------------------------------


def test_several_masks_get_one_crop_each_batched_when_allowed(tmp_path: Path) -> None:
    engine = RecordingEngine(
        build_model(tmp_path / "m.onnx", "negate", batch=None), feather=0, max_batch=2
    )
    image = noise(300, 500, seed=5)
    boxes = [(20, 30, 20, 35), (200, 215, 40, 50), (100, 110, 300, 320), (250, 260, 440, 455)]
    mask = rect_mask(300, 500, *boxes)
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert np.array_equal(result[mask], 255 - image[mask])
    assert engine.calls == [(2, 3, 64, 64), (2, 3, 64, 64)]


def test_fixed_batch_runs_one_crop_per_call(tmp_path: Path) -> None:
    engine = RecordingEngine(build_model(tmp_path / "m.onnx", "negate", batch=1), feather=0)
    image = noise(300, 500, seed=6)
    mask = rect_mask(300, 500, (20, 30, 20, 35), (200, 215, 400, 410), (150, 160, 200, 210))
    result = engine.inpaint(image, mask)
    assert np.array_equal(result[mask], 255 - image[mask])
    assert engine.calls == [(1, 3, 64, 64)] * 3


def test_nearby_masks_share_one_crop(tmp_path: Path) -> None:
    engine = RecordingEngine(build_model(tmp_path / "m.onnx", "negate"), feather=0)
    image = noise(300, 300, seed=7)
    # Each mask's 64x64 crop reaches the others: one crop for all three.
    mask = rect_mask(300, 300, (100, 110, 100, 110), (112, 115, 115, 118), (118, 119, 100, 101))
    result = engine.inpaint(image, mask)
    assert np.array_equal(result[mask], 255 - image[mask])
    assert engine.calls == [(1, 3, 64, 64)]


def test_many_specks_are_grouped(tmp_path: Path) -> None:
    engine = RecordingEngine(
        build_model(tmp_path / "m.onnx", "fill", batch=None), feather=0, max_batch=64
    )
    image = noise(400, 400, seed=8)
    mask = np.zeros((400, 400), bool)
    mask[::9, ::9] = True  # 2025 isolated pixels
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert (result[mask] == 102).all()
    assert sum(call[0] for call in engine.calls) <= lama_module.MAX_GROUPS


def test_restore_batches_crops_of_several_images(tmp_path: Path) -> None:
    engine = RecordingEngine(build_model(tmp_path / "m.onnx", "fill", batch=None), feather=0)
    images = [noise(100, 120, seed=9), noise(130, 90, seed=10)]
    masks = [rect_mask(100, 120, (40, 50, 40, 50)), rect_mask(130, 90, (0, 8, 0, 8))]
    results = engine.restore(images, masks)
    assert [r.method for r in results] == ["lama", "lama"]
    for result, image, mask in zip(results, images, masks, strict=True):
        assert_outside_unchanged(result.image, image, mask)
        assert (result.image[mask] == 102).all()
    assert engine.calls == [(2, 3, 64, 64)]


def test_empty_mask_needs_no_model(tmp_path: Path) -> None:
    engine = LamaEngine(tmp_path / "absent.onnx")
    image = noise(50, 60)
    result = engine.inpaint(image, np.zeros((50, 60), bool))
    assert np.array_equal(result, image) and result is not image


def test_mask_must_match_the_image(tmp_path: Path) -> None:
    engine = LamaEngine(tmp_path / "absent.onnx")
    with pytest.raises(ValueError, match="does not match"):
        engine.inpaint(noise(50, 60), np.ones((60, 50), bool))


# --- the feathered seam ----------------------------------------------------------------------


def test_seam_is_feathered_inside_the_mask_only(tmp_path: Path) -> None:
    engine = LamaEngine(build_model(tmp_path / "m.onnx", "fill"), feather=2)
    image = np.full((100, 100, 3), 30, np.uint8)
    mask = rect_mask(100, 100, (30, 50, 30, 50), (70, 72, 10, 60), (0, 10, 80, 100))
    result = engine.inpaint(image, mask)[..., 0]
    assert_outside_unchanged(result[..., None], image[..., :1], mask)
    # Thick 20x20 block: outer ring 1/3 of the prediction, next ring 2/3, then all of it.
    # 102 / 3 + 30 * 2 / 3 = 54; 102 * 2 / 3 + 30 / 3 = 78.
    assert result[30, 30:50].tolist() == [54] * 20
    assert result[31, 31:49].tolist() == [78] * 18
    assert (result[32:48, 32:48] == 102).all()
    # The 2-pixel line is too thin to feather: filled fully.
    assert (result[70:72, 10:60] == 102).all()
    # The corner block touches the image's top and right edges: no seam along them.
    assert result[0, 80:100].tolist() == [54] + [78] + [102] * 18
    assert result[9, 81:100].tolist() == [54] * 19


def test_seam_weights_formula() -> None:
    mask = rect_mask(9, 9, (1, 8, 1, 8))
    weights = seam_weights(mask, feather=1)
    assert weights[0].tolist() == [0.0] * 9
    assert weights[1, 1:8].tolist() == [0.5] * 7
    assert weights[2, 2:7].tolist() == [1.0] * 5
    assert (seam_weights(mask, feather=0) == mask).all()


# --- loading ---------------------------------------------------------------------------------


def test_corrupt_model_is_a_clear_error_and_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lama_fp32.onnx"
    path.write_bytes(b"this is not an onnx file" * 10)
    opened = []
    real_session = ort.InferenceSession

    def counting_session(*args: object, **kwargs: object) -> object:
        opened.append(args[0])
        return real_session(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting_session)
    engine = LamaEngine(path)
    image, mask = noise(64, 64), rect_mask(64, 64, (10, 20, 10, 20))
    for _ in range(3):
        with pytest.raises(EngineError, match="cannot be loaded.*photo-eraser models pull lama"):
            engine.inpaint(image, mask)
    assert len(opened) == 1
    # Replacing the file is noticed without a restart.
    build_model(path, "fill")
    assert (engine.inpaint(image, mask)[mask] != image[mask]).any()
    assert len(opened) == 2


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    registry = EngineRegistry(tmp_path)
    assert registry.availability()["lama"] is False
    with pytest.raises(EngineUnavailable, match="needs its model.*models pull lama"):
        registry.get("lama")
    engine = LamaEngine(tmp_path / "lama_fp32.onnx")
    with pytest.raises(EngineError, match="is missing.*models pull lama"):
        engine.load()


def test_model_with_another_signature_is_rejected(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "other.onnx")
    with pytest.raises(EngineError, match="not a LaMa-style model"):
        LamaEngine(tmp_path / "other.onnx").load()


def test_session_is_created_once_with_the_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = []
    real_session = ort.InferenceSession

    def counting_session(*args: object, **kwargs: object) -> object:
        opened.append(args[0])
        return real_session(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting_session)
    engine = LamaEngine(build_model(tmp_path / "m.onnx"), threads=2)
    loaded = []
    threads = [threading.Thread(target=lambda: loaded.append(engine.load())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 1
    assert all(model is loaded[0] for model in loaded)
    assert loaded[0].session.get_session_options().intra_op_num_threads == 2
    assert loaded[0].size == (64, 64) and loaded[0].batch == 1


def test_restore_in_place_matches_inpaint(tmp_path: Path) -> None:
    engine = LamaEngine(build_model(tmp_path / "m.onnx", "negate"), feather=2)
    image = gradient(200, 260)
    mask = rect_mask(200, 260, (50, 90, 60, 110), (150, 152, 20, 200))
    expected = engine.inpaint(image, mask)
    target = image.copy()
    engine.restore_in_place([target], [mask])
    assert np.array_equal(target, expected)
    assert not np.array_equal(image, expected)


def test_float16_model(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m.onnx", "fill", scale=255.0, elem=TensorProto.FLOAT16)
    engine = LamaEngine(path, feather=0)
    image = noise(100, 100, seed=11)
    mask = rect_mask(100, 100, (40, 60, 40, 60))
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert (result[mask] == 102).all()


def test_mask_covering_the_whole_image(tmp_path: Path) -> None:
    # One crop for everything, composited in several strips; no seam along the image's edge.
    engine = LamaEngine(build_model(tmp_path / "m.onnx", "fill"), feather=2)
    image = noise(700, 300, seed=12)
    mask = np.ones((700, 300), bool)
    assert (engine.inpaint(image, mask) == 102).all()


def test_large_mask_is_exact_in_every_strip(tmp_path: Path) -> None:
    engine = LamaEngine(build_model(tmp_path / "m.onnx", "fill"), feather=1)
    image = np.full((900, 500, 3), 30, np.uint8)
    mask = rect_mask(900, 500, (20, 880, 20, 480))
    result = engine.inpaint(image, mask)[..., 0]
    assert_outside_unchanged(result[..., None], image[..., :1], mask)
    # 102 / 2 + 30 / 2 = 66 on the one-pixel seam, 102 inside.
    assert (result[20, 20:480] == 66).all() and (result[20:880, 479] == 66).all()
    assert (result[21:879, 21:479] == 102).all()


def test_rotated_views_are_accepted(tmp_path: Path) -> None:
    # Decoders may hand over EXIF-transposed views (negative or swapped strides).
    engine = LamaEngine(build_model(tmp_path / "m.onnx", "negate"), feather=0)
    stored = noise(120, 200, seed=13)
    image = np.rot90(stored)  # 200x120, a view
    mask = rect_mask(200, 120, (50, 60, 30, 42))
    result = engine.inpaint(image, mask)
    assert_outside_unchanged(result, image, mask)
    assert np.array_equal(result[mask], 255 - image[mask])
    engine.restore_in_place([image], [mask])
    assert np.array_equal(image, result)


def test_registry_builds_the_engine_from_the_installed_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photo_eraser.models.manager import MANIFEST_ENV, sha256_file

    model_dir = tmp_path / "models"
    model_dir.mkdir()
    path = build_model(model_dir / "lama_fp32.onnx", "fill", scale=255.0)
    entry = {
        "file": path.name,
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "license": "MIT",
        "url": "http://127.0.0.1:9/unused",
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"lama": entry}))
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "manifest.json"))
    registry = EngineRegistry(model_dir, threads=1)
    assert registry.availability()["lama"] is True
    engine = registry.get("lama")
    assert isinstance(engine, LamaEngine) and engine.model_path == path
    image, mask = noise(80, 90), rect_mask(80, 90, (10, 30, 10, 30))
    assert (engine.inpaint(image, mask)[12:28, 12:28] == 102).all()


def test_inference_failure_is_an_engine_error(tmp_path: Path) -> None:
    # Declares dynamic sizes but only works at 64x64 (the load-time probe size).
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, "H", "W"]),
    ]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])
    zeros = numpy_helper.from_array(np.zeros((1, 3, 64, 64), np.float32), "zeros")
    nodes = [
        helper.make_node("Add", ["image", "zeros"], ["shifted"]),
        helper.make_node("Add", ["shifted", "mask"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "picky", inputs, [output], [zeros])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "picky.onnx")
    engine = LamaEngine(tmp_path / "picky.onnx")
    with pytest.raises(EngineError, match="LaMa inference failed"):
        engine.inpaint(noise(300, 300), rect_mask(300, 300, (100, 120, 100, 120)))


@pytest.mark.parametrize(
    "size, batch, scale",
    [((64, 64), 1, 1.0), ((48, 80), 1, 255.0), (None, None, 1.0)],
    ids=["fixed", "fixed-non-square", "dynamic"],
)
def test_random_masks_fill_every_masked_pixel(
    tmp_path: Path, size: tuple[int, int] | None, batch: int | None, scale: float
) -> None:
    """Any image size and mask shape: masked pixels get exactly the prediction, others stay."""
    path = build_model(tmp_path / "m.onnx", "fill", size=size, batch=batch, scale=scale)
    engine = LamaEngine(path, feather=0, max_dynamic_side=128)
    rng = np.random.default_rng(42)
    for trial in range(12):
        h, w = (int(v) for v in rng.integers(1, 260, 2))
        image = noise(h, w, seed=trial)
        mask = rng.random((h, w)) < rng.choice([0.001, 0.02, 0.5])
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        mask[y0 : y0 + int(rng.integers(1, 90)), x0 : x0 + int(rng.integers(1, 90))] = True
        result = engine.inpaint(image, mask)
        assert_outside_unchanged(result, image, mask)
        assert (result[mask] == 102).all(), (trial, h, w)
