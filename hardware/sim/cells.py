"""Cell shapes of a simulated well, and drawing them as a phase image.

* High-functionality wells are mostly small spindle/fibroblast-like cells (about 1,800-2,500 um^2,
  aspect 3-8) aligned in slow swirls. Low-functionality wells carry a larger share of enlarged
  (2-5x), flattened, irregular, granular cells with a visible nucleus (senescence morphology,
  Oja et al. 2018). Both classes hold some of each; ``difficulty`` sets how far apart the two
  classes' senescent-fraction distributions and healthy-cell sizes are.
* Cells live in *well coordinates* (um from the well centre) and are generated per 400 um tile
  from a stable hash of (seed, barcode, well, tile), so any stage position at either objective
  shows the same cells at the right place and scale.

How the phase image becomes a camera frame is :mod:`hardware.sim.optics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

from hardware.sim.config import Float64Array, FloatArray, SimulationConfig, _rng
from hardware.sim.truth import _well_truth

_TILE_UM = 400.0  # cells are generated per square tile of this side, in well coordinates
_MAX_CELL_REACH_UM = 170.0  # no cell reaches further than this from its centre
_N_VERTICES = 48  # cell outline polygon: smooth enough at 100x
_N_NUCLEUS_VERTICES = 16
_HEALTHY_AREA_UM2 = 2100.0  # median area of a small spindle MSC
_MITOTIC_RADIUS_UM = 9.0
_CORE_BLUR_UM = 6.0  # how gradually cells thicken towards the nucleus


@dataclass(frozen=True)
class _WellFields:
    """Smooth per-well fields: cell orientation (swirls) and density, sums of plane waves."""

    orientation_waves: FloatArray  # (K, 4): kx, ky (rad/um), phase, amplitude (rad)
    orientation_offset: float
    density_waves: FloatArray  # (K, 4): kx, ky, phase, relative amplitude
    healthy_area_scale: float  # healthy-cell area relative to _HEALTHY_AREA_UM2
    mitotic_fraction: float

    def orientation(self, xy: Float64Array) -> Float64Array:
        """Preferred cell angle (rad) at points (n, 2) in um: (n,)."""
        return self.orientation_offset + _wave_sum(self.orientation_waves, xy)

    def density(self, xy: Float64Array) -> Float64Array:
        """Relative cell density at points (n, 2) in um: (n,), mean 1."""
        return 1.0 + _wave_sum(self.density_waves, xy)


def _wave_sum(waves: FloatArray, xy: Float64Array) -> Float64Array:
    arg = xy @ waves[:, :2].T.astype(np.float64) + waves[:, 2]
    return (waves[:, 3] * np.sin(arg)).sum(axis=1)


_DENSITY_MAX = 1.6  # upper bound of _WellFields.density (3 waves of amplitude <= 0.2)


def _waves(
    rng: np.random.Generator, n: int, wavelength: tuple[float, float], amp: float
) -> FloatArray:
    k = 2.0 * np.pi / rng.uniform(*wavelength, n)
    direction = rng.uniform(0.0, 2.0 * np.pi, n)
    return np.stack(
        [
            k * np.cos(direction),
            k * np.sin(direction),
            rng.uniform(0, 2 * np.pi, n),
            np.full(n, amp),
        ],
        axis=1,
    ).astype(np.float32)


@lru_cache(maxsize=512)
def _well_fields(config: SimulationConfig, barcode: str, well: str) -> _WellFields:
    truth = _well_truth(config, barcode, well)
    rng = _rng(config.seed, barcode, well, "fields")
    # Low-functionality lots also have somewhat larger non-senescent cells; this cue fades
    # with difficulty. A per-well lognormal factor stands for donor/passage variation.
    scale = 1.0 + (0.3 * (1.0 - config.difficulty) if truth.morphology == "low" else 0.0)
    scale *= float(rng.lognormal(0.0, 0.06))
    return _WellFields(
        orientation_waves=_waves(rng, 4, (500.0, 1600.0), 0.55),
        orientation_offset=float(rng.uniform(0.0, np.pi)),
        density_waves=_waves(rng, 3, (700.0, 2500.0), 0.2),
        healthy_area_scale=scale,
        # senescent lots proliferate less, so fewer rounded (mitotic) cells
        mitotic_fraction=0.03 if truth.morphology == "high" else 0.015,
    )


@dataclass(frozen=True)
class _Cells:
    """Cells in well coordinates (um). N cells, P point-like objects.

    body: (N, V, 2) outline; body_phase: (N,) phase of the body (negative: phase-bright);
    centre: (N, 2); core_scale: (N,) the thicker perinuclear core is the outline shrunk by
    this factor towards the centre (kept as a factor to save memory in the tile cache);
    core_phase: (N,) its extra phase over the
    body, added after a blur so that cells thicken smoothly (NaN: none drawn);
    nucleus: (N, Vn, 2) outline; nucleus_phase: (N,) (NaN: none drawn);
    bbox: (N, 4) xmin, ymin, xmax, ymax; points: (P, 2) granules, nucleoli and debris;
    point_mass: (P,) integrated phase of each point, in phase * um^2.
    """

    body: FloatArray
    body_phase: FloatArray
    centre: FloatArray
    core_scale: FloatArray
    core_phase: FloatArray
    nucleus: FloatArray
    nucleus_phase: FloatArray
    bbox: FloatArray
    points: FloatArray
    point_mass: FloatArray

    def select(self, cells: npt.NDArray[np.bool_], points: npt.NDArray[np.bool_]) -> _Cells:
        """A subset: ``cells`` (N,) and ``points`` (P,) are boolean masks."""
        per_point = {"points", "point_mass"}
        return _Cells(
            **{
                f.name: getattr(self, f.name)[points if f.name in per_point else cells]
                for f in fields(self)
            }
        )

    @staticmethod
    def concatenate(parts: list[_Cells]) -> _Cells:
        return _Cells(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Cells)}
        )


_T = -np.cos(np.pi * np.arange(_N_VERTICES // 2 + 1) / (_N_VERTICES // 2))  # -1..1, dense at tips
_THETA = 2.0 * np.pi * np.arange(_N_VERTICES) / _N_VERTICES
_HARMONICS = np.arange(2, 13)
_COS_K = np.cos(_HARMONICS[:, None] * _THETA)  # (K, V)
_SIN_K = np.sin(_HARMONICS[:, None] * _THETA)
_NUC_THETA = 2.0 * np.pi * np.arange(_N_NUCLEUS_VERTICES) / _N_NUCLEUS_VERTICES


def _spindle_outlines(rng: np.random.Generator, n: int) -> Float64Array:
    """(n, V, 2) bipolar spindles along x, tapered, bent and slightly lopsided (any scale)."""
    col = (n, 1)
    aspect = np.clip(rng.lognormal(np.log(5.2), 0.28, col), 3.0, 8.0)
    taper = rng.uniform(0.9, 2.2, col)  # > 1: long thin processes, < 1: blunt ends
    t = _T[None, :]
    x = t + rng.uniform(-0.25, 0.25, col) * (t * t - 1.0)  # moves the widest point off-centre
    centre = rng.normal(0.0, 0.15, col) * (t * t - 1.0 / 3.0)  # bend of the long axis
    wobble = 1.0 + rng.uniform(0.0, 0.15, col) * np.sin(
        np.pi * rng.uniform(1.0, 3.0, col) * t + rng.uniform(0.0, 2 * np.pi, col)
    )
    half_width = (1.0 - t * t) ** taper * wobble / aspect
    upper = np.stack([x, centre + half_width], axis=-1)
    lower = np.stack([x, centre - half_width], axis=-1)[:, -2:0:-1]
    return np.concatenate([upper, lower], axis=1)


def _polar_outlines(
    rng: np.random.Generator, n: int, roughness: float, aspect: tuple[float, float]
) -> Float64Array:
    """(n, V, 2) star-shaped blobs: a circle with random harmonics 2..12, stretched along x.

    Harmonic k gets amplitude up to roughness / (k - 1): big lobes plus ruffled edges.
    """
    amp = rng.uniform(0.0, roughness, (n, _HARMONICS.size)) / (_HARMONICS - 1.0)
    phase = rng.uniform(0.0, 2 * np.pi, (n, _HARMONICS.size))
    # sum_k a cos(k theta + p) = sum_k (a cos p) cos(k theta) - (a sin p) sin(k theta)
    r = 1.0 + (amp * np.cos(phase)) @ _COS_K - (amp * np.sin(phase)) @ _SIN_K
    r = np.maximum(r, 0.35)
    stretch = np.sqrt(rng.uniform(*aspect, (n, 1)))
    return np.stack([r * np.cos(_THETA) * stretch, r * np.sin(_THETA) / stretch], axis=-1)


def _tripolar_outlines(rng: np.random.Generator, n: int) -> Float64Array:
    """(n, V, 2) triangular cells with three short processes, the less common healthy MSC shape
    (any scale)."""
    col = (n, 1)
    lobe = (1.0 + np.cos(3.0 * _THETA + rng.uniform(0.0, np.pi, col))) / 2.0
    r = 0.45 + rng.uniform(0.9, 1.4, col) * lobe**4  # a compact body with three tapering arms
    r *= 1.0 + 0.2 * np.cos(_THETA + rng.uniform(0.0, 2 * np.pi, col))  # one arm longer
    stretch = np.sqrt(rng.uniform(1.0, 1.8, col))
    return np.stack([r * np.cos(_THETA) * stretch, r * np.sin(_THETA) / stretch], axis=-1)


def _polygon_area(poly: Float64Array) -> Float64Array:
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y).sum(axis=-1))


def _place(
    outline: Float64Array,
    area: Float64Array,
    angle: Float64Array,
    centre: Float64Array,
) -> Float64Array:
    """Scale outlines (n, V, 2) to ``area`` (um^2), rotate by ``angle``, move to ``centre``."""
    outline = outline * np.sqrt(area / _polygon_area(outline))[:, None, None]
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x, y = outline[..., 0], outline[..., 1]
    return np.stack([c * x - s * y, s * x + c * y], axis=-1) + centre[:, None, :]


@lru_cache(maxsize=1024)  # ~40 kB a tile on average; a 40x field needs ~25 tiles
def _tile_cells(config: SimulationConfig, barcode: str, well: str, tx: int, ty: int) -> _Cells:
    """The cells whose centres fall in tile (tx, ty), i.e. x in [tx, tx + 1) * _TILE_UM."""
    truth = _well_truth(config, barcode, well)
    well_fields = _well_fields(config, barcode, well)
    rng = _rng(config.seed, barcode, well, tx, ty, "tile")
    sf, mf = truth.senescent_fraction, well_fields.mitotic_fraction
    healthy_area = _HEALTHY_AREA_UM2 * well_fields.healthy_area_scale
    mitotic_area = np.pi * _MITOTIC_RADIUS_UM**2
    mean_area = healthy_area * ((1.0 - sf - mf) + 3.5 * sf) + mitotic_area * mf
    # Randomly placed cells cover 1 - exp(-density * area) of the surface (Boolean model).
    per_um2 = -math.log(1.0 - truth.confluence) / mean_area
    n = int(rng.poisson(per_um2 * _TILE_UM**2 * _DENSITY_MAX))
    xy = (np.array([tx, ty]) + rng.random((n, 2))) * _TILE_UM
    keep = rng.random(n) * _DENSITY_MAX < well_fields.density(xy)
    kind_u = rng.random(n)
    kind = np.where(kind_u < sf, 1, np.where(kind_u < sf + mf, 2, 0))  # 0 healthy, 1 sen., 2 mit.
    healthy, senescent, mitotic = kind == 0, kind == 1, kind == 2
    tripolar = healthy & (rng.random(n) < 0.12)

    area = healthy_area * rng.lognormal(0.0, 0.12, n)
    area = np.where(senescent, area * rng.uniform(2.0, 5.0, n), area)
    area = np.where(mitotic, mitotic_area * rng.uniform(0.8, 1.2, n), area)
    outline = _spindle_outlines(rng, n)
    outline = np.where(tripolar[:, None, None], _tripolar_outlines(rng, n), outline)
    outline = np.where(senescent[:, None, None], _polar_outlines(rng, n, 0.3, (1.0, 2.2)), outline)
    outline = np.where(mitotic[:, None, None], _polar_outlines(rng, n, 0.03, (1.0, 1.1)), outline)
    # Healthy cells follow the local swirl; senescent cells lose that alignment.
    angle = well_fields.orientation(xy) + rng.normal(0.0, 0.3, n)
    angle = np.where(healthy, angle, rng.uniform(0.0, 2 * np.pi, n))
    body = _place(outline, area, angle, xy)
    # Cells do not grow onto the well wall: every vertex stays inside the well bottom. The
    # rare cell reaching further than _MAX_CELL_REACH_UM is dropped so that tiles can be culled.
    keep &= np.hypot(body[..., 0], body[..., 1]).max(axis=1) < config.plate.well_diameter_um / 2.0
    keep &= np.hypot(*np.moveaxis(body - xy[:, None, :], -1, 0)).max(axis=1) < _MAX_CELL_REACH_UM

    # Cells are thickest round the nucleus and thin out to the lamellae: a core polygon (the
    # outline shrunk towards the centre) carries extra phase. Senescent cells are flattened.
    core_scale = rng.uniform(0.45, 0.6, n)
    body_phase = np.where(senescent, rng.normal(0.4, 0.05, n), rng.normal(0.8, 0.08, n))
    core_phase = np.where(senescent, 0.2, 0.5)  # added on top of the body, blurred
    body_phase = np.where(mitotic, -rng.uniform(0.8, 1.2, n), body_phase)  # rounded: phase-bright
    core_phase = np.where(mitotic, np.nan, core_phase)

    # Nuclei: ellipses near the centre, larger and rounder in senescent cells.
    nuc_area = np.where(senescent, rng.uniform(200.0, 330.0, n), rng.uniform(100.0, 150.0, n))
    nuc_aspect = np.where(senescent, rng.uniform(1.1, 1.5, n), rng.uniform(1.4, 2.0, n))
    nuc_half = np.sqrt(
        (nuc_area / np.pi)[:, None] * np.stack([nuc_aspect, 1.0 / nuc_aspect], axis=1)
    )
    nuc_angle = angle + np.where(senescent, rng.uniform(0, np.pi, n), rng.normal(0.0, 0.15, n))
    offset = (
        rng.normal(0.0, 1.0, (n, 2))
        * np.where(senescent, 0.15, 0.05)[:, None]
        * np.sqrt(area)[:, None]
        * np.stack([np.ones(n), np.where(senescent, 1.0, 0.2)], axis=1)
    )
    c, s = np.cos(angle), np.sin(angle)
    nuc_centre = xy + np.stack(
        [c * offset[:, 0] - s * offset[:, 1], s * offset[:, 0] + c * offset[:, 1]], 1
    )
    unit = np.stack([np.cos(_NUC_THETA), np.sin(_NUC_THETA)], axis=-1)
    nucleus = _place(
        unit[None] * nuc_half[:, None, :],
        np.pi * nuc_half[:, 0] * nuc_half[:, 1],
        nuc_angle,
        nuc_centre,
    )
    nucleus_phase = body_phase + np.where(senescent, 0.55, 0.6)
    nucleus_phase = np.where(mitotic, np.nan, nucleus_phase)

    # Point-like objects: 2-3 nucleoli per nucleus, cytoplasmic granules (many in senescent
    # cells: lipofuscin, vacuoles), and debris on the well bottom.
    keep_idx = np.flatnonzero(keep & ~mitotic)
    points, masses = [], []
    nucleoli = nuc_centre[keep_idx, None, :] + rng.normal(
        0.0, 0.3, (keep_idx.size, 3, 2)
    ) * nuc_half[keep_idx, None, :].mean(axis=-1, keepdims=True)
    points.append(nucleoli.reshape(-1, 2))
    masses.append(rng.uniform(1.0, 2.5, nucleoli.shape[0] * 3))
    n_granules = np.where(
        senescent[keep_idx], rng.integers(25, 80, keep_idx.size), rng.integers(0, 8, keep_idx.size)
    )
    owner = np.repeat(keep_idx, n_granules)
    # Granules sit between the nucleus and a random point of the outline, so inside the cell
    # and denser round the nucleus.
    rim = body[owner, rng.integers(0, _N_VERTICES, owner.size)]
    reach = rng.uniform(0.15, 0.8, (owner.size, 1)) ** 1.5
    points.append(nuc_centre[owner] + reach * (rim - nuc_centre[owner]))
    masses.append(rng.uniform(0.5, 2.0, owner.size))
    n_debris = int(rng.poisson(6.0))
    points.append((np.array([tx, ty]) + rng.random((n_debris, 2))) * _TILE_UM)
    masses.append(rng.uniform(1.0, 8.0, n_debris) * rng.choice([1.0, -1.0], n_debris, p=[0.7, 0.3]))
    point_xy = np.concatenate(points)
    inside = np.hypot(point_xy[:, 0], point_xy[:, 1]) < config.plate.well_diameter_um / 2.0

    body, nucleus = body[keep], nucleus[keep]
    bbox = np.concatenate([body.min(axis=1), body.max(axis=1)], axis=1)
    return _Cells(
        body=body.astype(np.float32),
        body_phase=body_phase[keep].astype(np.float32),
        centre=xy[keep].astype(np.float32),
        core_scale=core_scale[keep].astype(np.float32),
        core_phase=core_phase[keep].astype(np.float32),
        nucleus=nucleus.astype(np.float32),
        nucleus_phase=nucleus_phase[keep].astype(np.float32),
        bbox=bbox.astype(np.float32),
        points=point_xy[inside].astype(np.float32),
        point_mass=np.concatenate(masses)[inside].astype(np.float32),
    )


def _cells_in_view(
    config: SimulationConfig, barcode: str, well: str, box: tuple[float, float, float, float]
) -> _Cells | None:
    """Cells and points of ``well`` that may show in ``box`` (xmin, ymin, xmax, ymax, um from
    the well centre), or None if the box lies beyond the well."""
    xmin, ymin, xmax, ymax = box
    radius = config.plate.well_diameter_um / 2.0
    reach = _MAX_CELL_REACH_UM
    tiles_x = range(
        math.floor((xmin - reach) / _TILE_UM), math.floor((xmax + reach) / _TILE_UM) + 1
    )
    tiles_y = range(
        math.floor((ymin - reach) / _TILE_UM), math.floor((ymax + reach) / _TILE_UM) + 1
    )
    parts: list[_Cells] = []
    for ty in tiles_y:
        for tx in tiles_x:
            # the tile's point nearest the well centre: skip tiles wholly outside the well
            nx = min(max(0.0, tx * _TILE_UM), (tx + 1) * _TILE_UM)
            ny = min(max(0.0, ty * _TILE_UM), (ty + 1) * _TILE_UM)
            if math.hypot(nx, ny) >= radius:
                continue
            tile = _tile_cells(config, barcode, well, tx, ty)
            b, p = tile.bbox, tile.points
            seen = (b[:, 2] >= xmin) & (b[:, 0] <= xmax) & (b[:, 3] >= ymin) & (b[:, 1] <= ymax)
            near = (p[:, 0] >= xmin) & (p[:, 0] <= xmax) & (p[:, 1] >= ymin) & (p[:, 1] <= ymax)
            parts.append(tile.select(seen, near))
    return _Cells.concatenate(parts) if parts else None


def _blur(image: FloatArray, sigma_px: float) -> FloatArray:
    """Gaussian blur of an (H, W) float32 image; sigma in pixels."""
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma_px), dtype=np.float32)


def _draw_phase(
    cells: _Cells, origin: tuple[float, float], pixel_um: float, shape: tuple[int, int]
) -> FloatArray:
    """Phase image (H, W) float32 of ``cells``; ``origin`` is pixel (0, 0)'s centre in um."""
    height, width = shape
    phase = np.zeros(shape, np.float32)
    thick = np.zeros(shape, np.float32)
    # cv2 polygon coordinates are fixed point with 3 fractional bits: sub-pixel placement.
    to_px = np.float32(8.0 / pixel_um)
    offset = np.array(origin, np.float32)
    body = np.rint((cells.body - offset) * to_px).astype(np.int32)
    centre = cells.centre[:, None, :]
    core_outline = centre + cells.core_scale[:, None, None] * (cells.body - centre)
    core = np.rint((core_outline - offset) * to_px).astype(np.int32)
    nucleus = np.rint((cells.nucleus - offset) * to_px).astype(np.int32)
    has_nucleus = ~np.isnan(cells.nucleus_phase)
    # One fillPoly per cell: a multi-polygon call would XOR overlapping cells.
    for i in range(body.shape[0]):
        cv2.fillPoly(phase, [body[i]], float(cells.body_phase[i]), cv2.LINE_8, 3)
        if has_nucleus[i]:
            cv2.fillPoly(thick, [core[i]], float(cells.core_phase[i]), cv2.LINE_8, 3)
            cv2.fillPoly(phase, [nucleus[i]], float(cells.nucleus_phase[i]), cv2.LINE_8, 3)
    phase += _blur(thick, _CORE_BLUR_UM / pixel_um)
    if cells.points.shape[0]:
        ij = np.rint((cells.points - offset) / np.float32(pixel_um)).astype(np.int64)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < width) & (ij[:, 1] >= 0) & (ij[:, 1] < height)
        flat = ij[ok, 1] * width + ij[ok, 0]
        # A point's integrated phase spreads over one pixel, whatever the pixel size.
        weights = cells.point_mass[ok] / np.float32(pixel_um * pixel_um)
        phase += (
            np.bincount(flat, weights=weights, minlength=height * width)
            .reshape(shape)
            .astype(np.float32)
        )
    return phase
