"""A deterministic phase-contrast microscope over a 96-well plate of adherent human BM-MSCs.

The simulator is the embedded default backend and the source of the CNN's training images, so it
aims at a classification task that is learnable from morphology but not trivial:

* Every well gets a hidden ground truth (:class:`WellTruth`): an FCT label ("high" iff CD73+ and
  CD90+ are both > 95 %), the morphology actually rendered (the other class for a small
  ``label_noise`` share of wells), a senescent-cell fraction and a confluence.
* High-functionality wells are mostly small spindle/fibroblast-like cells (about 1,800-2,500 um^2,
  aspect 3-8) aligned in slow swirls. Low-functionality wells carry a larger share of enlarged
  (2-5x), flattened, irregular, granular cells with a visible nucleus (senescence morphology,
  Oja et al. 2018). Both classes hold some of each; ``difficulty`` sets how far apart the two
  classes' senescent-fraction distributions and healthy-cell sizes are.
* Cells live in *well coordinates* (um from the well centre) and are generated per 400 um tile
  from a stable hash of (seed, barcode, well, tile), so any stage position at either objective
  shows the same cells at the right place and scale.

Optics: ``"40x"`` and ``"100x"`` are *total* magnifications, a 4x or 10x objective behind the
eyepiece/tube factor of 10 that microscope labels include (that is how the reference paper's
40x/100x images show whole cell populations). The camera sees ``camera_pixel_um / objective``
um per pixel: 1.625 um at 40x, 0.65 um at 100x with the default 6.5 um sCMOS pixel. Stage and
image axes agree: image column grows with stage x, image row with stage y.

Image formation, per frame: cell "optical thickness" (phase) is drawn on a float canvas, blurred
by the PSF and a per-field defocus, and turned into intensity by a high-pass model of phase
contrast (``phase - 0.8 * blur(phase)``): thin cells look dark, their edges carry bright halos
and the inside of large flat cells shades off towards the background. Then vignetting, a fixed
dust pattern, an uneven illumination gradient (plus a meniscus term towards the well wall),
shot noise, read noise and 12-bit quantisation. An ``overexposure_rate`` share of frames is
overexposed (8-bit mean > 240).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from hardware.microscope import OBJECTIVES, HardwareError, Objective, WellAcquisitionError
from hardware.plate import SBS_96, PlateGeometry

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

OBJECTIVE_MAGNIFICATION: dict[str, float] = {"40x": 4.0, "100x": 10.0}
"""Objective magnification behind each *total* magnification name (the 10x eyepiece factor
does not reach the camera)."""

FCT_COLUMNS: tuple[str, ...] = ("Well", "Sample ID", "Events", "CD73-FITC+ %", "CD90-PE+ %")
FCT_THRESHOLD_PCT = 95.0  # a well is "high" iff both markers are strictly above this

_TILE_UM = 400.0  # cells are generated per square tile of this side, in well coordinates
_MAX_CELL_REACH_UM = 170.0  # no cell reaches further than this from its centre
_N_VERTICES = 48  # cell outline polygon: smooth enough at 100x
_N_NUCLEUS_VERTICES = 16
_HEALTHY_AREA_UM2 = 2100.0  # median area of a small spindle MSC
_MITOTIC_RADIUS_UM = 9.0
_PSF_SIGMA_UM = 0.8  # optical resolution of a low-NA phase objective, as a Gaussian sigma
_HALO_SIGMA_UM = 4.5  # width of the phase ring's low-pass: sets halo width and shade-off
_CORE_BLUR_UM = 6.0  # how gradually cells thicken towards the nucleus
_SHADE_OFF = 0.8  # share of a large flat object's phase that phase contrast removes
_BACKGROUND_ADU = 2150.0  # background level at the frame centre, before the camera offset
_CAMERA_OFFSET_ADU = 100.0
_ELECTRONS_PER_ADU = 4.0
_READ_NOISE_ADU = 2.5


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that fixes what the simulator renders.

    Attributes:
        seed: master seed; with the barcode it determines every well, cell and noise pixel.
        difficulty: 0..1, how much the classes overlap. Senescent fractions are Beta
            distributed per well with means 0.06 (high) vs 0.55 (low) at 0, 0.13 vs 0.45 at
            0.5 and 0.20 vs 0.35 at 1, and spread widening with difficulty; the non-senescent
            cells of low wells are 30 % larger at 0, 15 % at 0.5, equal at 1. At the default
            0.5 about 1.5 % of wells are ambiguous from morphology alone, on top of
            ``label_noise``: a classifier that knew each well's true senescent fraction would
            score about 95 %, one counting cells in a single 40x field about 93-94 %.
        label_noise: share of wells whose morphology is drawn from the *other* class while the
            FCT label stays put (biology that morphology does not show).
        high_fraction: prior probability that a well is "high".
        camera_shape: (H, W) of a frame, in pixels.
        camera_pixel_um: physical camera pixel, in um.
        bit_depth: ADC depth; frames are uint16 holding values < 2**bit_depth.
        overexposure_rate: share of frames that come out overexposed (8-bit mean > 240).
        plate: plate geometry (stage coordinates of wells).
    """

    seed: int = 0
    difficulty: float = 0.5
    label_noise: float = 0.03
    high_fraction: float = 0.5
    camera_shape: tuple[int, int] = (528, 720)
    camera_pixel_um: float = 6.5
    bit_depth: int = 12
    overexposure_rate: float = 0.03
    plate: PlateGeometry = SBS_96

    def __post_init__(self) -> None:
        for name in ("difficulty", "label_noise", "high_fraction", "overexposure_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if not 8 <= self.bit_depth <= 16:
            raise ValueError(f"bit_depth must be within [8, 16], got {self.bit_depth}")


def pixel_size_um(config: SimulationConfig, objective: str) -> float:
    """Size of one camera pixel in the sample plane, in um: camera pixel / objective power."""
    if objective not in OBJECTIVE_MAGNIFICATION:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    return config.camera_pixel_um / OBJECTIVE_MAGNIFICATION[objective]


@dataclass(frozen=True)
class WellTruth:
    """Hidden ground truth of one well.

    Attributes:
        well: canonical well name ("B7").
        label: the FCT label, "high" iff ``cd73_pct`` and ``cd90_pct`` are both > 95.
        morphology: the class whose morphology is rendered; differs from ``label`` in
            label-noise wells.
        senescent_fraction: share of cells (by count) that are enlarged and flattened, 0..1.
        confluence: target share of the well bottom covered by cells, 0..1.
        cd73_pct: CD73-positive events, in %, one decimal.
        cd90_pct: CD90-positive events, in %, one decimal.
        event_count: events recorded by the cytometer.
    """

    well: str
    label: Literal["high", "low"]
    morphology: Literal["high", "low"]
    senescent_fraction: float
    confluence: float
    cd73_pct: float
    cd90_pct: float
    event_count: int


def _stable_seed(*parts: object) -> int:
    """A 64-bit seed from a stable hash of ``parts`` (Python's hash() is salted per process)."""
    text = "\x1f".join(repr(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_stable_seed(*parts))


def _class_means(difficulty: float) -> tuple[float, float]:
    """Mean senescent fraction of (high, low) morphology at a difficulty."""
    return 0.06 + 0.14 * difficulty, 0.55 - 0.20 * difficulty


def _marker_pct(rng: np.random.Generator, passing: bool) -> float:
    """One marker's positive share, in %, rounded as the export prints it: > 95 iff passing."""
    if passing:  # 95.2..99.9, most near 99 as in healthy MSC lots
        return float(min(99.9, round(100.0 - 4.8 * rng.beta(1.5, 4.0), 1)))
    return float(min(FCT_THRESHOLD_PCT, round(95.0 - 25.0 * rng.beta(1.3, 3.0), 1)))


@lru_cache(maxsize=4096)
def _well_truth(config: SimulationConfig, barcode: str, well: str) -> WellTruth:
    rng = _rng(config.seed, barcode, well, "truth")
    label: Literal["high", "low"] = "high" if rng.random() < config.high_fraction else "low"
    flipped = rng.random() < config.label_noise
    morphology: Literal["high", "low"] = label
    if flipped:
        morphology = "low" if label == "high" else "high"
    mean_high, mean_low = _class_means(config.difficulty)
    mean = mean_high if morphology == "high" else mean_low
    concentration = 45.0 - 25.0 * config.difficulty  # Beta concentration: lower = wider spread
    senescent = float(rng.beta(mean * concentration, (1.0 - mean) * concentration))
    confluence = float(rng.uniform(0.15, 0.70))
    if config.plate.is_edge_well(well):
        confluence *= 0.85  # outer wells evaporate faster and grow a little less
    if label == "high":
        cd73, cd90 = _marker_pct(rng, True), _marker_pct(rng, True)
    else:
        failing = rng.choice(3)  # 0: CD73 fails, 1: CD90 fails, 2: both fail
        cd73 = _marker_pct(rng, failing == 1)
        cd90 = _marker_pct(rng, failing == 0)
    return WellTruth(
        well=well,
        label=label,
        morphology=morphology,
        senescent_fraction=round(senescent, 4),
        confluence=round(confluence, 4),
        cd73_pct=cd73,
        cd90_pct=cd90,
        event_count=int(rng.integers(8000, 20001)),
    )


def well_truth(config: SimulationConfig, barcode: str, well: str) -> WellTruth:
    """Ground truth of one well (any spelling of its name, e.g. ``"b07"``)."""
    return _well_truth(config, barcode, config.plate.normalise(well))


def plate_truth(config: SimulationConfig, barcode: str) -> dict[str, WellTruth]:
    """Ground truth of every well of the plate, keyed by well name in row-major order."""
    return {name: _well_truth(config, barcode, name) for name in config.plate.well_names}


def fct_export_csv(config: SimulationConfig, barcode: str) -> str:
    """The plate's flow-cytometry results, shaped like a cytometer's per-well CSV export.

    Format: a few ``key,value`` header lines, one empty line, then a table with the columns
    :data:`FCT_COLUMNS` (``Well,Sample ID,Events,CD73-FITC+ %,CD90-PE+ %``), one row per well,
    percentages with one decimal. A well is "high" iff both percentages are > 95.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Experiment", "MSC identity panel (CD73/CD90)"])
    writer.writerow(["Plate", barcode])
    writer.writerow(["Instrument", "Simulated flow cytometer"])
    writer.writerow(["Gates", "CD73-FITC+ and CD90-PE+ set on isotype controls"])
    writer.writerow([])
    writer.writerow(FCT_COLUMNS)
    for name, truth in plate_truth(config, barcode).items():
        writer.writerow(
            [
                name,
                f"{barcode}_{name}",
                truth.event_count,
                f"{truth.cd73_pct:.1f}",
                f"{truth.cd90_pct:.1f}",
            ]
        )
    return out.getvalue()


# ----------------------------------------------------------------------------------------------
# Cells


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


@dataclass(frozen=True)
class _FrameConditions:
    """What varies from exposure to exposure: focus, light, and whether the frame blew out."""

    defocus_um: float  # Gaussian sigma of the defocus blur, in um
    exposure: float  # multiplies _BACKGROUND_ADU
    gradient: tuple[float, float]  # relative illumination change across the frame in x and y
    overexposed: bool


def _frame_conditions(
    config: SimulationConfig,
    barcode: str,
    key: tuple[object, ...],
    well_offset: tuple[float, float] | None,
) -> _FrameConditions:
    """Conditions of the frame identified by ``key``; ``well_offset`` is the stage position
    relative to the well centre (um), None between wells."""
    rng = _rng(*key, "conditions")
    defocus = rng.uniform(0.0, 1.5) if rng.random() < 0.85 else rng.uniform(1.5, 4.0)
    plate_exposure = _rng(config.seed, barcode, "plate exposure").uniform(0.92, 1.08)
    exposure = plate_exposure * rng.uniform(0.88, 1.1)
    direction = rng.uniform(0.0, 2 * np.pi)
    strength = rng.uniform(0.02, 0.10)
    gx, gy = strength * math.cos(direction), strength * math.sin(direction)
    if well_offset is not None:
        # The meniscus bends light away near the wall: darker towards the well edge.
        ox, oy = well_offset
        r = math.hypot(ox, oy)
        if r > 0:
            rel = min(r / (config.plate.well_diameter_um / 2.0), 1.0)
            gx -= 0.15 * rel * rel * ox / r
            gy -= 0.15 * rel * rel * oy / r
    overexposed = rng.random() < config.overexposure_rate
    return _FrameConditions(defocus, exposure, (gx, gy), overexposed)


@lru_cache(maxsize=8)
def _flat_field(seed: int, shape: tuple[int, int]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Vignetting times a fixed dust pattern, (H, W) float32, and the normalised x (1, W) and
    y (H, 1) coordinates in [-1, 1] used for illumination gradients."""
    height, width = shape
    xn = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    yn = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    r2 = (xn**2 * width**2 + yn**2 * height**2) / np.float32(width**2 + height**2)  # 1 at corners
    flat = 1.0 - 0.22 * r2
    # Out-of-focus dust on the camera window: faint rings fixed in camera coordinates.
    rng = _rng(seed, "dust")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    size = min(shape) / 528.0
    for _ in range(5):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius, amp = rng.uniform(8.0, 30.0) * size, rng.uniform(-0.02, 0.012)
        d = np.hypot(xx - cx, yy - cy)
        flat *= 1.0 + amp * np.exp(-(((d - radius) / (2.0 * size)) ** 2))
    return flat.astype(np.float32), xn, yn


def _render(
    config: SimulationConfig,
    barcode: str,
    well: str | None,
    x_um: float,
    y_um: float,
    objective: str,
) -> npt.NDArray[np.uint16]:
    """Render one frame: ``well`` is a canonical well name, or None for the plate between wells.

    Returns (H, W) uint16, values < 2**bit_depth.
    """
    shape = config.camera_shape
    height, width = shape
    pixel_um = pixel_size_um(config, objective)
    # Positions to the nm, with -0.0 folded into 0.0, so that equal positions share a frame.
    position = (f"{round(x_um, 3) + 0.0:.3f}", f"{round(y_um, 3) + 0.0:.3f}")
    key: tuple[object, ...] = (config.seed, barcode, well, *position, objective)
    phase = np.zeros(shape, np.float32)
    well_offset = origin = None
    if well is not None:
        cx, cy = config.plate.well_center_um(well)
        well_offset = (x_um - cx, y_um - cy)
        # pixel (0, 0)'s centre in well coordinates, um
        origin = (
            well_offset[0] - (width - 1) / 2.0 * pixel_um,
            well_offset[1] - (height - 1) / 2.0 * pixel_um,
        )
        box = (
            origin[0] - pixel_um,
            origin[1] - pixel_um,
            origin[0] + width * pixel_um,
            origin[1] + height * pixel_um,
        )
        cells = _cells_in_view(config, barcode, well, box)
        if cells is not None:
            phase = _draw_phase(cells, origin, pixel_um, shape)
    cond = _frame_conditions(config, barcode, key, well_offset)

    phase = _blur(phase, math.hypot(_PSF_SIGMA_UM, cond.defocus_um) / pixel_um)
    # Phase contrast as a high-pass: what the phase ring's low-pass removes is the halo (where
    # negative) and the shade-off of large flat objects (where positive).
    contrast = phase - np.float32(_SHADE_OFF) * _blur(phase, _HALO_SIGMA_UM / pixel_um)
    # Halos come out brighter than thin cytoplasm comes out dark.
    darkening = np.where(contrast > 0, np.float32(0.75) * contrast, np.float32(2.0) * contrast)
    flat, xn, yn = _flat_field(config.seed, shape)
    gx, gy = cond.gradient
    illumination = flat * (1.0 + np.float32(gx) * xn + np.float32(gy) * yn)
    if origin is not None:
        illumination = illumination * _wall_shadow(config, origin, pixel_um, shape)
    relative = illumination * np.maximum(1.0 - darkening, np.float32(0.05))
    return _expose(config, relative, cond, key)


def _expose(
    config: SimulationConfig, relative: FloatArray, cond: _FrameConditions, key: tuple[object, ...]
) -> npt.NDArray[np.uint16]:
    """Camera: light relative to the background (H, W) float32 -> (H, W) uint16 counts."""
    noise = _rng(*key, "noise").standard_normal(relative.shape, dtype=np.float32)
    full_scale = 2**config.bit_depth - 1
    to_depth = (2**config.bit_depth) / 4096.0  # ADU constants are for a 12-bit camera
    exposure = cond.exposure
    if cond.overexposed:
        # A lamp/exposure glitch: the background lands far above full scale.
        exposure = 4095.0 / _BACKGROUND_ADU * _rng(*key, "glare").uniform(1.4, 2.2)
    while True:
        signal = relative * np.float32(_BACKGROUND_ADU * exposure)
        # Shot noise (Gaussian limit of Poisson: thousands of electrons per pixel) + read noise.
        sigma = np.sqrt(signal / np.float32(_ELECTRONS_PER_ADU) + np.float32(_READ_NOISE_ADU**2))
        adu = (signal + sigma * noise + np.float32(_CAMERA_OFFSET_ADU)) * np.float32(to_depth)
        frame = np.clip(np.rint(adu), 0, full_scale).astype(np.uint16)
        # An overexposed frame must be unusable (8-bit mean > 240) even in a dense well.
        if not cond.overexposed or _mean_8bit(frame, config.bit_depth) > 240.0:
            return frame
        exposure *= 1.5


def _wall_shadow(
    config: SimulationConfig, origin: tuple[float, float], pixel_um: float, shape: tuple[int, int]
) -> FloatArray | float:
    """Relative light (H, W) where the frame reaches the well wall, else 1.0.

    Beyond the well bottom's edge the out-of-focus wall passes about 40 % of the light; the
    meniscus draws a soft bright rim just inside the edge.
    """
    height, width = shape
    radius = config.plate.well_diameter_um / 2.0
    corners_x = (origin[0], origin[0] + (width - 1) * pixel_um)
    corners_y = (origin[1], origin[1] + (height - 1) * pixel_um)
    if max(math.hypot(x, y) for x in corners_x for y in corners_y) < radius - 60.0:
        return 1.0
    x = origin[0] + np.arange(width, dtype=np.float32)[None, :] * np.float32(pixel_um)
    y = origin[1] + np.arange(height, dtype=np.float32)[:, None] * np.float32(pixel_um)
    beyond = (np.sqrt(x * x + y * y) - np.float32(radius)) / np.float32(25.0)  # 25 um blur
    wall = 1.0 - 0.6 / (1.0 + np.exp(-np.clip(beyond, -30.0, 30.0)))
    return (wall + 0.2 * np.exp(-((beyond + 1.0) ** 2))).astype(np.float32)


def _mean_8bit(frame: npt.NDArray[np.uint16], bit_depth: int) -> float:
    return float(np.mean(frame >> (bit_depth - 8)))


def render_field(
    config: SimulationConfig, barcode: str, well: str, x_um: float, y_um: float, objective: str
) -> npt.NDArray[np.uint16]:
    """What the camera sees with the stage at (x_um, y_um) (stage coordinates, um).

    Renders the cells of ``well`` (clipped to its diameter) around that position at the pixel
    size of ``objective``. Bit-identical for identical arguments.

    Returns:
        (H, W) uint16 frame, H, W = ``config.camera_shape``, values < 2**``config.bit_depth``.
    """
    return _render(config, barcode, config.plate.normalise(well), x_um, y_um, objective)


def well_at(plate: PlateGeometry, x_um: float, y_um: float) -> str | None:
    """The well whose bottom contains stage position (x_um, y_um), or None between wells."""
    x0, y0 = plate.a1_center_um
    column = round((x_um - x0) / plate.pitch_um)
    row = round((y_um - y0) / plate.pitch_um)
    if not (0 <= row < plate.rows and 0 <= column < plate.columns):
        return None
    name = f"{chr(ord('A') + row)}{column + 1}"
    cx, cy = plate.well_center_um(name)
    return name if math.hypot(x_um - cx, y_um - cy) <= plate.well_diameter_um / 2.0 else None


class SimulatedMicroscope:
    """A :class:`hardware.microscope.Microscope` that renders frames with :func:`render_field`.

    Args:
        config: simulation settings; defaults to ``SimulationConfig()``.
        barcode: plate barcode to render; :meth:`load_plate` or plain assignment changes it.
        fail_wells: wells whose snaps raise :class:`WellAcquisitionError` (injected camera
            failure, for tests).
    """

    name: str = "simulated"

    def __init__(
        self,
        config: SimulationConfig | None = None,
        *,
        barcode: str = "",
        fail_wells: Collection[str] = (),
    ) -> None:
        self.config = config if config is not None else SimulationConfig()
        self.barcode = barcode
        self.fail_wells = frozenset(self.config.plate.normalise(w) for w in fail_wells)
        self._objective: Objective = "40x"
        self._position = (0.0, 0.0)  # the plate corner: no well under the objective
        self._closed = False

    @property
    def objective(self) -> Objective:
        return self._objective

    def set_objective(self, objective: Objective) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
        self._check_open()
        self._objective = objective

    def load_plate(self, barcode: str) -> None:
        """Render plate ``barcode`` from now on (same as setting :attr:`barcode`)."""
        self._check_open()
        logger.info("simulated plate %s loaded", barcode)
        self.barcode = barcode

    @property
    def pixel_size_um(self) -> float:
        """Size of one camera pixel in the sample plane for the current objective, in um."""
        return pixel_size_um(self.config, self._objective)

    @property
    def position_um(self) -> tuple[float, float]:
        """Current stage (x, y), in um."""
        return self._position

    def move_to(self, x_um: float, y_um: float) -> None:
        self._check_open()
        self._position = (float(x_um), float(y_um))

    def snap(self, well: str, field_index: int) -> npt.NDArray[np.uint16]:
        """Render the frame at the current stage position; ``well`` is only checked against
        ``fail_wells`` and logged. Returns (H, W) uint16."""
        self._check_open()
        x, y = self._position
        under = well_at(self.config.plate, x, y)
        try:
            named: str | None = self.config.plate.normalise(well)
        except ValueError:
            named = None
        if (named in self.fail_wells) or (under in self.fail_wells):
            raise WellAcquisitionError(f"simulated camera timeout in well {named or under}")
        if under != named:
            logger.debug(
                "snap for %s field %d: stage at (%.0f, %.0f) um is over %s",
                well,
                field_index,
                x,
                y,
                under,
            )
        return _render(self.config, self.barcode, under, x, y, self._objective)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise HardwareError("the simulated microscope is closed")
