"""Model versions in the database, mirrored from the model repository on disk, and the two
merged for listing."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.schemas.models import ModelVersionPublic
from models.metrics import json_safe
from models.repository import BrokenModelError, ModelArtifact, ModelNotFoundError, ModelRepository
from store.orm import ModelVersion

logger = logging.getLogger(__name__)


class ArtifactChangedError(RuntimeError):
    """The network on disk is not the file registered under this version."""


def register(session: Session, artifact: ModelArtifact) -> ModelVersion:
    """Return the row for ``artifact``, inserting it on first sight."""
    row = session.scalar(
        select(ModelVersion).where(
            ModelVersion.name == artifact.name, ModelVersion.version == artifact.version
        )
    )
    sha256 = artifact.sha256()
    if row is not None:
        if row.sha256 != sha256:
            raise ArtifactChangedError(_changed(artifact, row.sha256, sha256))
        return row
    card = json_safe(artifact.card())  # a card written by hand may hold NaN
    row = ModelVersion(
        name=artifact.name,
        version=artifact.version,
        path=str(artifact.model_path),
        sha256=sha256,
        card=card,
        parity_passed=_parity_passed(card),
    )
    session.add(row)
    session.flush()
    logger.info("registered model %s v%d", artifact.name, artifact.version)
    return row


def activate(session: Session, row: ModelVersion) -> None:
    """Make ``row`` the one active version (only if its parity check passed)."""
    if not row.parity_passed:
        raise ValueError(
            f"model {row.name} v{row.version} did not pass its ONNX parity check; not activating"
        )
    session.execute(update(ModelVersion).where(ModelVersion.id != row.id).values(active=False))
    row.active = True


def list_versions(session: Session, repository: ModelRepository) -> list[ModelVersionPublic]:
    """Every version in the repository on disk, with its card and its database status.

    A version that cannot serve (card not JSON, network not loadable, weights changed since it
    was registered) is listed with ``valid=False`` and the reason; it never fails the listing.
    """
    rows = {(r.name, r.version): r for r in session.scalars(select(ModelVersion))}
    out = []
    for name in repository.names():
        for version in repository.versions(name):
            try:
                artifact = repository.get(name, version)
            except ModelNotFoundError:  # removed while we listed
                continue
            row = rows.get((name, version))
            problem = repository.problem(artifact)
            try:
                card = dict(json_safe(artifact.card()))  # a card written by hand may hold NaN
            except BrokenModelError as exc:
                card, problem = {}, problem or str(exc)
            if problem is None and row is not None:
                try:
                    sha256 = repository.sha256(artifact)
                except OSError as exc:  # removed or unreadable since it was checked
                    problem = f"{artifact.label}: its files cannot be read ({type(exc).__name__})"
                else:
                    if sha256 != row.sha256:
                        problem = _changed(artifact, row.sha256, sha256)
            out.append(
                ModelVersionPublic(
                    name=name,
                    version=version,
                    active=bool(row and row.active),
                    parity_passed=_parity_passed(card),
                    sha256=row.sha256 if row else None,
                    registered=row is not None,
                    card=card,
                    valid=problem is None,
                    problem=problem,
                )
            )
    return out


def _parity_passed(card: dict[str, Any]) -> bool:
    parity = card.get("parity")
    return isinstance(parity, dict) and bool(parity.get("passed", False))


def _changed(artifact: ModelArtifact, registered: str, on_disk: str) -> str:
    return (
        f"{artifact.label} on disk is not the file registered earlier (sha256 "
        f"{registered[:12]}... != {on_disk[:12]}...); publish changed weights as a new version"
    )


def public(row: ModelVersion) -> ModelVersionPublic:
    """An activated version as the API shows it."""
    return ModelVersionPublic(
        name=row.name,
        version=row.version,
        active=row.active,
        parity_passed=row.parity_passed,
        sha256=row.sha256,
        registered=True,
        card=row.card,
    )
