"""Annotated dependencies shared by the routers: runtime, DB session, caller and role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from app.auth import Principal, authenticate
from app.runtime import Runtime
from store.db import session_scope
from store.orm import Role

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An mscreen API key")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with session_scope(runtime.session_factory) as session:
        yield session


# scope="function": the session commits when the endpoint returns and before the response is
# sent, so a client never sees a success whose commit then failed (and a key works the moment it
# is shown).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

ANONYMOUS = Principal(name="anonymous", role=Role.admin)


def get_principal(
    request: Request,
    runtime: RuntimeDep,
    api_key: Annotated[str | None, Security(api_key_header)],
) -> Principal:
    """The caller, from the ``X-API-Key`` header (401 without a valid key).

    The request guard (app/api/guard.py) has normally found it already, before the body was
    read; the lookup here covers an app run without the guard. Valid keys are cached for a few
    seconds per process (see :class:`app.auth.KeyCache`), so a busy client does not cost a
    database round trip per request.
    """
    found: Principal | None = getattr(request.state, "principal", None)
    if found is not None:
        return found
    if runtime.settings.auth_disabled:
        return ANONYMOUS
    if not api_key:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing X-API-Key header",
            headers={"WWW-Authenticate": "APIKey"},
        )
    principal = runtime.key_cache.get(api_key)
    if principal is None:
        with session_scope(runtime.session_factory) as session:
            principal = authenticate(session, api_key)
        if principal is not None:
            runtime.key_cache.put(api_key, principal)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid or revoked API key",
            headers={"WWW-Authenticate": "APIKey"},
        )
    return principal


def require(role: Role) -> Callable[..., Principal]:
    """Dependency factory: the caller, if its role is at least ``role`` (else 403)."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.allows(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this needs the {role.value} role; key {principal.name!r} is "
                f"{principal.role.value}",
            )
        return principal

    return check


Viewer = Annotated[Principal, Depends(require(Role.viewer))]
Operator = Annotated[Principal, Depends(require(Role.operator))]
Admin = Annotated[Principal, Depends(require(Role.admin))]
