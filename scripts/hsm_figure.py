"""Make docs/images/hsm.png: one simulated field through the HSM pipeline (see docs/hsm.md).

Rows: (1) raw 12-bit frame, normalised image, cell mask, the K spatial-spectral neighbours of one
edge pixel; (2) four bands after the weighted-mean filter; (3) the same bands after the SSN mean;
(4) 3x zooms of two bands before and after, where the edge-preserving smoothing shows. Each band
uses one colour scale for "before" and "after" (its 1st-99th percentile before SSN).

Usage::

    .venv/bin/python scripts/hsm_figure.py [--out docs/images/hsm.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from hardware.plate import SBS_96
from hardware.sim import SimulationConfig, render_field
from models import pipeline as pl
from models.pipeline import PipelineConfig

U8 = npt.NDArray[np.uint8]
ROOT = Path(__file__).resolve().parents[1]
PANEL_H, PANEL_W = 220, 300
TITLE_H = 22
SHOWN_BANDS = ("gradient", "log_2", "local_std", "halo_dog")
ZOOM = 3


def _titled(image: U8, title: str) -> U8:
    """(PANEL_H, PANEL_W, 3) BGR panel with a title strip above it."""
    if image.ndim == 2:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
    if image.shape[:2] != (PANEL_H, PANEL_W):
        image = np.asarray(
            cv2.resize(image, (PANEL_W, PANEL_H), interpolation=cv2.INTER_AREA), np.uint8
        )
    strip = np.full((TITLE_H, PANEL_W, 3), 255, np.uint8)
    cv2.putText(strip, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, image])


def _colour(values: np.ndarray, lo: float, hi: float) -> U8:
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    return np.asarray(cv2.applyColorMap(scaled, cv2.COLORMAP_VIRIDIS), np.uint8)


def _pick_field(sim: SimulationConfig, config: PipelineConfig) -> tuple[np.ndarray, str]:
    """A field at mid confluence (30-70 %) that passes QC, so cells and background both show."""
    for well in SBS_96.well_names:
        cx, cy = SBS_96.well_center_um(well)
        frame = render_field(sim, "FIG-0001", well, cx, cy, "40x")
        prepared = pl.prepare(frame, config, bit_depth=sim.bit_depth)
        if prepared.confluence_pct is not None and 30.0 <= prepared.confluence_pct <= 70.0:
            return frame, well
    raise RuntimeError("no field at mid confluence on the plate")


def _neighbour_panel(norm: U8, selected: np.ndarray, y: int, x: int, ws: int) -> U8:
    """The ws x ws window around (y, x), enlarged; centre outlined red, SSNs outlined green."""
    r = ws // 2
    cell = PANEL_H // ws
    padded = cv2.copyMakeBorder(norm, r, r, r, r, cv2.BORDER_REFLECT_101)
    window = padded[y : y + ws, x : x + ws]
    big = cv2.resize(window, (ws * cell, ws * cell), interpolation=cv2.INTER_NEAREST)
    big = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
    offsets, _ = pl._window_offsets(ws)
    for n, (dy, dx) in enumerate(offsets):
        if selected[n, y, x]:
            top, left = (dy + r) * cell, (dx + r) * cell
            cv2.rectangle(
                big, (left + 1, top + 1), (left + cell - 2, top + cell - 2), (0, 200, 0), 2
            )
    centre = r * cell
    cv2.rectangle(
        big, (centre + 1, centre + 1), (centre + cell - 2, centre + cell - 2), (0, 0, 255), 2
    )
    canvas = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    off = (PANEL_W - big.shape[1]) // 2
    canvas[: big.shape[0], off : off + big.shape[1]] = big
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/hsm.png")
    args = parser.parse_args()

    sim = SimulationConfig()
    config = PipelineConfig(bands=pl.BAND_NAMES)  # every band, to show a few of them
    frame, well = _pick_field(sim, PipelineConfig())
    frame8 = pl.to_uint8(frame, sim.bit_depth)
    norm = pl.normalise(frame8, config)
    mask = pl.foreground_mask(norm, config)
    planes = pl._band_planes(norm, config)
    filtered = pl._wmf_planes(planes)
    n_off = config.ws * config.ws - 1
    selected = np.zeros((n_off, *norm.shape), bool)
    ssn = pl._ssn_mean(
        filtered, config.ws, config.k, config.spatial_weight, masks_out=selected, backend="numpy"
    )

    # Row 1: the frame, its normalised version, the mask, one pixel's neighbours.
    overlay = np.asarray(cv2.cvtColor(norm, cv2.COLOR_GRAY2BGR), np.uint8)
    tint = overlay.copy()
    tint[mask] = (0.5 * tint[mask] + np.array([0, 110, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tint, contours, -1, (0, 255, 255), 1)
    gradient = filtered[config.bands.index("gradient")]
    inner = np.zeros_like(gradient)
    inner[40:-40, 60:-60] = gradient[40:-40, 60:-60]  # away from the border for a clean window
    y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
    cv2.circle(tint, (int(x), int(y)), 7, (0, 0, 255), 2)
    row1 = [
        _titled(frame8, f"raw 12-bit frame {frame.shape[0]}x{frame.shape[1]} (well {well})"),
        _titled(norm, "normalised: mean V 130, 220x300, CLAHE"),
        _titled(tint, f"cell mask, confluence {100 * mask.mean():.0f} %"),
        _titled(
            _neighbour_panel(norm, selected, int(y), int(x), config.ws),
            f"WS={config.ws}: the K={config.k} SSNs of the red pixel",
        ),
    ]

    # Rows 2-3: bands before and after the SSN mean, same colour scale per band.
    row2, row3, limits = [], [], {}
    for name in SHOWN_BANDS:
        i = config.bands.index(name)
        lo, hi = np.percentile(filtered[i], [1, 99])
        limits[name] = (float(lo), float(hi))
        row2.append(_titled(_colour(filtered[i], lo, hi), f"band {name} (filtered)"))
        row3.append(_titled(_colour(ssn[i], lo, hi), f"band {name} after SSN mean"))

    # Row 4: zooms around the chosen pixel.
    h, w = norm.shape
    zh, zw = PANEL_H // ZOOM, PANEL_W // ZOOM
    top = int(np.clip(y - zh // 2, 0, h - zh))
    left = int(np.clip(x - zw // 2, 0, w - zw))
    row4 = []
    for name in ("log_2", "halo_dog"):
        i = config.bands.index(name)
        lo, hi = limits[name]
        for label, cube in (("filtered", filtered), ("SSN", ssn)):
            crop = _colour(cube[i, top : top + zh, left : left + zw], lo, hi)
            crop = np.asarray(
                cv2.resize(crop, (zw * ZOOM, zh * ZOOM), interpolation=cv2.INTER_NEAREST), np.uint8
            )
            row4.append(_titled(crop, f"{name} {label}, {ZOOM}x zoom"))

    rows = [np.hstack(row) for row in (row1, row2, row3, row4)]
    # Dropping the two lowest bits per channel is invisible here and keeps the PNG under 1 MB.
    sheet = np.vstack(rows) & np.uint8(0xFC)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), well {well}")


if __name__ == "__main__":
    main()
