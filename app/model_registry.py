"""Model versions in the database, mirrored from the model repository on disk."""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.orm import ModelVersion
from models.metrics import json_safe
from models.repository import ModelArtifact

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
