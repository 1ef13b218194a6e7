"""The weight-free fills: PatchMatch on crops, and ``auto``'s choice between it and Telea."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from photo_eraser.engines.fill import (
    THIN_GROUP,
    TextureAwareFill,
    group_width,
    split_by_texture,
)
from photo_eraser.engines.opencv import OpenCVEngine
from photo_eraser.engines.patchmatch import PatchMatchEngine
from photo_eraser.engines.registry import EngineRegistry

H, W = 96, 192


def textured_right_half(seed: int = 0) -> np.ndarray:
    """Smooth grey on the left half, coarse random texture (4 px cells) on the right."""
    rng = np.random.default_rng(seed)
    image = np.full((H, W, 3), 120, np.uint8)
    cells = rng.integers(40, 220, (H // 4, W // 8, 3), dtype=np.uint8)
    image[:, W // 2 :] = np.kron(cells, np.ones((4, 4, 1), np.uint8))
    return image


def gradient_energy(image: np.ndarray, where: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    return float(np.hypot(gx, gy)[where].mean())


def holes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask, left, right)``: one square hole in each half."""
    left = np.zeros((H, W), bool)
    left[30:60, 30:60] = True
    right = np.zeros((H, W), bool)
    right[30:60, 130:160] = True
    return left | right, left, right


def test_patchmatch_fills_texture_where_telea_smears_and_keeps_the_rest() -> None:
    image = textured_right_half()
    _, _, right = holes()
    truth = gradient_energy(image, right)
    patched = PatchMatchEngine().inpaint(image, right)
    telea = OpenCVEngine().inpaint(image, right)
    assert np.array_equal(patched[~right], image[~right])
    assert gradient_energy(patched, right) > 0.7 * truth
    assert gradient_energy(telea, right) < 0.6 * truth  # the control: Telea smears it
    assert np.array_equal(PatchMatchEngine().inpaint(image, right), patched)  # seeded


def test_patchmatch_fills_far_apart_groups_on_crops_of_their_own() -> None:
    image = textured_right_half(seed=1)
    big = np.concatenate([image, image[:, ::-1]], axis=1)  # texture at both ends
    mask = np.zeros(big.shape[:2], bool)
    mask[10:20, 150:170] = True
    mask[70:80, 230:250] = True
    out = PatchMatchEngine().inpaint(big, mask)
    assert np.array_equal(out[~mask], big[~mask])
    assert gradient_energy(out, mask) > 0.5 * gradient_energy(big, mask)
    assert np.array_equal(PatchMatchEngine().inpaint(big, np.zeros_like(mask)), big)


def test_groups_are_split_by_the_texture_around_them() -> None:
    image = textured_right_half()
    mask, left, right = holes()
    smooth, textured = split_by_texture(image, mask)
    assert np.array_equal(smooth, left) and np.array_equal(textured, right)
    nothing = np.zeros_like(mask)
    assert not any(part.any() for part in split_by_texture(image, nothing))


def test_the_fill_uses_telea_on_smooth_groups_and_patchmatch_on_textured_ones() -> None:
    image = textured_right_half()
    mask, left, right = holes()
    telea, patchmatch = OpenCVEngine(), PatchMatchEngine()
    fill = TextureAwareFill(telea, patchmatch)
    [both] = fill.restore([image], [mask])
    assert both.method == "patchmatch"
    assert np.array_equal(both.image[~mask], image[~mask])
    # Each group holds what its engine alone gives (Telea first, so PatchMatch sees no hole).
    assert np.array_equal(both.image[left], telea.inpaint(image, left)[left])
    after_telea = telea.inpaint(image, left)
    assert np.array_equal(both.image[right], patchmatch.inpaint(after_telea, right)[right])
    [smooth_only] = fill.restore([image], [left])
    assert smooth_only.method == "opencv"
    assert np.array_equal(smooth_only.image, telea.inpaint(image, left))


def test_auto_reports_the_fill_it_used(tmp_path: Path) -> None:
    image = textured_right_half()
    _, left, right = holes()
    auto = EngineRegistry(tmp_path).get("auto")
    # One image: nothing to estimate a mark from, so all of the mask is filled.
    [textured, smooth] = auto.restore([image, image.copy()], [right, left])
    assert textured.method == "patchmatch" and textured.recovered_share == 0.0
    assert smooth.method == "opencv"


def test_a_batch_filled_on_threads_is_the_batch_filled_one_by_one() -> None:
    """``threads`` only changes how many images are filled at once: the same pixels and
    methods, in order (an image with texture around its hole, one without, one unmasked)."""
    mask, left, _ = holes()
    images = [textured_right_half(seed=s) for s in range(4)] + [np.full((H, W, 3), 90, np.uint8)]
    masks = [mask, left, mask, np.zeros((H, W), bool), mask]
    telea, patch = OpenCVEngine(), PatchMatchEngine()
    alone = TextureAwareFill(telea, patch).restore(images, masks)
    together = TextureAwareFill(telea, patch, threads=3).restore(images, masks)
    assert [r.method for r in together] == [r.method for r in alone]
    assert [r.method for r in alone] == ["patchmatch", "opencv", "patchmatch", "opencv", "opencv"]
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a.image, b.image)
    assert not np.array_equal(together[0].image, images[0])  # it filled something


def test_thin_groups_go_to_telea_even_on_texture() -> None:
    """``restore``'s residue (small groups inside recovered pixels) is mostly thin: there Telea
    was as good as PatchMatch (bench/residue.py), at a hundredth of the cost. A group at most
    ``THIN_GROUP`` wide goes to Telea on texture; a wider one on the same texture still gets
    PatchMatch (the positive control), and so does the thin one when the rule is off."""
    image = textured_right_half(seed=2)
    thin = np.zeros((H, W), bool)
    thin[20:22, 110:170] = True  # two pixels wide: every pixel is 1 px from the border
    wide = np.zeros((H, W), bool)
    wide[50:80, 120:150] = True
    assert group_width(thin) <= THIN_GROUP < group_width(wide)
    telea, patchmatch = OpenCVEngine(), PatchMatchEngine()
    smooth, textured = split_by_texture(image, thin | wide)
    assert np.array_equal(smooth, thin) and np.array_equal(textured, wide)
    [out] = TextureAwareFill(telea, patchmatch).restore([image], [thin | wide])
    assert out.method == "patchmatch"
    assert np.array_equal(out.image[thin], telea.inpaint(image, thin)[thin])
    # The rule off: texture alone decides, and the thin group is textured.
    smooth, textured = split_by_texture(image, thin | wide, thin=0)
    assert not smooth.any() and np.array_equal(textured, thin | wide)
    [off] = TextureAwareFill(telea, patchmatch, thin=0).restore([image], [thin])
    assert off.method == "patchmatch"
    assert not np.array_equal(off.image[thin], telea.inpaint(image, thin)[thin])
