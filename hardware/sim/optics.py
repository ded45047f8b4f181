"""Optics and camera of the simulated microscope: from a phase image to a uint16 frame.

``"40x"`` and ``"100x"`` are *total* magnifications, a 4x or 10x objective behind the
eyepiece/tube factor of 10 that microscope labels include (that is how the reference paper's
40x/100x images show whole cell populations). The camera sees ``camera_pixel_um / objective``
um per pixel: 1.625 um at 40x, 0.65 um at 100x with the default 6.5 um sCMOS pixel. Stage and
image axes agree: image column grows with stage x, image row with stage y.

Image formation, per frame: cell "optical thickness" (phase) is drawn on a float canvas, blurred
by the PSF and the field's defocus (its cells' distance from the focus drive's z, see
:mod:`hardware.sim.focus`), and turned into intensity by a high-pass model of phase
contrast (``phase - 0.8 * blur(phase)``): thin cells look dark, their edges carry bright halos
and the inside of large flat cells shades off towards the background. Then vignetting, a fixed
dust pattern, an uneven illumination gradient (plus a meniscus term towards the well wall),
shot noise, read noise and 12-bit quantisation. An ``overexposure_rate`` share of frames is
overexposed (8-bit mean > 240).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

from hardware.microscope import OBJECTIVES
from hardware.sim.cells import _blur, _cells_in_view, _draw_phase
from hardware.sim.channels import PHASE, SimChannel, check_sim_channels
from hardware.sim.config import FloatArray, SimulationConfig, _rng
from hardware.sim.focus import surface_z_um

OBJECTIVE_MAGNIFICATION: dict[str, float] = {"40x": 4.0, "100x": 10.0}
"""Objective magnification behind each *total* magnification name (the 10x eyepiece factor
does not reach the camera)."""

_PSF_SIGMA_UM = 0.8  # optical resolution of a low-NA phase objective, as a Gaussian sigma
_HALO_SIGMA_UM = 4.5  # width of the phase ring's low-pass: sets halo width and shade-off
_SHADE_OFF = 0.8  # share of a large flat object's phase that phase contrast removes
_BACKGROUND_ADU = 2150.0  # background level at the frame centre, before the camera offset
_CAMERA_OFFSET_ADU = 100.0
_ELECTRONS_PER_ADU = 4.0
_READ_NOISE_ADU = 2.5
# Channels (hardware.sim.channels): a focal offset of dz um widens the blur by this much per um
# (geometric defocus of a low-NA objective) and adds the transport-of-intensity term
# -_TIE_GAIN_UM * dz * laplacian(phase) (laplacian per um^2); brightfield keeps this share of a
# cell's phase as absorption.
_DEFOCUS_BLUR_PER_UM = 0.3
_TIE_GAIN_UM = 1.0
_ABSORPTION = 0.12


def pixel_size_um(config: SimulationConfig, objective: str) -> float:
    """Size of one camera pixel in the sample plane, in um: camera pixel / objective power."""
    if objective not in OBJECTIVE_MAGNIFICATION:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    return config.camera_pixel_um / OBJECTIVE_MAGNIFICATION[objective]


@dataclass(frozen=True)
class _FrameConditions:
    """What varies from exposure to exposure: focus, light, and whether the frame blew out."""

    defocus_um: float  # Gaussian sigma of the defocus blur, in um
    exposure: float  # multiplies _BACKGROUND_ADU
    gradient: tuple[float, float]  # relative illumination change across the frame in x and y
    overexposed: bool


def _field_defocus(key: tuple[object, ...]) -> tuple[float, float]:
    """(d, sign) of the field identified by ``key``: its cells lie ``sign * d / blur_per_um``
    um from the focus surface, so a frame exposed on the surface has defocus sigma ``d`` (um).

    ``d`` is the first draw of the frame's conditions (85 % in 0..1.5 um, else 1.5..4 um); the
    sign comes from a generator of its own, so the other conditions keep their draws.
    """
    return _draw_defocus(_rng(*key, "conditions")), _defocus_sign(key)


def _draw_defocus(rng: np.random.Generator) -> float:
    return rng.uniform(0.0, 1.5) if rng.random() < 0.85 else rng.uniform(1.5, 4.0)


def _defocus_sign(key: tuple[object, ...]) -> float:
    return 1.0 if _rng(*key, "defocus sign").random() < 0.5 else -1.0


def _frame_conditions(
    config: SimulationConfig,
    barcode: str,
    key: tuple[object, ...],
    well_offset: tuple[float, float] | None,
    blur_error_um: float = 0.0,
) -> _FrameConditions:
    """Conditions of the frame identified by ``key``; ``well_offset`` is the stage position
    relative to the well centre (um), None between wells; ``blur_error_um`` is the focus error
    (z - surface) times the objective's blur growth per um (0 on the surface)."""
    rng = _rng(*key, "conditions")
    drawn = _draw_defocus(rng)
    # The cells lie sign * drawn / k from the surface: on the surface the blur is the drawn one.
    defocus = abs(blur_error_um - _defocus_sign(key) * drawn)
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


@dataclass(frozen=True)
class _Scene:
    """What every channel of one field shares: the cells' phase image (before any blur), the
    exposure conditions, where pixel (0, 0) lies in the well (None between wells) and the
    frame's seeding key."""

    phase: FloatArray  # (H, W) float32, not blurred
    cond: _FrameConditions
    origin: tuple[float, float] | None
    pixel_um: float
    key: tuple[object, ...]


def _frame_key(
    config: SimulationConfig,
    barcode: str,
    well: str | None,
    x_um: float,
    y_um: float,
    objective: str,
) -> tuple[object, ...]:
    """The seeding key of the field at (x_um, y_um): focus, exposure and noise draw from it."""
    # Positions to the nm, with -0.0 folded into 0.0, so that equal positions share a frame.
    position = (f"{round(x_um, 3) + 0.0:.3f}", f"{round(y_um, 3) + 0.0:.3f}")
    return (config.seed, barcode, well, *position, objective)


def _scene(
    config: SimulationConfig,
    barcode: str,
    well: str | None,
    x_um: float,
    y_um: float,
    objective: str,
    z_um: float | None = None,
) -> _Scene:
    """Draw the cells in view and the conditions of one field; ``well`` is a canonical well
    name, or None for the plate between wells; ``z_um`` is the focus drive position, None: on
    the focus surface."""
    shape = config.camera_shape
    height, width = shape
    pixel_um = pixel_size_um(config, objective)
    key = _frame_key(config, barcode, well, x_um, y_um, objective)
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
    blur_error = 0.0
    if z_um is not None:
        focus_error = float(z_um) - surface_z_um(config, barcode, x_um, y_um)
        blur_error = config.blur_per_um(objective) * focus_error
    cond = _frame_conditions(config, barcode, key, well_offset, blur_error)
    return _Scene(phase, cond, origin, pixel_um, key)


def _expose_channel(
    config: SimulationConfig, scene: _Scene, channel: SimChannel = PHASE
) -> npt.NDArray[np.uint16]:
    """One exposure of ``scene`` through ``channel``: (H, W) uint16, values < 2**bit_depth.

    The "Phase" channel takes exactly the path (and the noise) of the simulator's single frame.
    """
    cond, pixel_um = scene.cond, scene.pixel_um
    dz = float(channel.focus_offset_um)
    blur_um = math.hypot(_PSF_SIGMA_UM, cond.defocus_um)
    if dz != 0.0:  # not folded into one hypot: Phase must stay bit-identical to the 1-channel frame
        blur_um = math.hypot(blur_um, _DEFOCUS_BLUR_PER_UM * dz)
    phase = _blur(scene.phase, blur_um / pixel_um)
    if channel.contrast == "phase":
        # Phase contrast as a high-pass: what the phase ring's low-pass removes is the halo
        # (where negative) and the shade-off of large flat objects (where positive).
        contrast = phase - np.float32(_SHADE_OFF) * _blur(phase, _HALO_SIGMA_UM / pixel_um)
        # Halos come out brighter than thin cytoplasm comes out dark.
        darkening = np.where(contrast > 0, np.float32(0.75) * contrast, np.float32(2.0) * contrast)
    else:
        # No ring: unstained cells barely absorb; the field's focus drift defocuses it further.
        darkening = np.float32(_ABSORPTION) * phase
        dz += cond.defocus_um
    if dz != 0.0:
        # Transport of intensity: a defocused phase object shows -dz * laplacian(phase).
        laplacian = cv2.Laplacian(phase, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
        darkening = darkening + np.float32(_TIE_GAIN_UM * dz / pixel_um**2) * laplacian
    flat, xn, yn = _flat_field(config.seed, config.camera_shape)
    gx, gy = cond.gradient
    illumination = flat * (1.0 + np.float32(gx) * xn + np.float32(gy) * yn)
    if scene.origin is not None:
        shadow = _wall_shadow(config, scene.origin, pixel_um, config.camera_shape)
        illumination = illumination * shadow
    relative = illumination * np.maximum(1.0 - darkening, np.float32(0.05))
    # Each exposure has its own camera noise; Phase keeps the single frame's.
    key = scene.key if channel == PHASE else (*scene.key, channel.name)
    return _expose(config, relative, cond, key)


def _render(
    config: SimulationConfig,
    barcode: str,
    well: str | None,
    x_um: float,
    y_um: float,
    objective: str,
    channel: SimChannel = PHASE,
    z_um: float | None = None,
) -> npt.NDArray[np.uint16]:
    """Render one frame: ``well`` is a canonical well name, or None for the plate between wells;
    ``z_um`` the focus drive position (None: on the focus surface).

    Returns (H, W) uint16, values < 2**bit_depth.
    """
    scene = _scene(config, barcode, well, x_um, y_um, objective, z_um)
    return _expose_channel(config, scene, channel)


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
    config: SimulationConfig,
    barcode: str,
    well: str,
    x_um: float,
    y_um: float,
    objective: str,
    *,
    channels: Sequence[str] = (),
    z_um: float | None = None,
) -> npt.NDArray[np.uint16]:
    """What the camera sees with the stage at (x_um, y_um) (stage coordinates, um).

    Renders the cells of ``well`` (clipped to its diameter) around that position at the pixel
    size of ``objective``. Bit-identical for identical arguments.

    Args:
        channels: names of :data:`hardware.sim.channels.SIM_CHANNELS` to expose, one after the
            other at this position (co-registered); empty: the single phase-contrast frame.
        z_um: focus drive position, um: the defocus blur sigma grows by
            :meth:`SimulationConfig.blur_per_um` per um between ``z_um`` and the field's cells
            (see :mod:`hardware.sim.focus`). None: exposed on the plate's focus surface (where
            the reflection autofocus locks), as every frame was before the focus drive mattered.

    Returns:
        (H, W) uint16 frame, H, W = ``config.camera_shape``, values < 2**``config.bit_depth``;
        with ``channels``, (H, W, C) uint16, channel c through ``channels[c]``, each plane
        bit-identical to what :class:`hardware.sim.SimulatedMicroscope` snaps in that channel.
    """
    scene = _scene(config, barcode, config.plate.normalise(well), x_um, y_um, objective, z_um)
    if not channels:
        return _expose_channel(config, scene)
    planes = [_expose_channel(config, scene, channel) for channel in check_sim_channels(channels)]
    return np.ascontiguousarray(np.stack(planes, axis=-1))
