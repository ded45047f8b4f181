"""Health: database, microscope, the model and the onnxruntime provider actually in use."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelHealth(BaseModel):
    name: str | None = Field(description="The serving model; null while degraded")
    version: int | None = Field(description="Its version in the model repository")
    provider: str | None = Field(description="The onnxruntime execution provider actually in use")
    providers: list[str]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str
    microscope: str = Field(description="The microscope backend, e.g. pycromanager-sim")
    instrument: str = Field(description="The instrument's id (one scan runs per instrument)")
    autofocus: str = Field(description="How fields are focused (MSCREEN_AUTOFOCUS)")
    model: ModelHealth
    worker_running: bool
    problems: list[str] = Field(description="What makes the service degraded; empty when ok")
