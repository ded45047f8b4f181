"""Versioned model artifacts in NVIDIA Triton's model-repository layout.

```
<root>/<name>/config.pbtxt              Triton config (ONNX Runtime backend, dynamic batching)
<root>/<name>/<version>/model.onnx      the network, with the pipeline config in its metadata
<root>/<name>/<version>/model_card.json provenance, preprocessing, metrics, parity check
```
Triton can serve the same directory; this service reads it with onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BUNDLED_REPOSITORY = Path(__file__).resolve().parent / "bundled"
MODEL_FILENAME = "model.onnx"
CARD_FILENAME = "model_card.json"


class ModelNotFoundError(LookupError):
    """No such model or version in the repository."""


@dataclass(frozen=True)
class ModelArtifact:
    """One published model version on disk."""

    name: str
    version: int
    directory: Path

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILENAME

    @property
    def card_path(self) -> Path:
        return self.directory / CARD_FILENAME

    def card(self) -> dict[str, Any]:
        return dict(json.loads(self.card_path.read_text()))

    def sha256(self) -> str:
        return file_sha256(self.model_path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRepository:
    """A directory of named, integer-versioned models."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        directory = self.root / name
        if not directory.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in directory.iterdir()
            # A version is published once its card exists (publish writes the card last).
            if p.is_dir()
            and p.name.isdigit()
            and (p / MODEL_FILENAME).is_file()
            and (p / CARD_FILENAME).is_file()
        )

    def get(self, name: str, version: int | None = None) -> ModelArtifact:
        """The given version of ``name``, or its newest when ``version`` is None."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r} in {self.root}")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {chosen} in {self.root} (has {versions})"
            )
        return ModelArtifact(name, chosen, self.root / name / str(chosen))

    def new_version_dir(self, name: str) -> tuple[int, Path]:
        """Create and return the directory of the next version of ``name``.

        Counts every numbered folder, published or still being written, so two runs never
        take the same number.
        """
        parent = self.root / name
        taken = (
            [int(p.name) for p in parent.iterdir() if p.name.isdigit()] if parent.is_dir() else []
        )
        version = max(taken, default=0) + 1
        directory = self.root / name / str(version)
        directory.mkdir(parents=True, exist_ok=False)
        return version, directory

    def write_triton_config(self, name: str, in_bands: int, height: int, width: int) -> Path:
        """(Re)write ``<name>/config.pbtxt`` for Triton's ONNX Runtime backend."""
        path = self.root / name / "config.pbtxt"
        path.write_text(triton_config(name, in_bands, height, width))
        return path


def triton_config(name: str, in_bands: int, height: int, width: int) -> str:
    """Triton model configuration with a dynamic batch axis (max_batch_size > 0).

    With batching on, Triton's dims exclude the batch axis; ``probability`` is (N,) in the
    graph, which Triton expresses as dims [1] reshaped to a scalar per batch item.
    """
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: 96
input [
  {{ name: "features" data_type: TYPE_FP32 dims: [ {in_bands}, {height}, {width} ] }},
  {{ name: "mask" data_type: TYPE_FP32 dims: [ 1, {height}, {width} ] }}
]
output [
  {{ name: "logit_map" data_type: TYPE_FP32 dims: [ 1, -1, -1 ] }},
  {{ name: "probability" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }}
]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
"""
