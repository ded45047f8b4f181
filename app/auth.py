"""API keys with roles, and the audit trail of writes.

A key is ``msk_<random>``; only its SHA-256 is stored (the secret has 256 bits of entropy, so a
slow password hash would add nothing). Roles nest: viewer < operator < admin.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ConflictError, NotFoundError
from store.orm import ApiKey, AuditEvent, Role

KEY_PREFIX = "msk_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and role."""

    name: str
    role: Role

    def allows(self, needed: Role) -> bool:
        return self.role.allows(needed)


class KeyCache:
    """Recently validated keys, for ``ttl_seconds``: a revoked key stops working in this process
    at once (the revoking request clears the cache) and in other processes within the TTL."""

    def __init__(self, ttl_seconds: float = 10.0) -> None:
        self.ttl_seconds = ttl_seconds
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, secret: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(hash_key(secret))
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, secret: str, principal: Principal) -> None:
        with self._lock:
            self._entries[hash_key(secret)] = (principal, time.monotonic() + self.ttl_seconds)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, name: str, role: Role) -> str:
    """Store a new key and return its secret (shown once, never stored)."""
    if session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
        raise ConflictError(f"an API key named {name!r} already exists")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, role=role, prefix=secret[:12], key_hash=hash_key(secret)))
    session.flush()
    return secret


def authenticate(session: Session, secret: str) -> Principal | None:
    """The principal of a valid, unrevoked key, else None."""
    if not secret.startswith(KEY_PREFIX):
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if key is None or key.revoked_at is not None:
        return None
    return Principal(name=key.name, role=key.role)


def revoke_key(session: Session, name: str) -> None:
    key = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if key is None:
        raise NotFoundError(f"no API key named {name!r}")
    key.revoked_at = key.revoked_at or datetime.now(UTC)


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def audit(
    session: Session,
    actor: str,
    action: str,
    target: str,
    *,
    reason: str | None = None,
    before: Any = None,
    after: Any = None,
    **details: Any,
) -> None:
    """Record a write in the same transaction as the write itself.

    ``before`` and ``after`` are the changed values (JSON-able) where the write replaced or
    removed something, so the trail says what a change did, not only that it happened;
    ``reason`` is the actor's own words for it.
    """
    if before is not None or after is not None:
        details = {**details, "before": before, "after": after}
    session.add(
        AuditEvent(actor=actor, action=action, target=target, reason=reason, details=details)
    )


def issue_key(session: Session, name: str, role: Role, *, actor: str) -> str:
    """:func:`create_key`, audited; the caller's transaction must commit before showing it."""
    secret = create_key(session, name, role)
    audit(session, actor, "key.create", f"key:{name}", role=role.value)
    return secret


def revoke(session: Session, name: str, *, actor: str, cache: KeyCache | None = None) -> None:
    """Revoke ``name``, audited, committed, then forget this process's cached keys (other
    processes forget it within their cache's TTL).

    The commit comes before the cache is cleared: cleared first, a request in between could
    re-cache the still-valid key for another few seconds.
    """
    revoke_key(session, name)
    audit(session, actor, "key.revoke", f"key:{name}")
    session.commit()
    if cache is not None:
        cache.clear()


def audit_events(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[AuditEvent]:
    """The audit trail, oldest first, from the event after ``after_id`` (a cursor: the trail
    only grows, so paging by id never skips or repeats an event)."""
    query = select(AuditEvent).where(AuditEvent.id > after_id)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if target is not None:
        query = query.where(AuditEvent.target == target)
    return list(session.scalars(query.order_by(AuditEvent.id).limit(limit)))
