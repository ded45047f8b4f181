"""The audit trail (admin): who changed what, when and why; read-only, paged by a cursor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Admin, SessionDep
from app.auth import audit_events
from app.schemas.audit import AuditEventPublic, AuditPage
from app.schemas.common import MAX_ID, TEXT_PATTERN

router = APIRouter(prefix="/audit", tags=["audit"])

Filter = Annotated[str | None, Query(max_length=128, pattern=TEXT_PATTERN)]


@router.get("", response_model=AuditPage)
def read_audit_trail(
    session: SessionDep,
    _: Admin,
    actor: Filter = None,
    action: Filter = None,
    target: Filter = None,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="Events after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    """Audit events oldest first, optionally of one actor, action or target (e.g. ``scan:12``)."""
    events = audit_events(
        session, actor=actor, action=action, target=target, after_id=after_id, limit=limit
    )
    last = events[-1].id if len(events) == limit else None
    return AuditPage(items=[AuditEventPublic.of(e) for e in events], next_after_id=last)
