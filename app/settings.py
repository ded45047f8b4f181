"""One settings object, read from the environment (prefix ``MSCREEN_``) and an optional .env."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from hardware.backends import get_backend
from hardware.microscope import check_channels
from models.decision import ThresholdPolicy
from models.repository import BUNDLED_REPOSITORY
from store.settings import StoreSettings


class Settings(StoreSettings):
    """Service configuration. Every field can be set as ``MSCREEN_<FIELD>`` (upper case); the
    data folder, database URL and image folder come from :class:`StoreSettings`."""

    environment: Literal["development", "production"] = "development"
    model_repository: Path = Field(
        default=BUNDLED_REPOSITORY,
        description="Triton-layout model repository (<name>/<version>/model.onnx).",
    )
    model_name: str = "hscnn-sim"
    model_version: int | None = Field(default=None, description="Default: newest version.")
    onnx_provider: Literal["auto", "cpu", "cuda"] = "auto"
    inference_threads: int = Field(default=0, ge=0, description="0 = onnxruntime default.")
    microscope: str = Field(
        default="pycromanager-sim",
        description="pycromanager-sim: pycromanager's acquisition engine in-process on the "
        "simulated Micro-Manager devices (the real driver code path); simulated: the simulator "
        "driven directly (no Micro-Manager layer); pycromanager: a real Micro-Manager, started "
        "headless (MSCREEN_MM_APP_PATH + MSCREEN_MM_CONFIG) or already running (MSCREEN_MM_PORT). "
        "The names are hardware.backends' registry.",
    )
    microscope_id: str = Field(
        default="",
        description="Names the instrument (one scan runs per instrument); default: 'simulated' "
        "for the simulator backends, 'micromanager' otherwise.",
    )
    mm_app_path: Path | None = Field(default=None, description="Micro-Manager install folder.")
    mm_config: Path | None = Field(default=None, description="Micro-Manager hardware .cfg.")
    mm_port: int = Field(default=4827, description="Port of a running Micro-Manager.")
    camera_bit_depth: int | None = Field(
        default=None, ge=8, le=16, description="Real camera's bit depth (default: 16 for uint16)."
    )
    acquisition_channels: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Channel-group presets every field is acquired through, comma separated "
        "(e.g. 'Phase,Brightfield'), for a band_source='channels' model; empty: one frame per "
        "field. The simulators offer Phase, Brightfield, Phase+2um, Phase-2um.",
    )
    plate_a1_x_um: float = Field(
        default=14380.0, description="Stage x of well A1's centre, um (plate calibration)."
    )
    plate_a1_y_um: float = Field(
        default=11240.0, description="Stage y of well A1's centre, um (plate calibration)."
    )
    simulation_seed: int = 0
    simulation_high_fraction: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of high-functionality wells on simulated plates (their prevalence); "
        "in practice most expanded MSC lots pass, so 0.8-0.95 is realistic.",
    )
    autofocus: Literal["none", "continuous", "hardware", "software", "map"] = Field(
        default="continuous",
        description="How each field is focused: continuous (the focus drive's reflection lock "
        "holds focus through every move), hardware (one reflection-autofocus search, "
        "Micro-Manager's fullFocus, per field), software (a coarse-to-fine image search per "
        "field), map (a focus map fitted from sites already focused; searches only near its "
        "prediction), none (a fixed z).",
    )
    sim_timing: Literal["fast", "realtime"] = Field(
        default="fast",
        description="Simulated instrument timing: fast records instrument time without "
        "waiting (tests); realtime also sleeps it (demos, the page at an instrument's pace).",
    )
    worker_enabled: bool = True
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    reanalysis_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Processes the service's re-analysis worker prepares stored fields in "
        "(0 or 1: in its own thread, leaving the other cores to scans and requests).",
    )
    plate_results: bool = Field(
        default=True,
        description="Write the calls into each finished scan's OME-Zarr plate (per-field label "
        "images, per-well attributes, a plate table) so napari shows them with the images.",
    )
    reanalysis_batch_size: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="Fields per onnxruntime batch when re-analysing stored plates.",
    )
    auto_migrate: bool = Field(
        default=True, description="Run `alembic upgrade head` when the service starts."
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running scan's lease; a scan whose worker stops renewing it is resumed "
        "by the next worker after this long.",
    )
    events_max_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest a scan's event stream stays open; clients reconnect with "
        "Last-Event-ID (so no connection is held for a scan waiting in the queue).",
    )
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Largest request body accepted (413 above it, before it is read).",
    )
    max_upload_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="Largest ground-truth upload (an FCT table for 96 wells is < 10 KB).",
    )
    training_enabled: bool = Field(
        default=True,
        description="Accept retraining runs and start them (the training-run queue's "
        "dispatcher); off: POST /training-runs answers 503.",
    )
    training_max_running: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Training runs that may run at once on this host (each a process using "
        "every core it is given); more wait queued.",
    )
    training_max_queued: int = Field(
        default=8,
        ge=0,
        le=1000,
        description="Training runs that may wait; beyond this POST /training-runs answers 409.",
    )
    training_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="How often the training-run queue starts waiting runs and reaps dead ones.",
    )
    training_kill_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="A cancelled run's processes get SIGTERM, then SIGKILL after this long.",
    )
    auth_disabled: bool = Field(
        default=False,
        description="Development only: every caller is an anonymous admin. Refused in production.",
    )
    threshold_policy: str = Field(
        default="default",
        description="How a scan's decision threshold is chosen when its request names none: "
        "default (the model's own, 0.5), youden (max sensitivity + specificity - 1), "
        "sensitivity:S or specificity:S (the loosest threshold keeping that rate >= S). All but "
        "default need a model with a decision set (held-out calibration fields); a scan asking "
        "for it on a model without one is refused (409). See models.decision.",
    )
    selective_alpha: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Selective calls when a scan's request names no alpha: wells whose "
        "confidence would not keep the error rate among called wells <= this are 'uncertain' "
        "(confirm by FCT). Unset: off, every in-distribution well is called high or low. Needs "
        "a model with a decision set.",
    )
    selective_delta: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="Risk that the selective threshold's error guarantee fails (1 - confidence "
        "of the Clopper-Pearson bound), when a scan's request names no delta.",
    )
    import_root: Path | None = Field(
        default=None,
        description="Folder the API may import plates from (POST /imports takes paths under "
        "it); unset: imports over the API are off (403), `mscreen import DIR` still works.",
    )

    @field_validator("acquisition_channels", mode="before")
    @classmethod
    def _channel_list(cls, value: object) -> object:
        if isinstance(value, str):  # MSCREEN_ACQUISITION_CHANNELS=Phase,Brightfield
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("acquisition_channels")
    @classmethod
    def _valid_channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_channels(value)  # ValueError naming what is wrong

    @field_validator("threshold_policy")
    @classmethod
    def _valid_threshold_policy(cls, value: str) -> str:
        return str(ThresholdPolicy.parse(value))  # ValueError naming the accepted forms

    @field_validator("microscope")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        get_backend(name)  # ValueError naming the known backends
        return name

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "production" and self.auth_disabled:
            raise ValueError("MSCREEN_AUTH_DISABLED is refused with MSCREEN_ENVIRONMENT=production")
        if self.environment == "production" and self.resolved_database_url.startswith("sqlite"):
            raise ValueError(
                "MSCREEN_ENVIRONMENT=production needs MSCREEN_DATABASE_URL pointing at "
                "PostgreSQL; SQLite is for a single workstation"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
