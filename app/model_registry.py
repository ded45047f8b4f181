"""Model versions in the database, mirrored from the model repository on disk, and the two
merged for listing."""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.schemas.models import ModelVersionPublic
from models.metrics import json_safe
from models.repository import ModelArtifact, ModelRepository
from store.orm import ModelVersion

logger = logging.getLogger(__name__)


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
            raise RuntimeError(
                f"model {artifact.name} v{artifact.version} on disk ({artifact.model_path}) is not "
                f"the file registered earlier (sha256 {row.sha256[:12]}... != {sha256[:12]}...); "
                "publish changed weights as a new version"
            )
        return row
    card = json_safe(artifact.card())  # a card written by hand may hold NaN
    row = ModelVersion(
        name=artifact.name,
        version=artifact.version,
        path=str(artifact.model_path),
        sha256=sha256,
        card=card,
        parity_passed=bool(card.get("parity", {}).get("passed", False)),
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
    """Every version in the repository on disk, with its card and its database status."""
    rows = {(r.name, r.version): r for r in session.scalars(select(ModelVersion))}
    out = []
    for name in repository.names():
        for version in repository.versions(name):
            card = repository.get(name, version).card()
            row = rows.get((name, version))
            out.append(
                ModelVersionPublic(
                    name=name,
                    version=version,
                    active=bool(row and row.active),
                    parity_passed=bool(card.get("parity", {}).get("passed", False)),
                    sha256=row.sha256 if row else None,
                    registered=row is not None,
                    card=card,
                )
            )
    return out


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
