"""Health: database, microscope, the model and the onnxruntime provider actually in use."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelHealth(BaseModel):
    name: str
    version: str
    provider: str = Field(description="The onnxruntime execution provider actually in use")
    providers: list[str]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    microscope: str
    model: ModelHealth
    worker_running: bool
