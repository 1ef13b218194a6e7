"""``restore``: batch watermark recovery (docs/restore.md names the module of each step).

engine.py      the steps in order (orchestration only)
params.py      every threshold, grouped by step (RestoreParams)
grid.py        1-2  the common grid, resampling, alignment
solver.py      3-6  Poisson integration on the mask
free_fit.py    3-4  opacity from pixel-pair ratios, colour from the robust mean gradient
edges.py       3-6  per-edge work in chunks of edges (bounded memory, on threads)
refine.py      5    texture-weighted refinement
exact_fit.py   6    the exact-blend fit for lossless batches
fit.py         3-6  which fit a batch gets, and its re-fits for the jackknife
mark.py        7    which images and parts carry the mark; loose masks, faint parts
pixels.py      5-8  opaque / clearly marked / unmarked pixels
jackknife.py   8    which images to leave out, and the errors of the re-fits
confidence.py  8    invert or inpaint, per pixel
invert.py      8    the inversion on each image
single.py      9    one image alone
estimate.py, report.py, arrays.py: the types and helpers the steps share
"""

from photo_eraser.engines.restore.engine import WatermarkRecoveryEngine
from photo_eraser.engines.restore.params import RestoreParams
from photo_eraser.engines.restore.report import BatchReport, RestoreReport

__all__ = ["BatchReport", "RestoreParams", "RestoreReport", "WatermarkRecoveryEngine"]
