"""Draw a labelled montage of simulated phase-contrast frames next to real brightfield cells.

The figure (one PNG, 8-bit grey, everything at 1:1 camera pixels unless a panel says otherwise):

* a 2 x 2 grid: rows = a typical high- and a typical low-functionality well, columns = the same
  stage position at 40x and at 100x (total magnification). Frames are converted for display with
  :func:`models.pipeline.to_uint8`, the same linear 12-bit -> 8-bit mapping the pipeline uses,
  so brightness and contrast are what the pipeline sees before normalisation;
* a row of real brightfield single-cell crops from the CellTypeClassification data set (both
  folders, labelled with the folder name), skipped with a warning if the data set is absent;
* a row of frame faults: one field at normal exposure and overexposed, and one field in focus and
  defocused (the defocused frame is the lowest focus score among nearby stage positions).

The real data set is only read, never needed: the product does not depend on it.

Usage::

    .venv/bin/python scripts/simulator_montage.py \
        --real-data ../shared/data/celltype-brightfield --out docs/images/simulator_montage.png
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from hardware.plate import SBS_96
from hardware.sim import (
    SimulationConfig,
    WellTruth,
    pixel_size_um,
    plate_truth,
    render_field,
)
from models.pipeline import PipelineConfig, focus_score, normalise, quality_check, to_uint8

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "celltype-brightfield"
DEFAULT_OUT = REPO_ROOT / "docs" / "images" / "simulator_montage.png"
BARCODE = "SIM-MONTAGE-0001"

GAP = 8  # pixels between panels
BACKGROUND = 255  # page colour (white)
FONT = cv2.FONT_HERSHEY_SIMPLEX
REAL_PER_CLASS = 3
DEFOCUS_CANDIDATES = 40  # nearby stage positions searched for a defocused frame
SIZE_LIMIT_BYTES = 1_500_000


# ----------------------------------------------------------------------------------------------
# Drawing helpers


def label(image: U8, lines: Sequence[str], *, scale: float = 0.5, corner: str = "tl") -> U8:
    """Write ``lines`` of text in a dark box in one corner of a grey (H, W) uint8 image.

    ``corner`` is "tl" (top left) or "bl" (bottom left). Returns a copy.
    """
    out = image.copy()
    thickness = 1
    sizes = [cv2.getTextSize(line, FONT, scale, thickness) for line in lines]
    line_h = max(h + base for (_, h), base in sizes) + 4
    box_w = max(w for (w, _), _ in sizes) + 10
    box_h = line_h * len(lines) + 4
    y0 = 0 if corner == "tl" else out.shape[0] - box_h
    # A translucent dark box keeps the text readable over bright halos.
    region = out[y0 : y0 + box_h, 0:box_w].astype(np.float32)
    out[y0 : y0 + box_h, 0:box_w] = (region * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        baseline = y0 + (i + 1) * line_h - 2
        cv2.putText(out, line, (5, baseline), FONT, scale, 255, thickness, cv2.LINE_AA)
    return out


def scale_bar(image: U8, pixel_um: float, length_um: float) -> U8:
    """Draw a white scale bar of ``length_um`` (at ``pixel_um`` um per pixel) bottom right."""
    out = image.copy()
    h, w = out.shape
    length_px = round(length_um / pixel_um)
    x1, y = w - 12, h - 14
    x0 = x1 - length_px
    cv2.rectangle(out, (x0 - 6, y - 22), (x1 + 6, y + 8), 0, -1)
    cv2.rectangle(out, (x0, y), (x1, y + 3), 255, -1)
    text = f"{length_um:g} um"
    (tw, _), _ = cv2.getTextSize(text, FONT, 0.45, 1)
    cv2.putText(out, text, (x0 + (length_px - tw) // 2, y - 6), FONT, 0.45, 255, 1, cv2.LINE_AA)
    return out


def outline(image: U8) -> U8:
    """A copy with a 1-pixel black frame, so that a white (overexposed) panel stays visible."""
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), 0, 1)
    return out


def hstack(panels: Sequence[U8], gap: int = GAP) -> U8:
    """Panels side by side, top-aligned, ``gap`` white pixels apart, each outlined."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.full((height, width), BACKGROUND, np.uint8)
    x = 0
    for p in panels:
        out[: p.shape[0], x : x + p.shape[1]] = outline(p)
        x += p.shape[1] + gap
    return out


def vstack(rows: Sequence[U8], gap: int = GAP) -> U8:
    """Rows one below the other, left-aligned, ``gap`` white pixels apart."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + gap * (len(rows) - 1)
    out = np.full((height, width), BACKGROUND, np.uint8)
    y = 0
    for r in rows:
        out[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + gap
    return out


def heading(text: str, width: int, *, scale: float = 0.6, height: int = 30) -> U8:
    """A white strip of ``width`` x ``height`` with black text."""
    out = np.full((height, width), BACKGROUND, np.uint8)
    cv2.putText(out, text, (4, height - 9), FONT, scale, 0, 1, cv2.LINE_AA)
    return out


def pad(image: U8, margin: int) -> U8:
    """White margin round an image."""
    bordered = cv2.copyMakeBorder(
        image, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=BACKGROUND
    )
    return np.asarray(bordered, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Content


def typical_well(truth: dict[str, WellTruth], label_: str) -> str:
    """The well of class ``label_`` (rendered as that class: no label-noise well) whose
    senescent fraction is the class median, so the picture is typical, not cherry-picked."""
    wells = [w for w, t in truth.items() if t.label == label_ and t.morphology == label_]
    median = statistics.median(truth[w].senescent_fraction for w in wells)
    return min(wells, key=lambda w: (abs(truth[w].senescent_fraction - median), w))


def frame8(config: SimulationConfig, well: str, dx: float, dy: float, objective: str) -> U8:
    """The frame at ``(dx, dy)`` um from the well centre as 8-bit, via the pipeline's mapping."""
    cx, cy = SBS_96.well_center_um(well)
    raw = render_field(config, BARCODE, well, cx + dx, cy + dy, objective)
    return to_uint8(raw, config.bit_depth)


def well_panels(config: SimulationConfig, truth: dict[str, WellTruth], label_: str) -> list[U8]:
    """40x and 100x panels of the typical well of one class, labelled."""
    well = typical_well(truth, label_)
    t = truth[well]
    bars = {"40x": 100.0, "100x": 50.0}
    panels = []
    for objective in ("40x", "100x"):
        px = pixel_size_um(config, objective)
        h, w = config.camera_shape
        image = frame8(config, well, 0.0, 0.0, objective)
        logger.info("%s well %s at %s: mean 8-bit %.1f", label_, well, objective, image.mean())
        image = label(
            image,
            [
                f"{label_.upper()} functionality - well {well}, {objective} total",
                f"FCT CD73 {t.cd73_pct:.1f} %  CD90 {t.cd90_pct:.1f} %",
                f"senescent {t.senescent_fraction:.2f}  confluence {t.confluence:.2f}",
                f"{px:g} um/px, field {w * px:.0f} x {h * px:.0f} um",
            ],
        )
        panels.append(scale_bar(image, px, bars[objective]))
    return panels


def real_panels(real_dir: Path, rng: np.random.Generator) -> list[U8]:
    """``REAL_PER_CLASS`` crops from each class folder, labelled with folder and file name."""
    panels = []
    for folder in sorted(p for p in real_dir.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        if not files:
            logger.warning("no .jpg files in %s", folder)
            continue
        picks = rng.choice(len(files), size=min(REAL_PER_CLASS, len(files)), replace=False)
        for i in sorted(picks):
            read = cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE)
            if read is None:
                logger.warning("cannot read %s", files[i])
                continue
            image = np.asarray(read, dtype=np.uint8)
            stem = files[i].stem
            panels.append(label(image, [folder.name, stem[len(folder.name) + 1 :]], scale=0.42))
    return panels


def fault_panels(config: SimulationConfig, truth: dict[str, WellTruth]) -> list[U8]:
    """Normal vs overexposed (whole frame, half size) and in focus vs defocused (1:1 crops)."""
    pipeline = PipelineConfig()
    well = typical_well(truth, "high")
    h, w = config.camera_shape
    half = (w // 2, h // 2)

    # The same field with every frame overexposed: the cells and all other frame conditions are
    # drawn from the same random streams, only the exposure glitch differs.
    normal = frame8(config, well, 300.0, 0.0, "40x")
    blown = frame8(replace(config, overexposure_rate=1.0), well, 300.0, 0.0, "40x")
    panels = []
    for name, image in (("normal exposure", normal), ("overexposed", blown)):
        qc = quality_check(image, pipeline)
        verdict = f"QC excluded: {qc.reason}" if qc.excluded else f"QC ok: mean V {qc.mean_v:.1f}"
        small = np.asarray(cv2.resize(image, half, interpolation=cv2.INTER_AREA), np.uint8)
        panels.append(label(small, [f"40x {name} (half size)", verdict], scale=0.42))

    # Defocus is drawn per frame; positions a few nm apart show the same cells under fresh
    # frame conditions, so the lowest focus score among them is a defocused frame. Overexposed
    # frames are skipped: their flat white normalised image scores lowest of all.
    scored = []
    for k in range(DEFOCUS_CANDIDATES):
        image = frame8(config, well, -300.0 + 0.001 * k, 0.0, "40x")
        if quality_check(image, pipeline).excluded:
            continue
        scored.append((focus_score(normalise(image, pipeline)), k, image))
    scored.sort(key=lambda s: s[0])
    sharp, blurred = scored[len(scored) // 2], scored[0]
    y0, x0 = (h - half[1]) // 2, (w - half[0]) // 2
    for name, (score, _, image) in (("in focus", sharp), ("defocused", blurred)):
        crop = image[y0 : y0 + half[1], x0 : x0 + half[0]]
        flag = " (< 20: flagged)" if score < pipeline.min_focus else ""
        panels.append(
            label(crop, [f"40x {name} (1:1 crop)", f"focus score {score:.0f}{flag}"], scale=0.42)
        )
    logger.info("focus scores: median %.1f, lowest %.1f", sharp[0], blurred[0])
    return panels


def build_montage(config: SimulationConfig, real_dir: Path | None, seed: int) -> U8:
    """The whole figure as one (H, W) uint8 image."""
    truth = plate_truth(config, BARCODE)
    high = hstack(well_panels(config, truth, "high"))
    low = hstack(well_panels(config, truth, "low"))
    width = high.shape[1]
    rows = [
        heading(
            f"Simulated phase contrast, plate {BARCODE}, seed {config.seed}, difficulty "
            f"{config.difficulty:g}: 8-bit via models.pipeline.to_uint8, 1:1 camera pixels",
            width,
        ),
        high,
        low,
    ]
    if real_dir is not None:
        real = real_panels(real_dir, np.random.default_rng(seed))
        if real:
            rows += [
                heading(
                    "Real brightfield crops (CellTypeClassification, Yao et al. 2019; JPEG, "
                    "quantile-normalised): other modality and cell lines, 1:1 pixels, "
                    "pixel size not published",
                    width,
                    scale=0.5,
                ),
                hstack(real),
            ]
    rows += [
        heading("Frame faults the simulator injects (same high well, 40x)", width, scale=0.5),
        hstack(fault_panels(config, truth)),
    ]
    return pad(vstack(rows), GAP)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--real-data",
        type=Path,
        default=DEFAULT_REAL_DATA,
        help="folder of the real brightfield crops (class sub-folders); skipped if absent",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument(
        "--seed", type=int, default=0, help="simulation seed; also picks the real crops"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    real_dir: Path | None = args.real_data
    if real_dir is not None and not real_dir.is_dir():
        logger.warning("real data folder %s not found: montage without real cells", real_dir)
        real_dir = None

    montage = build_montage(SimulationConfig(seed=args.seed), real_dir, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", montage, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    args.out.write_bytes(encoded.tobytes())
    size = args.out.stat().st_size
    if size > SIZE_LIMIT_BYTES:
        logger.warning("%s is %.2f MB, above the %.1f MB aim", args.out, size / 1e6, 1.5)
    print(f"wrote {args.out} ({montage.shape[1]} x {montage.shape[0]} px, {size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
