"""The HSM cube (band bank, weighted-mean filter, SSN mean) as an ONNX graph: an experiment.

Not used by serving. The question it answers (see docs/hsm.md and benchmarks/pipeline.py): could
the whole feature construction run inside ONNX Runtime, next to the classifier, e.g. on a GPU?

The graph mirrors :mod:`models.pipeline` operation for operation:

* bands: fixed convolutions with the kernels OpenCV uses (Gaussian ``getGaussianKernel``, Sobel
  scaled by 1/8, 3 x 3 Laplacian), reflect-101 padding (PyTorch's ``reflect``), the fixed
  per-band offset and scale;
* weighted-mean filter: the separable [1, 2, 1] / 4 kernel;
* SSN: ``unfold`` of the WS x WS window with the columns put in tie-break order (spatially
  closer first, then dy, then dx), SSCD = ||x_i - x_j|| / sqrt(B) + lambda * spatial, ``topk``
  of the K smallest, a ``gather`` of the chosen vectors and the mean with the centre pixel.
  ONNX ``TopK`` prefers the lower index among equal values, so with that column order exact
  ties resolve as the numpy path resolves them.

It is not bit-identical to the numpy path: convolutions and ``ReduceSum`` add in a different
order than OpenCV and numpy, so distances differ in the last bits and a few near-tied neighbour
choices flip. :func:`parity` measures how many.

PyTorch is needed only to build and export the graph (:func:`export_hsm_onnx`); running it needs
onnxruntime and numpy only (:class:`HsmOnnxRunner`).

Input ``normalised`` (N, 1, H, W) float32, grey levels 0..255 (the uint8 output of
:func:`models.pipeline.normalise`). Outputs ``features`` (N, B, H, W) float32 and ``neighbours``
(N, K, H, W) int64: indices into :func:`models.pipeline._window_offsets` order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from models import pipeline as pl
from models.pipeline import PipelineConfig

if TYPE_CHECKING:
    from torch import nn

__all__ = ["HsmOnnxRunner", "HsmParity", "build_hsm_module", "export_hsm_onnx", "parity"]

OPSET = 17


def _gaussian_taps(sigma: float) -> npt.NDArray[np.float32]:
    """The 1-D kernel ``pipeline._gauss`` gets from OpenCV for this sigma."""
    ksize = 2 * math.ceil(3.0 * sigma) + 1
    return np.asarray(cv2.getGaussianKernel(ksize, sigma), np.float64).ravel().astype(np.float32)


def build_hsm_module(config: PipelineConfig) -> nn.Module:
    """A PyTorch module computing the model features of ``config`` from normalised images.

    Needs PyTorch. ``forward(normalised (N, 1, H, W)) -> (features (N, B, H, W), neighbours
    (N, K, H, W) int64)``; for ws == 1 ``neighbours`` is an empty (N, 0, H, W) tensor.

    Raises:
        ValueError: for a pipeline whose features are not the filter bank of one normalised
            grey image (``band_source="channels"`` or ``intensity="standardise"``): this graph
            would compute other features than serving does.
    """
    if config.band_source != "filter_bank" or config.intensity != "mean_v_clahe":
        raise ValueError(
            "the HSM graph computes filter-bank bands of the normalised grey image only; got "
            f"band_source={config.band_source!r}, intensity={config.intensity!r}"
        )
    return _module_class()(config)


@functools.cache
def _module_class() -> type[nn.Module]:
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812  (the conventional alias)

    def reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
        return F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad > 0 else x

    class HSM(nn.Module):
        # Fixed kernels, registered as buffers (they travel into the graph as constants).
        sobel: torch.Tensor
        laplacian: torch.Tensor
        wmf: torch.Tensor
        columns: torch.Tensor
        terms: torch.Tensor

        def __init__(self, config: PipelineConfig) -> None:
            super().__init__()
            self.config = config
            self.sizes: dict[str, int] = {"wmf": 3}
            for sigma in (1.0, 2.0, 4.0):
                taps = torch.from_numpy(_gaussian_taps(sigma))
                self.register_buffer(f"gauss_{int(sigma)}", taps)
                self.sizes[f"gauss_{int(sigma)}"] = int(taps.shape[0])
            sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) * 0.125
            self.register_buffer("sobel", torch.from_numpy(np.stack([sobel_x, sobel_x.T])[:, None]))
            lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
            self.register_buffer("laplacian", torch.from_numpy(lap)[None, None])
            wmf = torch.tensor([0.25, 0.5, 0.25])
            self.register_buffer("wmf", wmf)
            offsets, spatial = pl._window_offsets(config.ws) if config.ws > 1 else ((), ())
            r = config.ws // 2
            # unfold enumerates the window in raster order; pick its columns in tie order.
            raster = [(dy + r) * config.ws + (dx + r) for dy, dx in offsets]
            self.register_buffer("columns", torch.tensor(raster, dtype=torch.long))
            terms = [np.float32(config.spatial_weight * s) for s in spatial]
            self.register_buffer("terms", torch.tensor(terms, dtype=torch.float32)[None, :, None])

        def separable(self, x: torch.Tensor, name: str, channels: int) -> torch.Tensor:
            """Per-channel separable filter of (N, C, H, W), reflect-101 border.

            Kernel shapes and padding are Python ints (not tensor sizes), so that the exporter
            sees static convolution kernels.
            """
            taps: torch.Tensor = getattr(self, name)
            size = self.sizes[name]
            x = reflect(x, size // 2)
            row = taps.view(1, 1, 1, size).expand(channels, 1, 1, size)
            col = taps.view(1, 1, size, 1).expand(channels, 1, size, 1)
            return F.conv2d(F.conv2d(x, row, groups=channels), col, groups=channels)

        def gauss(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
            return self.separable(x, f"gauss_{int(sigma)}", 1)

        def band(self, name: str, f: torch.Tensor) -> torch.Tensor:
            if name == "intensity":
                return f
            if name.startswith("gauss_"):
                return self.gauss(f, float(name.split("_")[1]))
            if name == "gradient":
                g = F.conv2d(reflect(f, 1), self.sobel)
                return torch.sqrt(g[:, :1] * g[:, :1] + g[:, 1:] * g[:, 1:])
            if name.startswith("log_"):
                sigma = float(name.split("_")[1])
                lap = F.conv2d(reflect(self.gauss(f, sigma), 1), self.laplacian)
                return lap * (sigma * sigma)
            if name == "local_std":
                mu, mu2 = self.gauss(f, 2.0), self.gauss(f * f, 2.0)
                return torch.sqrt(torch.clamp(mu2 - mu * mu, min=0.0))
            if name == "halo_dog":
                return self.gauss(f, 1.0) - self.gauss(f, 4.0)
            raise ValueError(f"band {name!r} has no ONNX version")

        def forward(self, normalised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            config = self.config
            planes = []
            for name in config.bands:
                spec = pl._BANDS[name]
                planes.append((self.band(name, normalised) - spec.offset) * (1.0 / spec.scale))
            x = self.separable(torch.cat(planes, dim=1), "wmf", len(config.bands))
            n, b, h, w = x.shape
            if config.ws == 1:
                return x, torch.zeros((n, 0, h, w), dtype=torch.long)
            r = config.ws // 2
            # (N, B, WS*WS, H*W) -> the n_offsets neighbours in tie order.
            window = F.unfold(reflect(x, r), config.ws).view(n, b, config.ws * config.ws, h * w)
            neighbours = window.index_select(2, self.columns)
            centre = x.reshape(n, b, 1, h * w)
            sq = (neighbours - centre) ** 2
            dist = torch.sqrt(sq.sum(dim=1)) * (1.0 / math.sqrt(b)) + self.terms
            _, index = torch.topk(dist, config.k, dim=1, largest=False, sorted=True)
            chosen = torch.gather(neighbours, 2, index[:, None].expand(n, b, config.k, h * w))
            mean = (centre[:, :, 0] + chosen.sum(dim=2)) * (1.0 / (config.k + 1))
            return mean.view(n, b, h, w), index.view(n, config.k, h, w)

    return HSM


def export_hsm_onnx(config: PipelineConfig, path: Path) -> Path:
    """Export :func:`build_hsm_module` for ``config`` (dynamic batch, fixed H x W). Needs torch."""
    import onnx
    import torch

    module = build_hsm_module(config).eval()
    example = torch.zeros((1, 1, config.height, config.width), dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter (see onnx_export.py)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["normalised"],
            output_names=["features", "neighbours"],
            dynamic_axes={
                "normalised": {0: "batch"},
                "features": {0: "batch"},
                "neighbours": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


class HsmOnnxRunner:
    """Runs an exported HSM graph with onnxruntime (no torch).

    Args:
        path: the ``.onnx`` file from :func:`export_hsm_onnx`.
        providers: onnxruntime execution providers, in priority order.
        threads: intra-op threads (0 = onnxruntime's default).
    """

    def __init__(
        self,
        path: Path,
        *,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session: Any = ort.InferenceSession(
            str(path), sess_options=options, providers=list(providers)
        )

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run(
        self, normalised: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(N, H, W) or (H, W) uint8 -> features (N, B, H, W), neighbours (N, K, H, W)."""
        batch = normalised[None] if normalised.ndim == 2 else normalised
        features, neighbours = self.session.run(
            None, {"normalised": batch[:, None].astype(np.float32)}
        )
        return np.asarray(features, np.float32), np.asarray(neighbours, np.int64)


@dataclass(frozen=True)
class HsmParity:
    """ONNX graph vs the numpy pipeline on the same normalised images."""

    max_abs_diff: float  # features, over all pixels and bands
    band_max_abs_diff: float  # the (B, H, W) band cube before SSN; isolates the convolutions
    pixels_with_other_neighbours: float  # fraction of pixels whose K-neighbour set differs
    feature_scale: float  # max |feature| of the numpy path, for scale

    def to_dict(self) -> dict[str, float]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "band_max_abs_diff": self.band_max_abs_diff,
            "pixels_with_other_neighbours": self.pixels_with_other_neighbours,
            "feature_scale": self.feature_scale,
        }


def parity(
    runner: HsmOnnxRunner, normalised: list[npt.NDArray[np.uint8]], config: PipelineConfig
) -> HsmParity:
    """Compare the graph with :mod:`models.pipeline` on each normalised (H, W) uint8 image."""
    max_diff = band_diff = scale = 0.0
    differ = total = 0
    for image in normalised:
        x = pl._wmf_planes(pl._band_planes(image, config))
        got, index = runner.run(image)
        if config.ws > 1:
            masks = np.zeros((config.ws * config.ws - 1, *image.shape), np.bool_)
            lam = config.spatial_weight
            want = pl._ssn_mean(x, config.ws, config.k, lam, masks_out=masks, backend="numpy")
            chosen = np.zeros_like(masks)
            np.put_along_axis(chosen, index[0], True, axis=0)
            differ += int((chosen != masks).any(axis=0).sum())
            total += image.size
        else:
            want = x
        max_diff = max(max_diff, float(np.abs(got[0] - want).max()))
        scale = max(scale, float(np.abs(want).max()))
        band_diff = max(band_diff, _band_difference(image, config))
    return HsmParity(max_diff, band_diff, differ / total if total else 0.0, scale)


def _band_difference(image: npt.NDArray[np.uint8], config: PipelineConfig) -> float:
    """Max |band| difference between the torch module (CPU) and numpy, before SSN; needs torch."""
    try:
        import torch
    except ImportError:
        return float("nan")
    module = build_hsm_module(dataclasses.replace(config, ws=1))
    with torch.no_grad():
        bands, _ = module(torch.from_numpy(image.astype(np.float32))[None, None])
    want = pl._wmf_planes(pl._band_planes(image, config))
    return float(np.abs(bands[0].numpy() - want).max())
