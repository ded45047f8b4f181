"""Image QC, normalisation and HSM feature construction shared by training and serving.

One raw camera frame becomes exactly one model input here, and both the training jobs and the
service call :func:`prepare` with the configuration stored in the model card, so there is no
train/serve skew. Only numpy and OpenCV are used: the service must run without PyTorch.

The data path (reference paper: Liu et al. 2023, sections 2.2 and 2.4.1)::

    frame (H0, W0[, C]) uint8/uint16/float
      -> to_uint8            8-bit, like the paper's "8-bit grayscale images"
      -> quality_check       mean HSV V > 240 => excluded ("overexposed"); nearly black => excluded
      -> normalise           mean V -> ~130, resize to 220 x 300, median denoise, contrast
      -> focus score         variance of the Laplacian of the normalised image, and the
                             focus ratio of the 8-bit frame (normalise.focus_ratio) (flag)
      -> foreground_mask     PHANTAST-style local contrast -> cell mask, confluence
      -> band_stack          (H, W, B) "spectral" bands from a fixed filter bank
                             (or channel_band_stack: one band per acquired channel, B = C)
      -> ssn_features        weighted-mean filter + spatial-spectral neighbour (SSN) mean
      -> features            (B, H, W) float32

Our reading of what the paper leaves open (the model card records the config, and
:data:`FEATURE_VERSION` identifies the code-level constants below):

* **Size.** "220 x 300" is read as 220 rows x 300 columns (landscape, like camera frames: a
  528 x 720 frame keeps its aspect ratio exactly). Frames of another aspect ratio are stretched,
  not cropped, so the whole field is always seen.
* **Colour.** Phase-contrast frames are grey; for a grey frame HSV V equals the grey level. A
  3-channel frame is taken as OpenCV BGR: QC uses the HSV V channel (as in the paper), the rest
  of the path uses the luma image from ``cv2.COLOR_BGR2GRAY``. (H, W, 1) is treated as grey.
  Other channel counts are rejected unless ``band_source="channels"`` (next point).
* **Bands.** The paper never says what the "spectral" bands of an 8-bit grey image are. We derive
  them from the normalised image with a fixed filter bank (see :data:`BAND_NAMES`); each band is
  mapped to roughly zero mean and unit scale by FIXED constants (no per-image statistics), so a
  given pixel value always means the same thing to the network.
* **Bands from acquired channels.** With ``PipelineConfig(band_source="channels")`` a frame
  (H, W, C), C >= 2, holds C acquired channels (illumination wavelengths or focal planes; C == 3
  is then NOT BGR colour) and gives B = C bands, one per channel: each channel is normalised on
  its own exactly like a grey frame and scaled like the "intensity" band
  (:func:`channel_band_stack`). QC uses the mean over all channels (the mean of the channel-mean
  image), not the brightest channel; the focus score, the foreground mask and the confluence come
  from the channel-mean image, normalised like a grey frame. The weighted-mean filter and the SSN
  step are unchanged. ``bands`` (the filter bank) is then unused; the network's ``in_bands`` is C
  (:meth:`PipelineConfig.band_names`).
* **SSCD.** For pixel i and every j != i in the WS x WS window centred on i::

      d(i, j) = ||x_i - x_j||_2 / sqrt(B) + lambda * ||p_i - p_j||_2 / (sqrt(2) * (WS // 2))

  where x are the band vectors after a 3 x 3 binomial weighted-mean filter ([1, 2, 1] (x)
  [1, 2, 1] / 16, the "weighted-mean filter" step) and p are pixel coordinates, so the spatial
  term is in [0, lambda]. The K smallest d are the SSNs of i. The feature of i is the mean of the
  filtered band vectors of i and its K SSNs (an edge-preserving smoother: neighbours across an
  edge are spectrally far and are not averaged in). Borders are padded by reflection
  (``cv2.BORDER_REFLECT_101``), so every pixel has a full window. Ties at the K-th distance are
  broken in favour of the spatially closer offset, then raster order of the offset (dy, then dx),
  which is deterministic and independent of numpy's selection algorithm. WS = 1 switches the SSN
  step off: the features are then the filtered bands.

Speed: :func:`ssn_features` (and :func:`prepare`) run a fast path that performs the same float32
operations in the same order as :func:`ssn_features_reference`, the plain vectorised version kept
as an oracle, and is therefore bit-identical to it: numpy + OpenCV by default, or one fused numba
kernel where the optional ``numba`` package is installed (``MSCREEN_SSN_NUMBA=0`` switches it
off). docs/hsm.md explains the reading of the paper; docs/benchmarks.md has the timings.

The package, one job per module (:func:`prepare` is the entry point; the names below are
re-exported here, so ``from models.pipeline import ...`` is the import to use)::

    config.py       PipelineConfig, FEATURE_VERSION, the contrast / band-source literals
    qc.py           to_uint8 (bit-depth table), mean_v, grey / channel checks, quality_check,
                    QCReport
    normalise.py    normalise, focus_score, focus_ratio, foreground_mask
    filter_bank.py  the fixed filters, offsets and scales of the bands (BAND_NAMES)
    bands.py        band_stack, channel_band_stack
    ssn/            weighted_mean_filter, ssn_features, ssn_features_reference; the selection
                    network, the numpy fast path and the optional numba kernel
    prepare.py      prepare, PreparedImage
    oracle.py       per-pixel loop oracles for the tests and benchmarks (not imported here)
"""

from __future__ import annotations

# The private names are used outside the package: models/hsm_onnx.py and scripts/hsm_figure.py
# mirror the HSM step by step, benchmarks/gpu_check.py asks for the numba kernel. They stay
# importable from here; new code should import them from their modules.
from .bands import _band_planes as _band_planes
from .bands import band_stack, channel_band_stack
from .config import FEATURE_VERSION, BandSource, ContrastMethod, PipelineConfig
from .filter_bank import _BANDS as _BANDS
from .filter_bank import BAND_NAMES
from .normalise import focus_ratio, focus_score, foreground_mask, normalise
from .prepare import PreparedImage, prepare
from .qc import QCReport, mean_v, quality_check, to_uint8
from .ssn import SSNBackend, ssn_features, ssn_features_reference, weighted_mean_filter
from .ssn import _ssn_mean as _ssn_mean
from .ssn import _wmf_planes as _wmf_planes
from .ssn.numba_kernel import _numba_kernel as _numba_kernel
from .ssn.reference import _window_offsets as _window_offsets

__all__ = [
    "BAND_NAMES",
    "FEATURE_VERSION",
    "BandSource",
    "ContrastMethod",
    "PipelineConfig",
    "PreparedImage",
    "QCReport",
    "SSNBackend",
    "band_stack",
    "channel_band_stack",
    "focus_ratio",
    "focus_score",
    "foreground_mask",
    "mean_v",
    "normalise",
    "prepare",
    "quality_check",
    "ssn_features",
    "ssn_features_reference",
    "to_uint8",
    "weighted_mean_filter",
]
