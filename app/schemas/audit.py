"""The audit trail as the API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from store.orm import AuditEvent


class AuditEventPublic(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="The API key (or CLI user) that made the change")
    action: str = Field(examples=["scan.create", "fct.upload", "model.activate"])
    target: str = Field(examples=["scan:12", "plate:MSC-2026-0001"])
    reason: str | None
    details: dict[str, Any] = Field(
        description="The request's parameters; 'before' and 'after' where it replaced values"
    )

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventPublic:
        return cls(
            id=event.id,
            at=event.at,
            actor=event.actor,
            action=event.action,
            target=event.target,
            reason=event.reason,
            details=event.details,
        )


class AuditPage(BaseModel):
    items: list[AuditEventPublic]
    next_after_id: int | None = Field(
        description="Pass as after_id for the next page; null when this page is the last"
    )
