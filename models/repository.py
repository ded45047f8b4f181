"""Versioned model artifacts in NVIDIA Triton's model-repository layout.

```
<root>/<name>/config.pbtxt              Triton config (ONNX Runtime backend, dynamic batching)
<root>/<name>/<version>/model.onnx      the network, with the pipeline config in its metadata
<root>/<name>/<version>/model_card.json provenance, preprocessing, metrics, parity check
```
Triton can serve the same directory; this service reads it with onnxruntime.

Names come from API paths and settings, so every name is checked against
:data:`~models.training_spec.MODEL_NAME_PATTERN` and every path the repository resolves must stay
inside its root (no ``..``, no absolute names, no symbolic link pointing elsewhere): a request can
never make the service read or load a file outside the repository. A version whose card is not
JSON or whose network onnxruntime cannot load is *reported* (:meth:`ModelRepository.problem`), so
one broken artifact never breaks listing or start-up for the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.training_spec import MODEL_NAME_PATTERN

logger = logging.getLogger(__name__)

BUNDLED_REPOSITORY = Path(__file__).resolve().parent / "bundled"
MODEL_FILENAME = "model.onnx"
CARD_FILENAME = "model_card.json"


class ModelNotFoundError(LookupError):
    """No such model or version in the repository."""


class InvalidModelNameError(ValueError):
    """A model name that does not match MODEL_NAME_PATTERN (it could name a path elsewhere)."""


class BrokenModelError(ValueError):
    """A published version whose files cannot be used (card not JSON, network not loadable)."""


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else InvalidModelNameError (no path in it)."""
    if re.fullmatch(MODEL_NAME_PATTERN, name) is None:
        raise InvalidModelNameError(
            f"invalid model name {name[:80]!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def scrub_paths(message: str, *paths: Path) -> str:
    """``message`` with each of ``paths`` replaced by its last part: errors from onnxruntime or
    json name the file they read, and a server path must not reach an API client."""
    for path in sorted(paths, key=lambda p: len(str(p)), reverse=True):
        for spelling in {str(path), str(path.resolve())}:
            message = message.replace(spelling, path.name)
    return message


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

    @property
    def label(self) -> str:
        return f"model {self.name} v{self.version}"

    def card(self) -> dict[str, Any]:
        """The model card; BrokenModelError (naming why, not where) if it is not a JSON object."""
        try:
            card = json.loads(self.card_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = scrub_paths(f"{type(exc).__name__}: {exc}", self.card_path)
            raise BrokenModelError(
                f"{self.label}: {CARD_FILENAME} cannot be read as JSON ({reason}); "
                "republish this version"
            ) from exc
        if not isinstance(card, dict):
            raise BrokenModelError(
                f"{self.label}: {CARD_FILENAME} holds a JSON {type(card).__name__}, "
                "not an object; republish this version"
            )
        return card

    def sha256(self) -> str:
        return file_sha256(self.model_path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# What a version's files looked like when last checked: (size, mtime_ns) of model and card.
_Signature = tuple[tuple[int, int], tuple[int, int]]


class ModelRepository:
    """A directory of named, integer-versioned models."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # (name, version) -> (signature of its files, problem, sha256 of model.onnx)
        self._checked: dict[tuple[str, int], tuple[_Signature, str | None, str]] = {}
        self._checked_lock = threading.Lock()

    def _inside(self, path: Path) -> bool:
        """``path`` (links followed) lies inside the repository root."""
        try:
            return path.resolve().is_relative_to(self.root.resolve())
        except (OSError, RuntimeError):  # a link loop, or unreadable
            return False

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if re.fullmatch(MODEL_NAME_PATTERN, p.name) and p.is_dir() and self.versions(p.name)
        )

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name`` (InvalidModelNameError for a malformed name)."""
        directory = self.root / check_name(name)
        if not directory.is_dir() or not self._inside(directory):
            return []
        return sorted(
            int(p.name)
            for p in directory.iterdir()
            # A version is published once its card exists (publish writes the card last).
            if p.name.isdigit() and self._published(p)
        )

    def _published(self, directory: Path) -> bool:
        files = (directory / MODEL_FILENAME, directory / CARD_FILENAME)
        if not directory.is_dir() or not all(f.is_file() for f in files):
            return False
        if not all(self._inside(p) for p in (directory, *files)):
            logger.warning("model repository: %s links outside the repository; ignored", directory)
            return False
        return True

    def get(self, name: str, version: int | None = None) -> ModelArtifact:
        """The given version of ``name``, or its newest when ``version`` is None."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r} in the model repository")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise ModelNotFoundError(f"model {name!r} has no version {chosen} (it has {versions})")
        return ModelArtifact(name, chosen, self.root / name / str(chosen))

    def problem(self, artifact: ModelArtifact) -> str | None:
        """Why ``artifact`` cannot serve (its card is not a JSON object, or onnxruntime cannot
        load its network, or the network lacks the pipeline metadata), else None.

        Loading a small ONNX graph takes milliseconds, and the answer is kept until either
        file changes (size or modification time), so listing stays cheap.
        """
        try:
            return self._check(artifact)[0]
        except OSError as exc:
            return f"{artifact.label}: its files cannot be read ({type(exc).__name__})"

    def sha256(self, artifact: ModelArtifact) -> str:
        """:meth:`ModelArtifact.sha256`, kept until the file changes (listing compares it with
        the registered one on every call)."""
        return self._check(artifact)[1]

    def _check(self, artifact: ModelArtifact) -> tuple[str | None, str]:
        signature = _signature(artifact)
        key = (artifact.name, artifact.version)
        with self._checked_lock:
            cached = self._checked.get(key)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        found, sha256 = _find_problem(artifact), artifact.sha256()
        with self._checked_lock:
            self._checked[key] = (signature, found, sha256)
        return found, sha256

    def new_version_dir(self, name: str) -> tuple[int, Path]:
        """Create and return the directory of the next version of ``name``.

        Counts every numbered folder, published or still being written, so two runs never
        take the same number.
        """
        parent = self.root / check_name(name)
        taken = (
            [int(p.name) for p in parent.iterdir() if p.name.isdigit()] if parent.is_dir() else []
        )
        version = max(taken, default=0) + 1
        directory = self.root / name / str(version)
        directory.mkdir(parents=True, exist_ok=False)
        return version, directory

    def write_triton_config(self, name: str, in_bands: int, height: int, width: int) -> Path:
        """(Re)write ``<name>/config.pbtxt`` for Triton's ONNX Runtime backend."""
        path = self.root / check_name(name) / "config.pbtxt"
        path.write_text(triton_config(name, in_bands, height, width))
        return path


def _signature(artifact: ModelArtifact) -> _Signature:
    model, card = artifact.model_path.stat(), artifact.card_path.stat()
    return (model.st_size, model.st_mtime_ns), (card.st_size, card.st_mtime_ns)


def _find_problem(artifact: ModelArtifact) -> str | None:
    try:
        artifact.card()
    except BrokenModelError as exc:
        return str(exc)
    # Imported here: onnxruntime is an optional extra and slow to import, and training code
    # that only writes a repository never needs it.
    from models.inference import OnnxClassifier, RuntimeUnavailableError

    try:
        OnnxClassifier(artifact.model_path, providers="cpu")
    except RuntimeUnavailableError as exc:
        return f"{artifact.label} cannot be checked: {exc}"
    except Exception as exc:  # onnxruntime raises its own (non-standard) exception classes
        return load_failure(artifact, exc)
    return None


def load_failure(artifact: ModelArtifact, exc: BaseException) -> str:
    """Why onnxruntime (or our metadata check) refused ``artifact``'s network, without paths."""
    reason = scrub_paths(
        str(exc), artifact.model_path, artifact.directory, artifact.directory.parent
    )
    return (
        f"{artifact.label}: {MODEL_FILENAME} cannot be loaded ({type(exc).__name__}: "
        f"{reason[:300]}); republish this version or activate another"
    )


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
