"""API keys (admin): create (the secret is shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.api.deps import Admin, RuntimeDep, SessionDep
from app.auth import audit, create_key, revoke_key
from app.orm import ApiKey, Role

router = APIRouter(prefix="/keys", tags=["auth"])


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


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create(body: KeyCreate, session: SessionDep, caller: Admin) -> KeyCreated:
    try:
        secret = create_key(session, body.name, body.role)
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    audit(session, caller.name, "key.create", f"key:{body.name}", role=body.role.value)
    session.commit()  # before the secret leaves: the key must work the moment it is shown
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
        for k in session.scalars(select(ApiKey).order_by(ApiKey.id))
    ]


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def revoke(name: str, session: SessionDep, runtime: RuntimeDep, caller: Admin) -> None:
    try:
        revoke_key(session, name)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    audit(session, caller.name, "key.revoke", f"key:{name}")
    session.commit()
    runtime.key_cache.clear()
