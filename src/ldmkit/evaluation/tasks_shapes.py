"""A deterministic detector / segmenter for images of the procedural shapes data set.

Generated shapes images are scored by reading them back: each pixel is explained as a mix of the
grey background and one palette colour, same-colour pixels form connected components, and each
component's shape follows from how much of its box it fills and whether its mass sits low (the
triangle's apex points up: triangle or not), then, for the rest, from its compactness (square or
circle). Compactness uses the projections' extents (mass / longest column, mass / longest row), not
a thresholded box: a square whose edges fall between pixels, or are slightly blurred, has a rim of
half-covered pixels that a box counts as empty (an 8-pixel square then fills 0.8 of its box, nearer
a circle's pi/4), while its projections stay exact.

Why a mix and not plain nearest colour: an antialiased edge pixel of a red object on grey is
closer to orange than to red, so nearest-colour labelling would invent orange fringes. Projecting
onto the grey-to-colour segment gives each colour a coverage ``alpha`` and a residual instead; a
pixel belongs to the colour of smallest residual (among those it covers >= ``box_coverage``) once
``alpha >= 0.5``, the same "covered by at least half" rule ``render`` uses for the segmentation map,
so on clean data the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ldmkit.config import require
from ldmkit.data.shapes import COLOURS, EXTRA_SHAPES, PALETTE, SHAPES, ShapeObject

# Prototype (fill ratio of the box, 2 x bottom-heaviness) of each shape, in SHAPES order; see _shape_of.
_PROTOTYPES = np.array([[np.pi / 4, 0.0], [1.0, 0.0], [0.5, 1.0]])
# Diamond or circle: compactness (see _shape_of) over the compactness of the shape turned 45 degrees; 2 for a
# diamond, 1 for a circle (1/2 for a square). Measured (sides 8-16 px at 32 px): circles 0.97-1.07, the shapes
# model's generated circles 0.99-1.18, diamonds 1.57-1.80 and their kl-f4 reconstructions >= 1.22 from side 10 px
# on (smaller ones come back as round dots: 1.00-1.26).
_DIAMOND_RATIO = 1.2
# Compactness = longest column x longest row / mass: square s*s/s^2 = 1, circle (2r)^2/(pi r^2) = 4/pi.
_SQUARE_CIRCLE_SPLIT = (1.0 + 4 / np.pi) / 2
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: a triangle's one-pixel apex stays attached


@dataclass
class DetectorConfig:
    """Thresholds of :func:`detect_shapes`.

    The smallest object the data set draws has side ceil(S/4), so a triangle covers about 1/32 of
    the image; ``min_area_fraction`` 1/80 keeps every real object and drops specks of noise.
    """

    coverage: float = 0.5            # alpha at which a pixel counts as the colour (render's rule)
    colour_tolerance: float = 60.0   # max RGB distance (0-255) from the grey-to-colour segment
    min_area_fraction: float = 1 / 80  # components smaller than this share of H*W are dropped
    box_coverage: float = 0.2        # alpha that extends the box (a triangle's apex is < 0.5 covered)
    background_range: tuple[float, float] = (200.0, 255.0)  # clamp for the estimated grey level
    # Colours beyond the data set's palette, name -> RGB (a study that teaches a model a new colour word
    # scores it with the same rule); class-map ids then run over the longer palette.
    extra_colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    extra_shapes: tuple[str, ...] = ()  # of data.shapes.EXTRA_SHAPES ("diamond"), for the same kind of study

    def __post_init__(self) -> None:
        require(0.0 < self.coverage <= 1.0, "coverage", f"must be in (0, 1], got {self.coverage}")
        require(self.colour_tolerance > 0, "colour_tolerance", f"must be > 0, got {self.colour_tolerance}")
        require(0.0 <= self.min_area_fraction < 1.0, "min_area_fraction",
                f"must be in [0, 1), got {self.min_area_fraction}")
        require(0.0 < self.box_coverage <= self.coverage, "box_coverage",
                f"must be in (0, coverage], got {self.box_coverage}")
        lo, hi = self.background_range
        require(0 <= lo <= hi <= 255, "background_range", f"must be 0 <= lo <= hi <= 255, got {self.background_range}")
        clash = sorted(set(self.extra_colours) & set(PALETTE))
        require(not clash, "extra_colours", f"must be new colour names, got {clash} (already in the palette)")
        unknown = sorted(set(self.extra_shapes) - set(EXTRA_SHAPES))
        require(not unknown, "extra_shapes", f"expected some of {', '.join(EXTRA_SHAPES)}, got {unknown}")

    @property
    def shapes(self) -> tuple[str, ...]:
        """Shape names the detector tells apart: the data set's, then ``extra_shapes``."""
        return SHAPES + tuple(s for s in EXTRA_SHAPES if s in self.extra_shapes)

    @property
    def colours(self) -> tuple[str, ...]:
        """Colour names the detector knows: the palette's, then ``extra_colours``."""
        return COLOURS + tuple(self.extra_colours)

    def palette_rgb(self) -> np.ndarray:
        """(K, 3) float64 RGB of :attr:`colours`."""
        table = {**PALETTE, **self.extra_colours}
        return np.array([table[c] for c in self.colours], dtype=np.float64)


def to_rgb255(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 in [0, 255] from a (3, H, W) tensor in [-1, 1] or a uint8 (H, W, 3) array / tensor."""
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            image = image.cpu().numpy()
        else:
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a (3, H, W) tensor in [-1, 1], got shape {tuple(image.shape)}")
            arr = (image.detach().cpu().double().clamp(-1, 1) + 1) * 127.5  # (3, H, W)
            return arr.permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {arr.dtype} {arr.shape}")
    return arr.astype(np.float64)


def _background(rgb: np.ndarray, cfg: DetectorConfig) -> float:
    """Grey level of the background: median brightness of the light, unsaturated pixels."""
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    light = rgb.mean(axis=2)
    greyish = (chroma < 25) & (light > cfg.background_range[0])
    level = float(np.median(light[greyish])) if greyish.any() else 240.0
    return float(np.clip(level, *cfg.background_range))


def _colour_coverage(rgb: np.ndarray, cfg: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and palette colour: (alpha, ok) both (H, W, K); ok = residual within tolerance."""
    grey = _background(rgb, cfg)
    p = rgb.reshape(-1, 3) - grey  # (N, 3), background at the origin
    d = cfg.palette_rgb() - grey  # (K, 3)
    dd = (d * d).sum(1)  # (K,)
    alpha = np.clip(p @ d.T / dd, 0.0, 1.0)  # (N, K) position along grey -> colour
    resid2 = (p * p).sum(1, keepdims=True) - 2 * alpha * (p @ d.T) + alpha**2 * dd  # |p - alpha d|^2
    ok = resid2 <= cfg.colour_tolerance**2
    h, w = rgb.shape[:2]
    return alpha.reshape(h, w, -1), np.where(ok, resid2, np.inf).reshape(h, w, -1)


def _shape_of(weights: np.ndarray, box: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> str:
    """Triangle or not from (fill ratio, bottom-heaviness) of ``box``; then square or circle by compactness.

    ``box`` is the soft mask cropped to the pixels covered at least ``box_coverage``; ``weights`` the same
    mask with its partly covered rim. Bottom-heaviness = (mass of the lower half - mass of the upper
    half) / mass: 0 for circles and squares, 1/2 for an apex-up triangle. It counts double because
    symmetry makes it the surer cue: a triangle with a blunted apex (common in generated images) fills
    ~2/3 of its box, nearer a circle's pi/4, but its mass still sits low.
    Square vs circle: compactness = (longest column sum) x (longest row sum) / mass of ``weights``, the
    sub-pixel extents of the shape: exact for a square at any offset and unchanged by a mild blur (which
    moves mass along a column, not out of it), where the fill of a thresholded box is not.
    With the diamond among ``shapes``: a shape whose compactness falls by more than ``_DIAMOND_RATIO`` when it
    is turned 45 degrees is a diamond, not a circle (a circle's does not change).
    """
    h, w = box.shape
    mass = box.sum()
    fill = mass / (h * w)
    rows = np.arange(h) + 0.5  # pixel centres; the box's middle is at h / 2
    lower = box[rows > h / 2].sum() + 0.5 * box[rows == h / 2].sum()
    heavy = (2 * lower - mass) / mass
    dist = ((_PROTOTYPES - [fill, 2 * heavy]) ** 2).sum(1)
    if SHAPES[int(dist.argmin())] == "triangle":
        return "triangle"
    compact = weights.sum(axis=0).max() * weights.sum(axis=1).max() / weights.sum()
    if compact < _SQUARE_CIRCLE_SPLIT:
        return "square"
    if "diamond" in shapes:
        turned = ndimage.rotate(np.pad(weights, 3), 45, reshape=True, order=1)
        turned_compact = turned.sum(axis=0).max() * turned.sum(axis=1).max() / turned.sum()
        if compact / turned_compact > _DIAMOND_RATIO:
            return "diamond"
    return "circle"


def analyse_shapes(image: torch.Tensor | np.ndarray,
                   cfg: DetectorConfig | None = None) -> tuple[list[ShapeObject], np.ndarray]:
    """Detected objects (largest box first) and the (H, W) int64 class map (0 = background)."""
    cfg = cfg or DetectorConfig()
    rgb = to_rgb255(image)
    h, w = rgb.shape[:2]
    alpha, resid2 = _colour_coverage(rgb, cfg)  # (H, W, K) each
    # A pixel's colour: the closest segment among those it covers at least `box_coverage` of; it counts
    # as that colour once it covers `coverage` of it. (Eligibility at `coverage` first would give a rim
    # pixel half covered by orange to yellow, whose segment passes near it at alpha 0.505: a yellow ring.)
    resid_eligible = np.where(alpha >= cfg.box_coverage, resid2, np.inf)
    best = resid_eligible.argmin(axis=2)  # (H, W)
    best_alpha = np.take_along_axis(alpha, best[..., None], axis=2)[..., 0]
    coloured = np.isfinite(resid_eligible.min(axis=2)) & (best_alpha >= cfg.coverage)
    soft = np.where(np.isfinite(resid2), alpha, 0.0)  # (H, W, K) coverage where the colour fits
    min_area = cfg.min_area_fraction * h * w
    found: list[tuple[int, ShapeObject, np.ndarray, int]] = []
    colours = cfg.colours
    for k, colour in enumerate(colours):
        labels, n = ndimage.label(coloured & (best == k), structure=_EIGHT)
        for comp, sl in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels[sl] == comp
            if mask.sum() < min_area:
                continue
            # The soft mask reaches one pixel past the component: partly covered rims and apexes.
            y0, x0 = max(sl[0].start - 1, 0), max(sl[1].start - 1, 0)
            y1, x1 = min(sl[0].stop + 1, h), min(sl[1].stop + 1, w)
            near = ndimage.binary_dilation(labels[y0:y1, x0:x1] == comp, structure=_EIGHT)
            weights = np.where(near, soft[y0:y1, x0:x1, k], 0.0)
            ys, xs = np.nonzero(weights >= cfg.box_coverage)
            by0, by1, bx0, bx1 = y0 + ys.min(), y0 + ys.max() + 1, x0 + xs.min(), x0 + xs.max() + 1
            shape = _shape_of(weights, weights[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0], cfg.shapes)
            box = (float(bx0 / w), float(by0 / h), float(bx1 / w), float(by1 / h))
            full = np.zeros((h, w), dtype=bool)
            full[sl] = mask
            cid = (SHAPES + EXTRA_SHAPES).index(shape) * len(colours) + k + 1  # = render's ids
            found.append(((bx1 - bx0) * (by1 - by0), ShapeObject(shape, colour, box), full, cid))
    # Largest box first, as the data set orders objects (by side, which a box area tracks).
    found.sort(key=lambda f: (-f[0], f[1].box[1], f[1].box[0]))
    class_map = np.zeros((h, w), dtype=np.int64)
    for _, _, full, cid in found:
        class_map[full] = cid
    return [obj for _, obj, _, _ in found], class_map


def detect_shapes(image: torch.Tensor | np.ndarray, cfg: DetectorConfig | None = None) -> list[ShapeObject]:
    """Objects in a shapes image ((3, H, W) in [-1, 1] or uint8 (H, W, 3)), largest box first."""
    return analyse_shapes(image, cfg)[0]


def segment_shapes(image: torch.Tensor | np.ndarray, cfg: DetectorConfig | None = None) -> torch.Tensor:
    """(H, W) int64 class map: each kept component's pixels get class_id(shape, colour), the rest 0."""
    return torch.from_numpy(analyse_shapes(image, cfg)[1])


__all__ = ["DetectorConfig", "analyse_shapes", "detect_shapes", "segment_shapes", "to_rgb255"]
