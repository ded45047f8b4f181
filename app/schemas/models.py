"""Model versions (with their cards) and retraining runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from models.training_spec import TrainingRequest


class ModelVersionPublic(BaseModel):
    name: str
    version: int
    active: bool
    parity_passed: bool
    sha256: str | None
    registered: bool = Field(description="Known to the database (has served or been activated)")
    card: dict[str, Any] = Field(description="The model card ({} when it cannot be read)")
    valid: bool = Field(
        default=True, description="Its files can serve (card readable, network loadable)"
    )
    problem: str | None = Field(default=None, description="Why it cannot serve, when not valid")


# The API's name for a retraining request; its fields and limits are models.training_spec's.
# (No docstring: it would become the schema's description and change the OpenAPI document.)
class TrainingRunCreate(TrainingRequest):
    pass


TrainingRunStatusName = Literal["queued", "running", "completed", "failed", "cancelled"]


class TrainingRunPublic(BaseModel):
    """A retraining run: queued until the queue starts it, then running in its own process
    until completed, failed or cancelled."""

    id: int
    status: TrainingRunStatusName
    params: dict[str, Any] = Field(description="The training request it was started with")
    model_name: str | None
    model_version: int | None = Field(description="The version it published, once completed")
    error: str | None = Field(description="Why it failed or who cancelled it")
    requested_by: str | None
    host: str | None = Field(description="The machine its process runs (or ran) on")
    pid: int | None = Field(description="Its process id there (also its process group)")
    created_at: AwareDatetime
    started_at: AwareDatetime | None = Field(description="When the queue started it")
    finished_at: AwareDatetime | None
    log_tail: list[str] | None = Field(
        default=None,
        description="The last lines of its log (GET of one run only; null in lists)",
    )


class TrainingRunAccepted(BaseModel):
    """A retraining run accepted into the queue; follow it at ``url``."""

    id: int
    status: TrainingRunStatusName
    url: str
