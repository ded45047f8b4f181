"""API keys: create (the secret is shown once), list."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from store.orm import Role


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    role: Role


class KeyCreated(BaseModel):
    name: str
    role: Role
    key: str = Field(description="The secret; shown only now")


class KeyPublic(BaseModel):
    name: str
    role: Role
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
