"""Every threshold of the restore engine, grouped by the step of docs/restore.md it belongs to.

Grey levels are of 8-bit images; ``alpha`` is the mark's opacity, ``beta = 1 - alpha``; "grid
pixels" are pixels of the common grid the batch is estimated on. How the values were chosen,
and what changing them did on the benchmark, is in docs/restore-history.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class GridParams:
    """Steps 1-2: the common grid and the alignment of each image's mark."""

    max_grid_pixels: int = 250_000
    """Masks with more pixels are estimated on a scaled-down grid (time and memory)."""
    align_radius: int = 4
    """Largest shift (grid pixels, in x and y) that lines an image's mark up with the batch's;
    the grid's margin around the mask is this plus 4."""
    align_rounds: int = 2
    """Rounds of alignment (a second one corrects shifts the first misjudged)."""
    align_stay_bonus: float = 0.02
    """Correlation a shift must gain over staying put: no shift unless clearly better."""


@dataclass(frozen=True)
class FreeFitParams:
    """Steps 3-4: opacity from pixel-pair ratios, colour from the robust mean gradient."""

    beta_floor: float = 0.02
    """Lower clamp of every estimated ``beta``: far below the inversion limit anyway."""
    residual_floor: float = 1.0
    """Added to the robust fits' residual scale (grey levels) so it never reaches 0."""
    cauchy: float = 0.6
    """Cauchy weight width in residual scales: narrow, as photo edges make residuals heavy-tailed."""
    irls_iterations: int = 5
    """Reweighting steps of the ratio fits."""
    signal_variance: float = 100.0
    """Per-image variance (grey levels squared) at which an edge's ratio gets half weight."""
    anchor: float = 1e-6
    """Tiny pull to 0 in the Poisson solves, so pixels without informative edges stay defined."""


@dataclass(frozen=True)
class RefineParams:
    """Step 5: the fits redone with each image weighted by how smooth its photo is locally."""

    min_images: int = 6
    """Smallest batch refined: with fewer, leaving images out (step 8) moves the fits too much.
    Also from how many images the exact fit's colour is checked against the free fit's."""
    texture: float = 2.0
    """Local gradient RMS (grey levels) at which an image's edge gets half weight."""
    max_opaque_share: float = 0.5
    """Not refined when more of the marked pixels are opaque: little to invert, no texture."""
    iterations: int = 2
    """Rounds of texture weights and refits."""
    reweights: int = 2
    """Cauchy reweighting steps of the robust mean gradient within a round."""
    first_fit_irls: int = 2
    """Reweighting steps of the short first fit (it only tells smooth from textured places)."""
    cauchy: float = 1.5
    """Cauchy width (residual scales) of the refined and exact fits; wider than the free fit's,
    as texture weights discount most photo edges."""
    residual_floor: float = 0.5
    """Residual-scale floor (grey levels) of the refined and exact fits."""


@dataclass(frozen=True)
class ExactFitParams:
    """Step 6: the exact-blend fit for lossless batches (one smooth colour, flat opacity)."""

    enabled: bool = True
    """Whether lossless batches may get this fit at all (``PHOTO_ERASER_RESTORE_EXACT_FIT``)."""
    min_images: int = 3
    """Smallest batch it is tried on; of three lossless images, each keeps the better of its
    recovery with it and its one-image recovery (``choose.py``)."""
    iterations: int = 4
    """Rounds of opacity then colour."""
    body_iterations: int = 2
    """Further rounds with the mark's body (its most common opacity) as one unknown."""
    snap: float = 1.5
    """Edges whose log ratio is within this many standard errors of 0 are taken as flat."""
    snap_max_error: float = 0.03
    """...only when that standard error is smaller: imprecise edges keep their ratio."""
    body_bin: float = 0.005
    """Histogram bin of ``beta`` in which the body's opacity (the mode) is looked for."""
    body_width: float = 0.003
    """A pixel joins the body within at least this of the mode..."""
    body_max_width: float = 0.02
    """...and never farther (pixels with few edges have large errors)."""
    body_errors: float = 2.0
    """...otherwise within this many of its own standard errors."""
    body_min_share: float = 0.2
    """The body is pooled only if at least this share of the marked pixels is at its opacity."""
    irls: int = 4
    """Reweighting steps of the first round's ratio fits (later rounds take one)."""
    texture_every: int = 2
    """Rounds between updates of the texture weights (they change slowly)."""
    colour_irls: int = 2
    """Reweighting steps of each colour fit."""
    subset_image_edges: int = 950_000
    """Larger batches are fitted on an even subset of images keeping images x edges under this."""
    subset_min_images: int = 8
    """...of at least this many images."""
    active_alpha: float = 0.02
    """Edges are fitted only at or next to a first fit's pixel above this opacity..."""
    active_offset: float = 1.0
    """...or this offset (grey levels); the others are taken as flat (unmarked)."""
    rim_step: float = 0.01
    """Edges across which ``alpha / beta`` changes by more than this inform the colour fit."""
    colour_degree: int = 2
    """Degree of the polynomial in x and y that the mark's colour follows."""
    max_rss_ratio: float = 1.4
    """Kept only if at the mark's outline its residuals are at most this times the free fit's."""
    max_rss_ratio_few: tuple[tuple[int, float], ...] = ((3, 1.7), (4, 1.6))
    """...with three or four images (the free fit is rough, clean blends score higher)."""
    max_colour_residual: float = 5.0
    """...and the free fit's offset is within this (grey levels) of alpha times the colour."""
    outline_step: float = 0.05
    """Log-opacity plus offset/128 step of the free fit that marks an edge as the outline."""

    def rss_limit(self, images: int) -> float:
        """The residual ratio the fit must stay under with this many images."""
        return dict(self.max_rss_ratio_few).get(images, self.max_rss_ratio)


@dataclass(frozen=True)
class PixelParams:
    """What a grid pixel is: opaque, clearly marked, unmarked (steps 5-8 all use these)."""

    max_alpha: float = 0.85
    """More opaque pixels are inpainted: inversion amplifies noise by ``1 / (1 - alpha)``.
    Also what counts as opaque for the refinement (step 5) and the ghost score (step 7)."""
    opaque_spread: float = 0.1
    """Pixels varying over the batch less than this share of their surroundings are opaque."""
    opaque_margin: int = 2
    """Grid pixels around opaque ones whose opacity is not trusted (the ratios see nothing)."""
    marked_alpha: float = 0.1
    """Opacity from which a pixel is clearly under the mark (also the pixels whose offset
    gives the exact fit's starting colour and its colour check)..."""
    marked_offset: float = 15.0
    """...or offset ``alpha * W`` (grey levels, any channel)."""
    min_marked_pixels: int = 20
    """Fewest clearly marked pixels of a mark (or of an opaque area that counts as one)..."""
    min_marked_share: float = 0.02
    """...and share of the mask."""
    unmarked_alpha: float = 0.03
    """After a free fit, masked pixels below this opacity..."""
    unmarked_offset: float = 6.0
    """...and this offset (grey levels) are left as they are: the mark does not reach them."""
    unmarked_alpha_exact: float = 0.01
    """The same after an exact fit, precise enough to keep faint rim pixels marked..."""
    unmarked_offset_exact: float = 2.0
    """...(leaving a rim pixel at alpha 0.02 costs 2-3 grey levels)."""
    drift_reach: int = 8
    """Within this of an opaque area a free fit's offset drifts: only the opacity counts there."""

    @property
    def min_inverted_beta(self) -> float:
        """Pixels with a smaller ``beta`` (more opaque than ``max_alpha``) are never inverted;
        also the largest amplification ``1/beta`` the refinement's texture is measured with."""
        return 1.0 - self.max_alpha


@dataclass(frozen=True)
class MarkParams:
    """Step 7: which images and which parts of the mask carry the mark; loose masks."""

    ghost_limit: float = 1.25
    """An image scoring above this (and ``ghost_outlier`` times the median) lacks the mark."""
    ghost_outlier: float = 2.0
    """...so a faint mark, near 1 in every image, excludes none."""
    no_mark_score: float = 0.85
    """Median ghost score above which the batch carries no shared mark."""
    part_score_ratio: float = 1.4
    """A part of the mask carries the mark if it scores at most this times the mark's typical part..."""
    part_score_floor: float = 0.65
    """...or at most this (and at most ``no_mark_score``)."""
    near: int = 8
    """Grid pixels around the mark that are its surroundings; also the gap that chains parts."""
    tight_margin: int = 2
    """A loose mask is narrowed to the mark and this margin (its faint rim, a few unmarked)..."""
    tight_margin_free: int = 1
    """...this after a free fit, whose marked pixels spill about a pixel beyond the mark."""
    loose_share: float = 0.1
    """A mask is narrowed if more than this share lies beyond ``tight_margin`` of the mark."""
    faint_seed: float = 6.0
    """Standard score (contrast over the estimate's noise) that starts a faint part..."""
    faint_grow: float = 3.0
    """...and that extends one."""
    faint_min_seeds: int = 20
    """Fewest starting pixels of a faint part."""
    faint_min_beyond: int = 16
    """Fewest pixels of a faint part beyond the margin narrowing keeps anyway."""
    faint_min_reference: int = 200
    """Fewest mask pixels away from the mark to measure the estimate's noise on."""
    faint_min_confidence: float = 1.2
    """Median correction of a faint part in units of its jackknife error (speckle: 0.7-1.0)."""


@dataclass(frozen=True)
class ConfidenceParams:
    """Step 8: per pixel, invert or inpaint."""

    max_error: float = 3.0
    """A pixel is inverted when its predicted error (grey levels RMS) is at most this..."""
    error_ratio: float = 1.5
    """...or at most this times the predicted inpainting error."""
    halves_from: int = 6
    """From this many images the jackknife leaves out halves of the batch, else single images."""


@dataclass(frozen=True)
class SingleParams:
    """Step 9: one image alone, one colour and one opacity over the mark's body."""

    pad: int = 8
    """Pixels around the mask's box used as its surroundings."""
    min_alpha: float = 0.08
    """Fainter marks are hard to tell from texture..."""
    max_alpha: float = 0.8
    """...more opaque ones amplify noise too much (also: rim pixels above it are inpainted)."""
    min_body: int = 40
    """Fewest marked pixels to attempt an inversion (the cheap test before any fit)..."""
    min_body_share: float = 0.05
    """...and share of the mask the matte must find marked."""
    first_fade_limit: float = 1.15
    """The cheap test before the fit: inverting with the first guess (Telea's fill of the whole
    mask, no fit) must leave less than this share of the edge energy at its support's outline
    (marks the full checks accept, 216 cases of the one-image grid on two seed sets: at most
    1.10, large solid shapes; masks over no mark: 0.82-1.76)..."""
    first_fade_limit_narrow: float = 1.0
    """...and less than this where the support covers less than ``first_support_wide`` of the
    mask (accepted marks: at most 0.95 there)..."""
    first_support_wide: float = 0.5
    """...(accepted marks leaving 1.0 or more: supports of 0.65-0.90 of the mask, large solid
    shapes and one logo of three JPEG images tried alone; masks over no mark: 0.09-0.61, the
    one in bench/single_cost.py at 1080p 0.30)."""
    refine_rounds: int = 2
    """Rounds of the fit near the outline (the second one on the first one's support)."""
    outline_depth: float = 4.0
    """Body pixels at most this far inside the mark's fill are fitted: the fill is good there..."""
    fit_skip: float = 0.0
    """...beyond the ``fit_skip`` pixels next to the outline, which are left out (the depths
    fitted are above ``fit_skip`` and at most ``outline_depth + fit_skip``; 0.955 is one pixel
    in, OpenCV's 3x3 distance)..."""
    fit_skip_lossy: float = 1.0
    """...and this many after lossy compression (``for_format``): JPEG's chroma, sampled at
    half the resolution, smears a coloured mark's outline over its first pixels (a blue mark's
    colour came out far off). Set on the dev seeds' JPEG one-image cases: mean gain over Telea
    4.27 / 4.58 / 4.80 dB with 0 / 1 / 2, two / two / three of them below Telea - 0.5 dB. On
    PNG, 1 cost 0.35 dB on the dev seeds (the fill is less good further in): lossless images
    keep 0."""
    body_tolerance: float = 0.3
    """A pixel is fitted when its own opacity is within this share of the mark's."""
    fit_iterations: int = 8
    """Cauchy reweighting steps of the fit near the outline."""
    neutral_slack: float = 1.1
    """A white or black mark is preferred while its residual near the outline is at most this
    times the current fit's (they are the common ones, and exact where the fit trades off)."""
    fit_gain: float = 0.9
    """The free fit of opacity and colour is kept only if it brings the median residual to at
    most this share of the first guess's (else the two trade off and the guess's colour stays)."""
    max_unexplained: float = 0.35
    """Largest median fit residual near the outline, relative to the median ``|J - F|`` there."""
    margin_search: int = 12
    """Distances from the mask's border (pixels) searched for where the mark starts..."""
    margin_jump: float = 0.4
    """...a jump of at least this in the share of marked pixels from one distance to the next..."""
    margin_inside: float = 0.6
    """...to at least this share: then every pixel deeper than that is taken as marked."""
    opacity_search: float = 0.2
    """The opacity is searched within this share of the fit's for the least edge energy at the
    mark's outline after inversion..."""
    opacity_steps: int = 21
    """...at this many values."""
    gap_body: int = 5
    """The support's 3x3 closing joins pixels to it: inside a wide body the fill's noise, but
    also gaps of one or two pixels between strokes. A joined pixel is taken for a gap (a rim
    pixel, with its own opacity) where it lies near the outline, outside the support eroded by
    a square this wide (the ends of gaps and the notches between strokes)..."""
    gap_opacity: float = 0.25
    """...or where its own opacity is below this share of ``a`` (the gaps inside a band of
    merged strokes); the other joined pixels take ``a``. Before, every joined pixel took ``a``,
    and a photo pixel between two letters came out far too dark or light. Set on the dev seeds'
    one-image grid, mean gain over Telea: text +3.59 -> +4.27 dB on PNG, +2.52 -> +2.83 dB on
    JPEG; the opacity rule alone +4.13 / +2.73, the outline rule alone +4.21 / +2.76; every
    joined pixel a gap +4.45 / +2.93 but shapes -0.13 dB (their body's noise then takes the
    rim's noisier opacity). Shapes and logos within 0.03 dB, but for one JPEG gradient logo that
    now falls back to Telea (-3.7 dB)."""
    min_hole: int = 60
    """Holes of the mark's support with fewer pixels stay holes (letters' counters); larger ones
    are filled if inverting them continues the photo around them better."""
    max_ghost: float = 1.5
    """Largest edge energy at the mark's outline after inversion relative to the photo's own
    edge energy around the mask (a wrong opacity or colour leaves a ghost of the mark)."""
    departure_ratio: float = 3.0
    """An inverted pixel near the mask's border may depart from Telea's fill by at most this
    times the photo's detail around the mask (95th percentile) or ``departure_floor``..."""
    departure_floor: float = 20.0
    """...(grey levels); the others are inpainted."""
    max_implausible: float = 0.15
    """Largest share of the marked pixels beyond that for the fit to be used at all."""
    holdout_copies: int = 2
    """Copies of the mask the hold-out uses at most (each costs a whole one-image recovery)."""
    min_visible: float = 1.2
    """The mark's outline must carry at least this times the photo's edge energy around the
    mask (else there is no mark to speak of: an object, or a mark too faint to matter)..."""
    max_ghost_share: float = 0.9
    """...and inverting must leave at most this share of it (a 12 MP mask over no mark:
    0.96-0.97; blue marks at opacity 0.3 over textured photos up to 0.91)..."""
    max_ghost_share_alone: float = 0.8
    """...or this share for a fit to one image alone (the task's only image, whose mask may as
    well be over an object, or one of two or three that the joint fit did not suit). Masks
    over no mark that pass every other check score 0.71-0.90 (the one-image grid's bare-photo
    masks: 18 of 72 on the dev seeds, 13 of 72 on the reported ones), true marks the checks
    accept mostly 0.5-0.75. At 0.8 (set on the dev seeds) 8 and 3 of those masks are still
    inverted, and one true mark of 77 and 81 accepted is lost (0.85, 0.82). A fit to two or
    three images under one mask keeps ``max_ghost_share``: at 0.8 it lost 36 of the grid's
    recoveries, 191 dB in all (joint fits score higher)."""
    texture_range: tuple[float, float] = (0.35, 3.0)
    """Allowed edge energy of the inverted body relative to the photo's around the mask (a flat
    object inverts to a flat patch; a wrong opacity amplifies noise)."""
    holdout_min_share: float = 0.5
    """A copy must keep this share of the mask's pixels (off the image, near the mask) to count;
    without any such copy (a mask large for its image) the other checks decide alone."""
    min_holdout_gain: float = 1.0
    """dB by which the recovery must beat Telea on copies of the mask beside it, stamped with
    the estimated mark (a margin: the photo under the mark is not the one beside it)."""
    choice_min_change: float = 6.0
    """Three lossless images are recovered both by the batch's exact fit and alone
    (``choose.py``): pixels an inversion moved by more than this (grey levels, summed over the
    channels) are the mark's; the edge energy at their outline tells the two recoveries apart..."""
    choice_enough: float = 0.98
    """...unless the exact fit recovered at least this share of every image's mask: then the
    one-image fits (most of the cost) are not tried. On the grid's three-PNG-image cases the
    mean gain over Telea stayed at 15.1 (reported) and 14.7 dB (dev seeds; 0.95 lost 0.2 dB
    there), and three 12 MP images with a text mark took 3.8-4.1 s of CPU instead of 11.3 s."""

    def for_format(self, *, lossless: bool) -> SingleParams:
        """These parameters for lossless images, or for lossy ones (``fit_skip_lossy``)."""
        return self if lossless else replace(self, fit_skip=self.fit_skip_lossy)


@dataclass(frozen=True)
class RestoreParams:
    """All of the engine's settings; the defaults are what the service runs."""

    min_images: int = 4
    """Batches estimated together from this many images (at least 3); smaller ones image by
    image (step 9); three lossless ones both ways (the better recovery per image)."""
    grid: GridParams = field(default_factory=GridParams)
    free_fit: FreeFitParams = field(default_factory=FreeFitParams)
    refine: RefineParams = field(default_factory=RefineParams)
    exact: ExactFitParams = field(default_factory=ExactFitParams)
    pixels: PixelParams = field(default_factory=PixelParams)
    mark: MarkParams = field(default_factory=MarkParams)
    confidence: ConfidenceParams = field(default_factory=ConfidenceParams)
    single: SingleParams = field(default_factory=SingleParams)

    def __post_init__(self) -> None:
        if self.min_images < 3 or self.exact.min_images < 3:
            raise ValueError("batches are estimated together from three images at least")
