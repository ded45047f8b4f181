"""PNG renderings of a field: the normalised image, and the per-pixel call map over it."""

from __future__ import annotations

import cv2
import numpy as np

from app.classifier import WellClassifier
from models.pipeline import normalise, prepare, to_uint8


def image_png(frame: np.ndarray, bit_depth: int | None) -> bytes:
    """The frame as an 8-bit PNG at camera resolution (display copy; the raw frame is kept).

    ``bit_depth``: significant bits of the stored frame's pixel values (None: its dtype's). A
    multi-channel frame (H, W, C) shows its channels side by side, in order, as grey images:
    stored frames are acquired channels, never colour.
    """
    frame8 = to_uint8(frame, bit_depth)
    if frame8.ndim == 3:
        frame8 = np.ascontiguousarray(np.hstack([frame8[:, :, c] for c in range(frame8.shape[2])]))
    return _encode(frame8)


def overlay_png(
    frame: np.ndarray, classifier: WellClassifier, bit_depth: int | None, alpha: float = 0.45
) -> bytes:
    """The model's per-pixel P(high) over the normalised image, on cell pixels only.

    Green = high, red = low; background (mask) left grey. The map is recomputed from the stored
    frame with the serving pipeline and model, so it is exactly what made the call.
    """
    config = classifier.config
    prepared = prepare(frame, config, bit_depth=bit_depth)
    frame8 = to_uint8(frame, bit_depth)
    base = prepared.normalised if prepared.normalised is not None else normalise(frame8, config)
    canvas = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    if prepared.qc.excluded or prepared.features is None or prepared.mask is None:
        cv2.putText(canvas, "QC excluded", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 200, 255), 2)
        return _encode(canvas)
    _, logit_map = classifier.model.predict(
        prepared.features[None], prepared.mask[None, None].astype(np.float32)
    )
    probability = 1.0 / (1.0 + np.exp(-logit_map[0, 0]))
    probability = cv2.resize(
        probability, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR
    )
    colour = np.zeros_like(canvas)
    colour[..., 1] = (probability * 255).astype(np.uint8)  # green: high
    colour[..., 2] = ((1.0 - probability) * 255).astype(np.uint8)  # red: low
    mask = prepared.mask.astype(bool)
    blended = cv2.addWeighted(canvas, 1.0 - alpha, colour, alpha, 0.0)
    canvas[mask] = blended[mask]
    return _encode(canvas)


def _encode(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("could not encode PNG")
    return bytes(encoded.tobytes())
