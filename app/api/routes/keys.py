"""API keys (admin): create (the secret is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import Admin, RuntimeDep, SessionDep
from app.auth import issue_key, list_api_keys
from app.auth import revoke as revoke_api_key
from app.schemas.common import KeyNamePath
from app.schemas.keys import KeyCreate, KeyCreated, KeyPublic

router = APIRouter(prefix="/keys", tags=["auth"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create(body: KeyCreate, session: SessionDep, caller: Admin) -> KeyCreated:
    secret = issue_key(session, body.name, body.role, actor=caller.name)
    return KeyCreated(name=body.name, role=body.role, key=secret)


@router.get("", response_model=list[KeyPublic])
def list_keys(session: SessionDep, _: Admin) -> list[KeyPublic]:
    return [
        KeyPublic(
            name=k.name,
            role=k.role,
            prefix=k.prefix,
            created_at=k.created_at,
            revoked_at=k.revoked_at,
        )
        for k in list_api_keys(session)
    ]


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def revoke(name: KeyNamePath, session: SessionDep, runtime: RuntimeDep, caller: Admin) -> None:
    revoke_api_key(session, name, actor=caller.name, cache=runtime.key_cache)
