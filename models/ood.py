"""Out-of-distribution guard: how unlike the training fields a prepared field is.

A CNN trained on one kind of image answers with confidence on any image, including a blank
well, a field at the other objective or another cell type. Those fields should get no call. An
:class:`OodGuard` scores each prepared field by the Mahalanobis distance of a short vector of
summary statistics (:func:`field_descriptor`) from the training fields' descriptors; above the
guard's threshold a field is out of distribution. The guard is fitted on the training data
(:func:`fit_ood_guard`) and carried inside the exported ONNX model (metadata key
:data:`METADATA_KEY`, JSON of :meth:`OodGuard.to_dict`), so every server applies the same guard to
the same model.

Why a Mahalanobis distance of hand-made statistics and not, say, the network's own confidence
or embedding: it needs nothing but numpy, costs well under a millisecond per field, does not
depend on the network (a retrain keeps the same descriptor), and every statistic can be read
(mask fraction, band levels, energy per scale), so a flagged field can be explained.

The descriptor (version :data:`DESCRIPTOR_VERSION`) of a (B, H, W) band cube and its cell mask:

* the logit of the mask fraction and the log density of mask edges along rows and columns
  (edge length per area falls as cells get bigger);
* per band: mean and log standard deviation over the frame, inside the mask and outside it;
  the masked moments are shrunk towards the frame's (the frame counts as 1 % extra pixels), so
  a nearly full or nearly empty mask gives stable values and an empty one the frame's, never
  NaN (on tuning plates this shortened the tail of confluent in-distribution fields);
* the Fisher z of the correlation between every pair of bands;
* the log energy of the first band and of the mask in each of :data:`PYRAMID_LEVELS` octaves
  of a 2 x 2 box pyramid (a Laplacian pyramid of box means), plus the log variance of the
  coarsest level: the scale spectrum that a change of magnification shifts by octaves.

Logs of positive statistics and logits of fractions make the training distribution closer to
Gaussian, which a Mahalanobis distance assumes. The covariance is the Ledoit-Wolf shrinkage
estimate of the standardised descriptors (invertible for any N >= 2, even with N < D), and the
threshold is the ``quantile`` of out-of-fold scores (each field scored by a guard fitted without
its fold), because in-sample Mahalanobis distances are biased low.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

F64Array = npt.NDArray[np.float64]

METADATA_KEY = "ood"
"""ONNX metadata key holding ``json.dumps(OodGuard.to_dict())``."""

DESCRIPTOR_VERSION = "ood-descriptor-1"
"""Identifies :func:`field_descriptor`; a guard fitted on another version is refused."""

PYRAMID_LEVELS = 5
"""Octaves of the box pyramid: 1-2, 2-4, ..., 16-32 pixels on a 220 x 300 field."""

MIN_FIELDS = 20
"""Fewer training fields than this give no usable covariance or quantile."""

_FRACTION_EPS = 1e-3  # mask fractions are clipped to [eps, 1 - eps] before the logit
_STD_EPS = 1e-6  # added to standard deviations before the log (a flat band stays finite)
_ENERGY_EPS = 1e-8  # added to the first band's pyramid energies before the log
_MASK_ENERGY_EPS = 1e-3  # added to the mask's pyramid energies (at most 0.25) before the log
_EDGE_EPS = 1e-3  # added to mask edge densities before the log
_PRIOR_SHARE = 0.01  # the frame's moments weigh as this share of its pixels in masked moments
_CORR_CLIP = 0.999  # correlations are clipped before the Fisher z (arctanh)
_MIN_SCALE = 1e-3  # floor of a training std: descriptors are logs or band levels of order 1


def descriptor_length(bands: int) -> int:
    """D of :func:`field_descriptor` for a cube of ``bands`` bands."""
    if bands < 1:
        raise ValueError(f"a field needs >= 1 band, got {bands}")
    return 3 + 6 * bands + bands * (bands - 1) // 2 + 2 * (PYRAMID_LEVELS + 1)


def _as_mask(mask: np.ndarray, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != shape:
        raise ValueError(f"mask shape {array.shape} does not match the field's {shape}")
    if array.dtype == np.bool_:
        return array
    return np.asarray(array > 0.5)


def _pyramid_energies(image: npt.NDArray[np.float32]) -> list[float]:
    """Energy (mean square) of each octave of a 2 x 2 box pyramid, then the coarsest variance.

    Level k+1 is the 2 x 2 mean of level k (an odd last row/column is dropped); the detail of
    level k is level k minus level k+1 repeated back to 2 x 2 blocks, whose mean square is
    ``mean(level_k^2) - mean(level_k+1^2)`` (the cross term vanishes within each block), so no
    detail image is formed. Levels too small to halve contribute 0 energy, so the length is
    fixed for any H, W.
    """
    out: list[float] = []
    # The mean does not change any detail energy; removing it keeps the float32 powers, whose
    # difference is taken, free of cancellation.
    level = image - np.float32(image.mean(dtype=np.float64))
    for _ in range(PYRAMID_LEVELS):
        h, w = (level.shape[0] // 2) * 2, (level.shape[1] // 2) * 2
        if h < 2 or w < 2:
            out.append(0.0)
            continue
        cropped = level[:h, :w]
        coarse = (
            cropped[0::2, 0::2] + cropped[1::2, 0::2] + cropped[0::2, 1::2] + cropped[1::2, 1::2]
        ) * np.float32(0.25)
        fine_power = float(np.vdot(cropped, cropped)) / cropped.size
        coarse_power = float(np.vdot(coarse, coarse)) / coarse.size
        out.append(max(fine_power - coarse_power, 0.0))
        level = coarse
    out.append(float(np.var(level, dtype=np.float64)) if level.size > 1 else 0.0)
    return out


def _masked_moments(
    sums: F64Array, squares: F64Array, count: float, prior: tuple[F64Array, F64Array, float]
) -> tuple[F64Array, F64Array]:
    """Per-band mean and std of ``count`` pixels, shrunk towards the frame's.

    ``prior`` is (frame mean, frame mean square, weight in pixels): the frame's moments count
    as that many extra pixels, so a region of a few pixels (a nearly empty or nearly full
    mask) gets nearly the frame's statistics instead of noisy ones, an empty one exactly the
    frame's (never NaN), and the descriptor stays continuous in the mask.
    """
    frame_mean, frame_square, weight = prior
    total = count + weight
    mean = (sums + weight * frame_mean) / total
    var = np.maximum((squares + weight * frame_square) / total - mean * mean, 0.0)
    return mean, np.sqrt(var)


def field_descriptor(features: np.ndarray, mask: np.ndarray) -> F64Array:
    """Summary statistics of one prepared field, (D,) float64, D = :func:`descriptor_length`.

    Args:
        features: (B, H, W) band cube (``PreparedImage.features``), any B >= 1 and H, W >= 1.
        mask: (H, W) or (1, H, W) cell mask, bool or float (> 0.5 = cell).

    Raises:
        ValueError: a cube that is not 3-D, a mask of another shape, non-finite features.
    """
    cube = np.asarray(features)
    if cube.ndim != 3 or min(cube.shape) < 1:
        raise ValueError(f"features must be (B, H, W) with every axis >= 1, got {cube.shape}")
    bands, height, width = cube.shape
    m = _as_mask(mask, (height, width))
    flat = cube.reshape(bands, -1).astype(np.float32, copy=False)
    if not np.all(np.isfinite(flat)):
        raise ValueError("features contain NaN or infinity")
    n = float(height * width)
    weight = m.reshape(-1).astype(np.float32)
    inside = float(weight.sum())
    # Sums as matrix-vector products (BLAS, one pass each): per-band totals, masked totals,
    # sums of squares and their masked part.
    squared = np.square(flat)
    ones = np.ones(flat.shape[1], dtype=np.float32)
    totals = (flat @ ones).astype(np.float64)
    masked = (flat @ weight).astype(np.float64)
    squares = (squared @ ones).astype(np.float64)
    masked_squares = (squared @ weight).astype(np.float64)
    # Band-pair correlations on every 2nd row and column: a quarter of the cost, and smooth
    # bands correlate the same on the subgrid.
    sub = cube[:, ::2, ::2].reshape(bands, -1).astype(np.float32)
    sub_mean = sub.mean(axis=1, dtype=np.float64)
    gram = (sub @ sub.T).astype(np.float64) / sub.shape[1]

    mean = totals / n
    var = np.maximum(squares / n - mean * mean, 0.0)
    std = np.sqrt(var)
    prior = (mean, squares / n, _PRIOR_SHARE * n)
    in_mean, in_std = _masked_moments(masked, masked_squares, inside, prior)
    out_mean, out_std = _masked_moments(
        totals - masked, squares - masked_squares, n - inside, prior
    )

    fraction = min(max(inside / n, _FRACTION_EPS), 1.0 - _FRACTION_EPS)
    row_edges = np.count_nonzero(m[:, 1:] != m[:, :-1]) / max(height * (width - 1), 1)
    col_edges = np.count_nonzero(m[1:, :] != m[:-1, :]) / max((height - 1) * width, 1)

    covariance = gram - np.outer(sub_mean, sub_mean)
    sub_var = np.maximum(np.diag(covariance), 0.0)
    scale = np.sqrt(np.outer(sub_var, sub_var))
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = np.where(scale > 0.0, covariance / scale, 0.0)
    upper = correlation[np.triu_indices(bands, k=1)]
    fisher = np.arctanh(np.clip(upper, -_CORR_CLIP, _CORR_CLIP))

    spectrum = _pyramid_energies(np.ascontiguousarray(cube[0], dtype=np.float32))
    mask_spectrum = _pyramid_energies(m.astype(np.float32))

    parts = [
        np.array(
            [
                math.log(fraction / (1.0 - fraction)),
                math.log(row_edges + _EDGE_EPS),
                math.log(col_edges + _EDGE_EPS),
            ]
        ),
        mean,
        np.log(std + _STD_EPS),
        in_mean,
        np.log(in_std + _STD_EPS),
        out_mean,
        np.log(out_std + _STD_EPS),
        fisher,
        np.log(np.asarray(spectrum) + _ENERGY_EPS),
        np.log(np.asarray(mask_spectrum) + _MASK_ENERGY_EPS),
    ]
    return np.concatenate(parts).astype(np.float64)


def descriptors(features: np.ndarray, masks: np.ndarray) -> F64Array:
    """(N, D) descriptors of N fields: features (N, B, H, W), masks (N, 1, H, W) or (N, H, W).

    Raises:
        ValueError: shapes that do not match (the message says which).
    """
    cube = np.asarray(features)
    mask = np.asarray(masks)
    if cube.ndim != 4:
        raise ValueError(f"features must be (N, B, H, W), got shape {cube.shape}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3 or mask.shape != (cube.shape[0], *cube.shape[2:]):
        raise ValueError(
            f"masks of shape {np.asarray(masks).shape} do not match features {cube.shape}: "
            "expected (N, 1, H, W) or (N, H, W)"
        )
    out = np.empty((cube.shape[0], descriptor_length(cube.shape[1])), dtype=np.float64)
    for i in range(cube.shape[0]):
        out[i] = field_descriptor(cube[i], mask[i])
    return out


def _as_matrix(data: Any, name: str, shape: tuple[int, ...]) -> F64Array:
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"ood guard {name} must be numbers of shape {shape}") from None
    if array.shape != shape:
        raise ValueError(f"ood guard {name} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"ood guard {name} contains NaN or infinity")
    return array


@dataclass(frozen=True, eq=False)
class OodGuard:
    """Mahalanobis distance from the training descriptors, and the threshold above which a field
    is out of distribution.

    Attributes:
        mean: (D,) mean training descriptor.
        precision: (D, D) inverse of the shrunk training covariance (symmetric positive
            definite).
        threshold: a score above it is out of distribution.
        quantile: the share of out-of-fold training scores at or below the threshold, i.e. the
            guard is built to flag about ``1 - quantile`` of in-distribution fields.
        n_train: training fields the guard was fitted on.
        version: :data:`DESCRIPTOR_VERSION` of the descriptors it compares.
        shrinkage: Ledoit-Wolf shrinkage intensity of the covariance (provenance only).
    """

    mean: F64Array
    precision: F64Array
    threshold: float
    quantile: float
    n_train: int
    version: str = DESCRIPTOR_VERSION
    shrinkage: float = 0.0

    def __post_init__(self) -> None:
        if self.version != DESCRIPTOR_VERSION:
            raise ValueError(
                f"ood guard descriptor version {self.version!r} is not this code's "
                f"{DESCRIPTOR_VERSION!r}; refit the guard"
            )
        mean = np.asarray(self.mean, dtype=np.float64)
        if mean.ndim != 1 or mean.size < 1:
            raise ValueError(f"ood guard mean must be a non-empty vector, got shape {mean.shape}")
        mean = _as_matrix(mean, "mean", mean.shape)
        precision = _as_matrix(self.precision, "precision", (mean.size, mean.size))
        if not np.allclose(precision, precision.T, rtol=1e-8, atol=1e-12):
            raise ValueError("ood guard precision must be symmetric")
        for name in ("threshold", "quantile", "shrinkage"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"ood guard {name} must be a number, not {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"ood guard {name} must be finite, got {value!r}")
        if self.threshold <= 0.0:
            raise ValueError(f"ood guard threshold must be positive, got {self.threshold}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"ood guard quantile must be within (0, 1), got {self.quantile}")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"ood guard shrinkage must be within [0, 1], got {self.shrinkage}")
        if isinstance(self.n_train, bool) or not isinstance(self.n_train, int):
            raise ValueError(f"ood guard n_train must be an integer, not {self.n_train!r}")
        if self.n_train < 1:
            raise ValueError(f"ood guard n_train must be >= 1, got {self.n_train}")
        mean.setflags(write=False)
        precision.setflags(write=False)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "precision", precision)
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "quantile", float(self.quantile))
        object.__setattr__(self, "shrinkage", float(self.shrinkage))

    @property
    def dimension(self) -> int:
        return int(self.mean.size)

    def score(self, descriptors: np.ndarray) -> F64Array:
        """Mahalanobis distances: (N,) for (N, D) descriptors, a 0-d array for one (D,).

        A descriptor with NaN or infinity scores +inf (out of distribution), not NaN.
        """
        x = np.asarray(descriptors, dtype=np.float64)
        single = x.ndim == 1
        rows = x[None, :] if single else x
        if rows.ndim != 2 or rows.shape[1] != self.dimension:
            raise ValueError(
                f"descriptors of shape {x.shape} do not match the guard's D = {self.dimension}"
            )
        finite = np.all(np.isfinite(rows), axis=1)
        diff = np.where(finite[:, None], rows - self.mean, 0.0)
        quadratic = np.einsum("ij,jk,ik->i", diff, self.precision, diff)
        distance = np.sqrt(np.maximum(quadratic, 0.0))
        distance[~finite] = np.inf
        return np.asarray(distance[0]) if single else distance

    def is_out(self, scores: np.ndarray) -> npt.NDArray[np.bool_]:
        """True where a score is above the threshold (NaN counts as out)."""
        s = np.asarray(scores, dtype=np.float64)
        return np.asarray(~(s <= self.threshold))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; floats are kept exactly (``json`` writes them with ``repr``)."""
        return {
            "version": self.version,
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "n_train": self.n_train,
            "shrinkage": self.shrinkage,
        }

    @classmethod
    def from_dict(cls, data: Any) -> OodGuard:
        """Rebuild from :meth:`to_dict`; unknown, missing, mis-shaped or non-finite: ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an ood guard must be a JSON object, not {type(data).__name__}")
        required = {"version", "mean", "precision", "threshold", "quantile", "n_train"}
        allowed = required | {"shrinkage"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown ood guard keys {unknown}")
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"ood guard is missing {missing}")
        version = data["version"]
        if not isinstance(version, str):
            raise ValueError(f"ood guard version must be a string, not {version!r}")
        if version != DESCRIPTOR_VERSION:
            raise ValueError(
                f"ood guard descriptor version {version!r} is not this code's "
                f"{DESCRIPTOR_VERSION!r}; refit the guard"
            )
        for key in ("mean", "precision"):
            if not isinstance(data[key], list):
                raise ValueError(f"ood guard {key} must be a list, not {type(data[key]).__name__}")
        mean = np.asarray(data["mean"], dtype=object)
        if mean.ndim != 1 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in mean.tolist()
        ):
            raise ValueError("ood guard mean must be a flat list of numbers")
        d = len(data["mean"])
        precision = data["precision"]
        if len(precision) != d or not all(
            isinstance(row, list)
            and len(row) == d
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
            for row in precision
        ):
            raise ValueError(f"ood guard precision must be a {d} x {d} list of lists of numbers")
        return cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            precision=np.asarray(precision, dtype=np.float64),
            threshold=data["threshold"],
            quantile=data["quantile"],
            n_train=data["n_train"],
            version=version,
            shrinkage=data.get("shrinkage", 0.0),
        )


def _ledoit_wolf(x: F64Array) -> tuple[F64Array, F64Array, F64Array, float]:
    """Mean, scale, shrunk correlation-scale covariance and shrinkage of (N, D) rows.

    The descriptors are standardised (their units differ by orders of magnitude), then the
    sample covariance S is shrunk towards mu * I with the Ledoit-Wolf (2004) intensity, which
    minimises the expected Frobenius error and makes the estimate invertible for any N.
    """
    n, d = x.shape
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), _MIN_SCALE)
    z = (x - mean) / scale
    sample = z.T @ z / n
    mu = float(np.trace(sample)) / d
    target = mu * np.eye(d)
    delta = float(np.sum((sample - target) ** 2)) / d
    # sum_k ||z_k z_k^T - S||_F^2 = sum_k ||z_k||^4 - n ||S||_F^2
    row_norms = np.sum(z * z, axis=1)
    beta_bar = float(np.sum(row_norms**2) - n * np.sum(sample**2)) / (n * n * d)
    shrinkage = 1.0 if delta <= 0.0 else min(max(beta_bar / delta, 0.0), 1.0)
    covariance = shrinkage * target + (1.0 - shrinkage) * sample
    if mu <= 0.0:  # every descriptor constant: any change is out of distribution
        covariance = np.eye(d)
    return mean, scale, covariance, shrinkage


def _fit(x: F64Array) -> tuple[F64Array, F64Array, float]:
    """Mean, precision (in descriptor units) and shrinkage of (N, D) descriptors."""
    mean, scale, covariance, shrinkage = _ledoit_wolf(x)
    inverse = np.linalg.inv(covariance)
    inverse = (inverse + inverse.T) / 2.0
    precision = inverse / np.outer(scale, scale)
    return mean, (precision + precision.T) / 2.0, shrinkage


def _scores(x: F64Array, mean: F64Array, precision: F64Array) -> F64Array:
    diff = x - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, precision, diff), 0.0))


def _folds(n: int, k: int, groups: Sequence[Any] | None, seed: int) -> npt.NDArray[np.int64]:
    """Fold of each field: shuffled round robin, or whole groups (plates) per fold."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return np.asarray(rng.permutation(np.arange(n) % k), dtype=np.int64)
    names, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    group_fold = rng.permutation(np.arange(names.size) % k)
    return np.asarray(group_fold[inverse], dtype=np.int64)


def fit_ood_guard(
    features: np.ndarray,
    masks: np.ndarray,
    *,
    quantile: float = 0.995,
    holdout: float = 0.2,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> OodGuard:
    """Fit a guard on training fields: features (N, B, H, W), masks (N, 1, H, W) or (N, H, W).

    The mean and covariance come from all N fields. The threshold is the ``quantile`` of
    out-of-fold scores: the fields are split into ``round(1 / holdout)`` folds (``holdout``
    is each fold's share) and each fold is scored by a guard fitted on the others, so every
    field contributes one score that, like a new field's, it did not help fit. In-sample
    distances would be biased low and flag far more than ``1 - quantile`` of new fields.
    ``groups`` (e.g. plate barcodes) keeps a group's fields in one fold, so the threshold also
    covers plate-to-plate variation; with fewer groups than folds there is one fold per group.

    Raises:
        ValueError: fewer than :data:`MIN_FIELDS` fields, mismatched shapes, a quantile outside
            (0, 1), a holdout outside (0, 0.5], fewer than 2 groups.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be within (0, 1), got {quantile}")
    if not 0.0 < holdout <= 0.5:
        raise ValueError(f"holdout must be within (0, 0.5], got {holdout}")
    x = descriptors(features, masks)
    n = x.shape[0]
    if n < MIN_FIELDS:
        raise ValueError(f"an ood guard needs >= {MIN_FIELDS} training fields, got {n}")
    k = max(2, round(1.0 / holdout))
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} groups for {n} fields")
        n_groups = len(set(map(str, groups)))
        if n_groups < 2:
            raise ValueError("groups must name >= 2 distinct groups to hold any out")
        k = min(k, n_groups)
    folds = _folds(n, k, groups, seed)
    out_of_fold = np.empty(n, dtype=np.float64)
    for fold in range(k):
        test = folds == fold
        mean, precision, _ = _fit(x[~test])
        out_of_fold[test] = _scores(x[test], mean, precision)
    threshold = float(np.quantile(out_of_fold, quantile))
    mean, precision, shrinkage = _fit(x)
    logger.info(
        "ood guard: %d fields, D = %d, shrinkage %.3f, threshold %.2f (%.3f quantile of %d-fold "
        "out-of-fold scores; in-sample median %.2f, out-of-fold median %.2f)",
        n,
        x.shape[1],
        shrinkage,
        threshold,
        quantile,
        k,
        float(np.median(_scores(x, mean, precision))),
        float(np.median(out_of_fold)),
    )
    return OodGuard(
        mean=mean,
        precision=precision,
        threshold=threshold,
        quantile=quantile,
        n_train=n,
        shrinkage=shrinkage,
    )
