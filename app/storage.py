"""Where acquired frames go on disk: lossless 16-bit PNG, written atomically, with a SHA-256."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class StoredImage:
    path: Path
    sha256: str


class ImageStore:
    """Files under ``root/<barcode>/scan-<id>/<well>_f<field>.png``.

    A frame is written to a temporary name and renamed, so a crash never leaves a half-written
    file under a name the database could point at.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(
        self, barcode: str, scan_id: int, well: str, field_index: int, image: np.ndarray
    ) -> StoredImage:
        directory = self.root / _safe(barcode) / f"scan-{scan_id}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{well}_f{field_index}.png"
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise OSError(f"could not encode {well} field {field_index} as PNG")
        data = encoded.tobytes()
        tmp = path.with_suffix(".png.tmp")
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        return StoredImage(path=path, sha256=hashlib.sha256(data).hexdigest())

    @staticmethod
    def load(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise FileNotFoundError(f"cannot read image {path}")
        return np.asarray(image)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
