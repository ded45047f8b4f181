"""Array aliases and the small OpenCV helpers that several pipeline modules share."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

_BORDER = cv2.BORDER_REFLECT_101


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _u8(image: object) -> U8Array:
    """View an OpenCV result as a typed uint8 array (no copy; OpenCV's stubs are untyped)."""
    return np.asarray(image, dtype=np.uint8)


def _gauss(img: F32Array, sigma: float) -> F32Array:
    """Gaussian blur with an explicit kernel size (2 * ceil(3 sigma) + 1) and reflect-101 border.

    The size is fixed here rather than left to OpenCV, whose automatic size depends on the dtype.
    """
    ksize = 2 * math.ceil(3.0 * sigma) + 1
    blurred = cv2.GaussianBlur(img, (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=_BORDER)
    return np.asarray(blurred, dtype=np.float32)
