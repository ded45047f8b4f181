"""Model versions (with their cards) and retraining runs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from models.training_spec import TrainingRequest


class ModelVersionPublic(BaseModel):
    name: str
    version: int
    active: bool
    parity_passed: bool
    sha256: str | None
    registered: bool = Field(description="Known to the database (has served or been activated)")
    card: dict[str, Any]


# The API's name for a retraining request; its fields and limits are models.training_spec's.
# (No docstring: it would become the schema's description and change the OpenAPI document.)
class TrainingRunCreate(TrainingRequest):
    pass
