"""The pipeline configuration (saved in every model card) and the feature version."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

import numpy as np

from ._common import _is_int
from .filter_bank import _BANDS, BAND_NAMES

# Bump whenever a code-level constant that changes the features changes (band filters, band
# scaling, weighted-mean kernel, tie-breaking). Model cards should record it next to the config.
FEATURE_VERSION = "1"

ContrastMethod = Literal["clahe", "equalize", "none"]
_CONTRAST_METHODS: tuple[str, ...] = get_args(ContrastMethod)

# Where the HSM bands come from: the fixed filter bank on one grey image, or one band per acquired
# channel of a multi-channel frame.
BandSource = Literal["filter_bank", "channels"]
_BAND_SOURCES: tuple[str, ...] = get_args(BandSource)

# How the model features are scaled. "mean_v_clahe" (the paper's path, the default): the 8-bit
# view, mean V to target_mean_v, median, contrast, then the fixed-scale bands. "standardise": the
# raw frame at its full bit depth, resized (INTER_AREA) channel by channel, then per image and per
# channel (x - mean) / std; 12-16-bit detail and every acquired channel reach the network. QC and
# the cell mask use the 8-bit view in both cases.
IntensityMethod = Literal["mean_v_clahe", "standardise"]
_INTENSITY_METHODS: tuple[str, ...] = get_args(IntensityMethod)

# Fields that __post_init__ checks and normalises to float / to int.
_FLOAT_FIELDS: tuple[str, ...] = (
    "max_mean_v",
    "min_mean_v",
    "min_focus",
    "min_focus_ratio",
    "target_mean_v",
    "clahe_clip_limit",
    "spatial_weight",
    "mask_sigma",
    "mask_threshold",
)
_INT_FIELDS: tuple[str, ...] = (
    "height",
    "width",
    "median_ksize",
    "clahe_tile",
    "ws",
    "k",
    "mask_min_object_px",
    "mask_max_hole_px",
)


def _is_real(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float | np.floating) and math.isfinite(value))


def _raise_if_invalid(errors: list[str]) -> None:
    if errors:
        raise ValueError("invalid PipelineConfig: " + "; ".join(errors))


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that turns a camera frame into model input. Saved in every model card.

    Grey levels are 8-bit (0..255); sizes are pixels of the normalised image.
    """

    # QC (paper 2.2): frames whose mean HSV V (8-bit) > max_mean_v are excluded ("overexposed").
    max_mean_v: float = 240.0
    # Also exclude nearly black frames ("underexposed"): mean V < min_mean_v.
    min_mean_v: float = 10.0
    # Variance of the Laplacian of the normalised 8-bit image; below => flag "out_of_focus".
    # The score depends on the contrast method (CLAHE raises it), so recalibrate with it.
    min_focus: float = 20.0
    # Focus ratio (normalise.focus_ratio: cell detail over coarse structure, independent of how
    # many cells are in view) below which a frame is flagged "out_of_focus" too. 3.5 is the
    # threshold that best separates frames within the depth of field from those beyond it on
    # simulated 40x plates (Youden's J on calibration plates; ROC AUC 0.99+ on held-out plates,
    # benchmarks/focus_qc.py); 0 switches the check off. The variance of the Laplacian above
    # mostly measures confluence: even 20 um out of focus it stays far above 20.
    min_focus_ratio: float = 3.5
    exclude_out_of_focus: bool = False
    # Normalisation (paper 2.2 / 2.4.1). height x width = the paper's "220 x 300" (rows x cols).
    target_mean_v: float = 130.0
    height: int = 220
    width: int = 300
    median_ksize: int = 3  # odd; 1 switches the median filter off
    contrast: ContrastMethod = "clahe"
    clahe_clip_limit: float = 2.0
    clahe_tile: int = 8  # tiles per side
    # HSM (paper 2.4.1): bands from the filter bank, see BAND_NAMES. Unused (but still validated)
    # when band_source == "channels".
    bands: tuple[str, ...] = (
        "intensity",
        "gauss_2",
        "gradient",
        "log_2",
        "local_std",
        "halo_dog",
    )
    # "filter_bank": frames are grey (or BGR colour) and the bands come from the filter bank.
    # "channels": frames are (H, W, C), C >= 2 acquired channels, one band each (B = C); a 3-channel
    # frame is then NOT BGR colour. See channel_band_stack.
    band_source: BandSource = "filter_bank"
    # band_source == "channels" only: the expected channel count C (>= 2); frames with another
    # count are rejected. None accepts any C >= 2 (the network then fixes it at training time).
    channels: int | None = None
    # Feature scaling, see IntensityMethod. "standardise" gives one band per channel (a grey
    # frame: one band "standardised", a BGR frame: its luma; band_source "channels": C bands);
    # ``bands`` (the filter bank) is then unused, and ws must be 1 (no SSN step).
    intensity: IntensityMethod = "mean_v_clahe"
    ws: int = 9  # SSCD window size, odd in 1..13; 1 switches SSN off
    k: int = 12  # number of SSNs, 2..16, <= ws*ws - 1 when ws > 1
    spatial_weight: float = 0.5  # lambda in the SSCD
    # Foreground mask / confluence (PHANTAST-style local contrast).
    mask_sigma: float = 2.0  # Gaussian sigma of the local mean/std window, pixels
    mask_threshold: float = 0.05  # local std / local mean above which a pixel is "cell"
    mask_min_object_px: int = 30  # smaller connected foreground specks are removed
    mask_max_hole_px: int = 1000  # enclosed background holes up to this area are filled

    def __post_init__(self) -> None:
        # Types first (and numbers normalised): the range checks compare them as numbers.
        _raise_if_invalid(self._coerce_types())
        _raise_if_invalid(
            [
                *self._qc_errors(),
                *self._normalisation_errors(),
                *self._band_errors(),
                *self._ssn_errors(),
                *self._mask_errors(),
            ]
        )

    def _coerce_types(self) -> list[str]:
        """Check the field types; normalise numbers in place. Returns the errors."""
        errors: list[str] = []
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not _is_real(value):
                errors.append(f"{name} must be a finite number, got {value!r}")
            else:
                # Normalise ints (e.g. from JSON "240") so that round trips compare equal.
                object.__setattr__(self, name, float(value))
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not _is_int(value):
                errors.append(f"{name} must be an integer, got {value!r}")
            else:
                object.__setattr__(self, name, int(value))
        if not isinstance(self.exclude_out_of_focus, bool):
            errors.append(f"exclude_out_of_focus must be a bool, got {self.exclude_out_of_focus!r}")
        if self.channels is not None:
            if not _is_int(self.channels):
                errors.append(f"channels must be an integer or None, got {self.channels!r}")
            else:
                object.__setattr__(self, "channels", int(self.channels))
        return errors

    def _qc_errors(self) -> list[str]:
        errors: list[str] = []
        if not 0.0 < self.max_mean_v <= 255.0:
            errors.append(f"max_mean_v must be in (0, 255], got {self.max_mean_v}")
        if not 0.0 <= self.min_mean_v < self.max_mean_v:
            errors.append(
                f"min_mean_v must be in [0, max_mean_v={self.max_mean_v}), got {self.min_mean_v}"
            )
        if self.min_focus < 0.0:
            errors.append(f"min_focus must be >= 0, got {self.min_focus}")
        if self.min_focus_ratio < 0.0:
            errors.append(f"min_focus_ratio must be >= 0, got {self.min_focus_ratio}")
        return errors

    def _normalisation_errors(self) -> list[str]:
        errors: list[str] = []
        if not 0.0 < self.target_mean_v < 255.0:
            errors.append(f"target_mean_v must be in (0, 255), got {self.target_mean_v}")
        if self.height <= 0 or self.width <= 0:
            errors.append(f"height and width must be > 0, got {self.height} x {self.width}")
        if self.median_ksize < 1 or self.median_ksize % 2 == 0:
            errors.append(f"median_ksize must be odd and >= 1, got {self.median_ksize}")
        if self.contrast not in _CONTRAST_METHODS:
            errors.append(f"contrast must be one of {_CONTRAST_METHODS}, got {self.contrast!r}")
        if self.clahe_clip_limit <= 0.0:
            errors.append(f"clahe_clip_limit must be > 0, got {self.clahe_clip_limit}")
        if self.clahe_tile < 1:
            errors.append(f"clahe_tile must be >= 1, got {self.clahe_tile}")
        return errors

    def _band_errors(self) -> list[str]:
        """``bands`` (a list becomes a tuple, in place), ``band_source`` and ``channels``."""
        errors: list[str] = []
        bands = self.bands
        if isinstance(bands, str) or not isinstance(bands, tuple | list):
            errors.append(f"bands must be a sequence of band names, got {bands!r}")
        else:
            object.__setattr__(self, "bands", tuple(bands))
            if not self.bands:
                errors.append("bands must not be empty")
            unknown = [b for b in self.bands if b not in _BANDS]
            if unknown:
                errors.append(f"unknown band name(s) {unknown}; known: {list(BAND_NAMES)}")
            if len(set(self.bands)) != len(self.bands):
                errors.append(f"bands must be unique, got {list(self.bands)}")

        if self.intensity not in _INTENSITY_METHODS:
            errors.append(f"intensity must be one of {_INTENSITY_METHODS}, got {self.intensity!r}")
        elif self.intensity == "standardise" and self.ws != 1:
            errors.append(f"intensity='standardise' takes no SSN step: ws must be 1, got {self.ws}")
        if self.band_source not in _BAND_SOURCES:
            errors.append(f"band_source must be one of {_BAND_SOURCES}, got {self.band_source!r}")
        elif self.channels is not None:
            if self.band_source != "channels":
                errors.append(
                    f"channels={self.channels} applies to band_source='channels' only "
                    f"(band_source is {self.band_source!r})"
                )
            elif self.channels < 2:
                errors.append(f"channels must be >= 2, got {self.channels}")
        return errors

    def _ssn_errors(self) -> list[str]:
        errors: list[str] = []
        if not (1 <= self.ws <= 13 and self.ws % 2 == 1):
            errors.append(f"ws must be odd in 1..13, got {self.ws}")
        if not 2 <= self.k <= 16:
            errors.append(f"k must be in 2..16, got {self.k}")
        elif self.ws > 1 and self.k > self.ws * self.ws - 1:
            errors.append(
                f"k={self.k} exceeds the {self.ws * self.ws - 1} neighbours of a "
                f"{self.ws} x {self.ws} window"
            )
        if self.spatial_weight < 0.0:
            errors.append(f"spatial_weight must be >= 0, got {self.spatial_weight}")
        return errors

    def _mask_errors(self) -> list[str]:
        errors: list[str] = []
        if self.mask_sigma <= 0.0:
            errors.append(f"mask_sigma must be > 0, got {self.mask_sigma}")
        if self.mask_threshold <= 0.0:
            errors.append(f"mask_threshold must be > 0, got {self.mask_threshold}")
        if self.mask_min_object_px < 0 or self.mask_max_hole_px < 0:
            errors.append("mask_min_object_px and mask_max_hole_px must be >= 0")
        return errors

    def band_names(self, n_channels: int | None = None) -> tuple[str, ...]:
        """Names of the feature bands, in order; their number is the network's ``in_bands``.

        "filter_bank": ``bands`` (``("standardised",)`` with ``intensity="standardise"``).
        "channels": ``("channel_0", ..., "channel_{C-1}")`` with C =
        ``channels``, or ``n_channels`` (e.g. ``features.shape[1]`` of a training set) when
        ``channels`` is None.

        Raises:
            ValueError: "channels" with C unknown, or ``n_channels`` contradicting ``channels``.
        """
        if self.band_source == "filter_bank":
            return ("standardised",) if self.intensity == "standardise" else self.bands
        count = self.channels if self.channels is not None else n_channels
        if count is None:
            raise ValueError("band_source='channels' with channels=None: pass n_channels")
        if count < 2:
            raise ValueError(f"band_source='channels' needs C >= 2 channels, got {count}")
        if n_channels is not None and n_channels != count:
            raise ValueError(f"n_channels={n_channels} but the config expects {count} channels")
        return tuple(f"channel_{i}" for i in range(count))

    def to_dict(self) -> dict[str, object]:
        """JSON-safe dict (tuples become lists); inverse of :meth:`from_dict`."""
        data = asdict(self)
        data["bands"] = list(self.bands)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PipelineConfig:
        """Build from :meth:`to_dict` output (e.g. a model card); missing keys take defaults.

        Raises:
            ValueError: on unknown keys (a card written by a newer pipeline must not be silently
                half-applied) or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown PipelineConfig key(s) {unknown}; known keys: {sorted(known)}"
            )
        kwargs = dict(data)
        if "bands" in kwargs and isinstance(kwargs["bands"], list):
            kwargs["bands"] = tuple(kwargs["bands"])
        return cls(**kwargs)  # type: ignore[arg-type]
