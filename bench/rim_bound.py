"""How much of the gap to the oracle on lossless (PNG) batches is the rim's opacity? A genie.

    .venv/bin/python bench/rim_bound.py     # the 16 PNG cases of target T1 (~1 min)

On PNG the oracle of ``bench/quality.py`` is limited by rounding alone (53-57 dB). Everything
an estimate must find is ``alpha`` and ``W``; with one smooth colour and a flat body (what the
exact fit assumes), what remains unknown is the opacity of each pixel of the anti-aliased rim.
The batch tells a rim pixel's opacity only through how well its photo value can be predicted
from around it: ``J - W = beta * (I - W)`` with ``I`` unknown.

This script gives a *genie* estimator far more than ``restore`` has: the true ``W``, the true
opacity everywhere but on the rim, and on the rim the **true photo** around each pixel (its 8
neighbours in every image). Each rim pixel's ``beta`` is then fitted over the batch (robust
least squares through the origin) from a linear prediction of the photo there:

* ``genie-8``: the 8-neighbour bilinear prediction ``(2*(n+s+e+w) - diagonals) / 4``;
* ``genie-best``: per image and pixel, the best of six predictions (4-neighbour mean,
  horizontal and vertical means, the two diagonal means, 8-neighbour), chosen *knowing the
  truth*.

It is one estimator, not an optimal one, so it proves nothing either way; it shows where
the gap lies. Where a genie comes within 1.5 dB of the oracle, the rim's opacity can be told
from the batch well enough for target T1, given the photo around it: what ``restore`` lacks
is that photo (its neighbours are estimates too) and an exact body and border.

The other side of the same question: ``restore``'s own estimate (``fit_blend`` on the
mask's crop, every masked pixel inverted) with the truth put in for part of it:

* ``est``: the estimate as it is;
* ``rim exact``: the true ``alpha`` and ``alpha * W`` on the rim (0 < coverage < 1);
* ``rim+margin exact``: also on the mask's pixels the mark does not reach (coverage 0).

What is still missing with the rim and margin exact is the body's opacity and the colour.

Printed per case: restore (the engine as shipped), genie-8, genie-best, the three estimate
columns and oracle PSNR (dB, pooled over the masked pixels of the batch).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_eraser.engines.opencv import OpenCVEngine  # noqa: E402
from photo_eraser.engines.restore import RestoreParams, WatermarkRecoveryEngine  # noqa: E402
from photo_eraser.engines.restore.fit import fit_blend  # noqa: E402
from photo_eraser.engines.restore.solver import GridSolver  # noqa: E402
from quality import (  # noqa: E402
    ALPHAS,
    COUNTS,
    FORMATS,
    machine,
    make_batch,
    marks,
    masked_psnr,
    oracle,
)

_K = {
    "4": np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]]) / 4.0,
    "h": np.array([[0, 0, 0], [1, 0, 1], [0, 0, 0]]) / 2.0,
    "v": np.array([[0, 1, 0], [0, 0, 0], [0, 1, 0]]) / 2.0,
    "d1": np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]]) / 2.0,
    "d2": np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0]]) / 2.0,
    "8": np.array([[-1, 2, -1], [2, 0, 2], [-1, 2, -1]]) / 4.0,
}


def _predict(truths: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.stack([cv2.filter2D(t, -1, kernel, borderType=cv2.BORDER_REFLECT) for t in truths])


def _fit_beta(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Robust (Cauchy) slope through the origin per rim pixel: y, x are N x R x 3."""
    w = np.ones(y.shape[:2])
    for _ in range(5):
        b = (w[..., None] * y * x).sum(axis=(0, 2)) / np.maximum(
            (w[..., None] * x * x).sum(axis=(0, 2)), 1e-9
        )
        res = np.sqrt(((y - b[None, :, None] * x) ** 2).sum(axis=-1))
        scale = 1.4826 * np.median(res, axis=0) + 0.5
        w = 1.0 / (1.0 + (res / (1.5 * scale)) ** 2)
    return np.clip(b, 0.02, 1.0)


def genie(stamped, truths, alpha, colour, mask, best: bool) -> list[np.ndarray]:
    """Inversions with the true alpha and W except on the rim, fitted from the true photo."""
    j = np.stack(stamped).astype(np.float64)
    t = np.stack(truths).astype(np.float64)
    wc = colour.astype(np.float64)
    body = float(alpha.max())
    rim = mask & (alpha > 0) & (alpha < body - 1e-6)
    if best:
        cands = np.stack([_predict(t, k) for k in _K.values()])  # P x N x H x W x 3
        err = np.abs(cands - t[None]).sum(axis=-1)  # P x N x H x W
        pick = np.argmin(err, axis=0)
        pred = np.take_along_axis(cands, pick[None, ..., None], axis=0)[0]
    else:
        pred = _predict(t, _K["8"])
    beta = 1.0 - alpha.astype(np.float64)
    beta[rim] = _fit_beta((j - wc)[:, rim], (pred - wc)[:, rim])
    fitted_alpha = (1.0 - beta).astype(np.float32)
    return [oracle(s, fitted_alpha, colour, mask) for s in stamped]


def with_truth(stamped, truths, alpha, colour, coverage, mask) -> list[float]:
    """PSNR of the estimate as it is, with the rim exact, and with rim and margin exact."""
    ys, xs = np.nonzero(mask)
    rows, cols = slice(ys.min() - 4, ys.max() + 5), slice(xs.min() - 4, xs.max() + 5)
    domain, cov = mask[rows, cols], coverage[rows, cols]
    stack = np.stack([s[rows, cols].astype(np.float32) for s in stamped])
    crops = [t[rows, cols] for t in truths]
    est, _ = fit_blend(stack, GridSolver(domain), RestoreParams(), lossless=True, jackknife=False)
    true_beta = 1.0 - alpha[rows, cols]
    true_offset = alpha[rows, cols][..., None] * colour[rows, cols]
    rim = domain & (cov > 0) & (cov < 1)
    out = []
    for exact in (np.zeros_like(domain), rim, rim | (domain & (cov == 0))):
        beta = np.where(exact, true_beta, est.beta)[..., None]
        offset = np.where(exact[..., None], true_offset, est.offset)
        recovered = np.clip(np.rint((stack - offset) / beta), 0, 255).astype(np.uint8)
        out.append(masked_psnr(list(recovered), crops, [domain] * len(crops)))
    return out


def main() -> None:
    logging.disable(logging.INFO)
    engine = WatermarkRecoveryEngine(fallback=OpenCVEngine())
    grid = [(m, a, n, f) for m in marks() for a in ALPHAS for n in COUNTS for f in FORMATS]
    print(
        "| mark | alpha | N | restore | genie-8 | genie-best | est | rim exact | rim+margin exact "
        "| oracle | best within 1.5 dB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    reachable = 0
    gaps = []
    for k, (mark, a, n, fmt) in enumerate(grid):
        if fmt != "png" or a > 0.5 or n < 8:
            continue
        # The same batch as bench/quality.py's row (same seed).
        case = make_batch(mark, a, n, fmt, seed=1000 + k)
        truths, alpha, mask, stamped = case.truths, case.alpha, case.mask, case.stamped
        masks = [mask] * n
        restored = [r.image for r in engine.restore(stamped, masks, lossless=[True] * n)]
        g8 = genie(stamped, truths, alpha, mark.colour, mask, best=False)
        gbest = genie(stamped, truths, alpha, mark.colour, mask, best=True)
        best = [oracle(s, alpha, mark.colour, mask) for s in stamped]
        p = [masked_psnr(x, truths, masks) for x in (restored, g8, gbest)]
        p += with_truth(stamped, truths, alpha, mark.colour, mark.coverage, mask)
        p.append(masked_psnr(best, truths, masks))
        ok = p[2] >= p[-1] - 1.5
        reachable += ok
        gaps.append([p[-1] - x for x in p[3:6]])
        print(f"| {mark.name} | {a} | {n} | " + " | ".join(f"{x:.1f}" for x in p), end="")
        print(f" | {'yes' if ok else 'no'} |", flush=True)
    cases = len(gaps)
    print(f"genie-best within 1.5 dB of the oracle: {reachable} / {cases}")
    for name, gap in zip(("est", "rim exact", "rim+margin exact"), np.array(gaps).T, strict=True):
        print(
            f"{name}: mean {gap.mean():.2f} dB below the oracle, "
            f"within 1.5 dB in {(gap <= 1.5).sum()} / {cases}"
        )
    print(machine())


if __name__ == "__main__":
    main()
