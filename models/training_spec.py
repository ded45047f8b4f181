"""What to train, on what: the one spelling of a training run's parameters.

The API's request body (:class:`TrainingRequest`, served as ``TrainingRunCreate``), the
``mscreen train`` options and the training child process the API starts (which reads the spec
stored with its run) all validate through these models, so a limit or a default is stated once.
Plain pydantic, no PyTorch: the service imports it without the ``train`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A plate barcode (app.schemas.common re-exports it for the API's paths): stated here because a
# training request names plates too, and this layer must not import the service.
BARCODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_TRAINING_PLATES = 500
# Seeds go to numpy (0 .. 2**32-1) and torch; 32 bits keep them a plain JSON/database integer.
MAX_SEED = 2**31 - 1


class TrainingRequest(BaseModel):
    """What a remote caller may ask for: sources on the server's own data, bounded sizes."""

    # strict: a JSON `false` is not the seed 0, nor "30" 30 epochs.
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(default="hscnn-sim", pattern=MODEL_NAME_PATTERN)
    # "database": retrain on this service's plates that have FCT labels (split by plate; the
    # *_plates counts below are then unused); "simulated": fresh simulated plates.
    source: Literal["simulated", "database"] = "simulated"
    # database: only these plates. Each a barcode (so no NUL or control character, no path,
    # at most 64 characters), at most MAX_TRAINING_PLATES of them: a bad one is a 422 before
    # anything is written.
    plates: (
        Annotated[
            list[Annotated[str, Field(pattern=BARCODE_PATTERN, max_length=64)]],
            Field(min_length=1, max_length=MAX_TRAINING_PLATES),
        ]
        | None
    ) = None
    train_plates: Annotated[int, Field(ge=1, le=50)] = 4
    val_plates: Annotated[int, Field(ge=1, le=20)] = 1
    test_plates: Annotated[int, Field(ge=1, le=20)] = 2
    # Held-out plates for the model's decision set (thresholds and selective calls are chosen on
    # them; see models.decision). 0: the validation plates stand in, and the card says the
    # selective guarantee is then approximate.
    calibration_plates: Annotated[int, Field(ge=0, le=20)] = 2
    epochs: Annotated[int, Field(ge=1, le=500)] = 30
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0

    @model_validator(mode="after")
    def _plates_only_for_the_database(self) -> Self:
        if self.plates is not None and self.source != "database":
            raise ValueError("plates only applies to source 'database'; leave it out")
        return self


class TrainingSpec(TrainingRequest):
    """Everything a training run takes; the local CLI may also train on a folder of images,
    choose the network, the HSM window, the simulator's difficulty and the device."""

    # Lax again: the CLI's options and a stored row's JSON spell a folder as a string.
    model_config = ConfigDict(extra="forbid", strict=False)

    source: Literal["simulated", "database", "folder"] = "simulated"  # type: ignore[assignment]
    data: Path | None = Field(default=None, description="folder: root of <class>/<image> folders")
    group_by: str | None = Field(
        default=None, description="folder: regex on file stems naming a group ('celltype')"
    )
    size: Annotated[int, Field(ge=16)] | None = None  # folder: network input height = width
    # folder: significant bits of 16-bit files that do not state them (None: from the files'
    # metadata, else inferred from the folder's maximum) and which channels to use (0-based;
    # None: all; two or more train one band per channel).
    bit_depth: Annotated[int, Field(ge=8, le=16)] | None = None
    channels: Annotated[list[Annotated[int, Field(ge=0, le=63)]], Field(min_length=1)] | None = None
    architecture: str = "scnn"
    # 1 = no spatial-spectral neighbours (the default, see docs/experiments.md, HSM ablation);
    # 9 with k = 12 = the paper's HSM.
    ws: Annotated[int, Field(ge=1)] = 1
    k: Annotated[int, Field(ge=2)] = 12
    difficulty: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5  # simulator class overlap
    device: Literal["cpu", "cuda", "auto"] = "cpu"
