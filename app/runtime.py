"""Wiring: builds the database, model, microscope and worker from :class:`Settings`.

The API and the CLI both start from :func:`build_runtime`, so ``mscreen scan`` runs exactly the
service's code path (same worker, database and model) without an HTTP hop.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from app import db, model_registry
from app.auth import KeyCache
from app.classifier import WellClassifier
from app.orm import ModelVersion
from app.settings import Settings
from app.storage import ImageStore
from app.worker import ScanWorker, WorkerContext
from hardware.microscope import PlateScanner, StepScanner
from hardware.simulation import SimulatedMicroscope, SimulationConfig
from models.repository import ModelArtifact, ModelRepository
from models.runtime import OnnxClassifier

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    model_repository: ModelRepository
    microscope_name: str
    bit_depth: int | None
    worker: ScanWorker

    def __post_init__(self) -> None:
        self._model_lock = threading.Lock()
        self.key_cache = KeyCache()

    @property
    def classifier(self) -> WellClassifier:
        return self.worker.context.classifier

    @property
    def model(self) -> OnnxClassifier:
        return self.classifier.model

    @property
    def image_store(self) -> ImageStore:
        return self.worker.context.image_store

    def activate_model(self, name: str, version: int) -> ModelVersion:
        """Serve ``name`` v``version`` from the next scan on (the scan in flight keeps its model).

        Raises ModelNotFoundError, or ValueError if its parity check did not pass.
        """
        artifact = self.model_repository.get(name, version)
        with self._model_lock:
            classifier, row = load_and_activate(
                self.settings, self.session_factory, artifact, self.bit_depth
            )
            self.worker.use_model(classifier, row.id)
        return row

    def close(self) -> None:
        self.worker.stop()
        self.engine.dispose()


def load_and_activate(
    settings: Settings,
    session_factory: sessionmaker[Session],
    artifact: ModelArtifact,
    bit_depth: int | None,
) -> tuple[WellClassifier, ModelVersion]:
    """Register ``artifact``, refuse it unless its parity check passed, load it, activate it."""
    model = OnnxClassifier(
        artifact.model_path,
        providers=settings.onnx_provider,
        intra_op_threads=settings.inference_threads,
    )
    with db.session_scope(session_factory) as session:
        row = model_registry.register(session, artifact)
        model_registry.activate(session, row)  # refuses a model whose parity check failed
    logger.info("model %s v%d active on %s", artifact.name, artifact.version, model.provider)
    return WellClassifier(model, bit_depth=bit_depth), row


def build_scanner(settings: Settings) -> tuple[str, PlateScanner, int | None]:
    """The configured microscope as a plate scanner: (name, scanner, camera bit depth)."""
    if settings.microscope == "simulated":
        config = SimulationConfig(seed=settings.simulation_seed)
        return "simulated", StepScanner(SimulatedMicroscope(config)), config.bit_depth
    raise ValueError(f"unknown microscope backend {settings.microscope!r}")


def _serving_artifact(
    settings: Settings, repository: ModelRepository, session_factory: sessionmaker[Session]
) -> ModelArtifact:
    """The version activated earlier (it survives restarts), else the configured one."""
    if settings.model_version is None:
        with db.session_scope(session_factory) as session:
            active = session.scalar(select(ModelVersion).where(ModelVersion.active.is_(True)))
            if active is not None and active.version in repository.versions(active.name):
                return repository.get(active.name, active.version)
    return repository.get(settings.model_name, settings.model_version)


def build_runtime(settings: Settings) -> Runtime:
    url = settings.resolved_database_url
    if settings.auto_migrate:
        db.upgrade(url)
    engine = db.make_engine(url)
    session_factory = db.make_session_factory(engine)
    repository = ModelRepository(settings.model_repository)
    artifact = _serving_artifact(settings, repository, session_factory)
    microscope_name, scanner, bit_depth = build_scanner(settings)
    classifier, model_row = load_and_activate(settings, session_factory, artifact, bit_depth)
    context = WorkerContext(
        session_factory=session_factory,
        scanner=scanner,
        classifier=classifier,
        model_version_id=model_row.id,
        image_store=ImageStore(settings.resolved_image_dir),
        microscope_name=microscope_name,
    )
    return Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        model_repository=repository,
        microscope_name=microscope_name,
        bit_depth=bit_depth,
        worker=ScanWorker(
            context, poll_seconds=settings.worker_poll_seconds, lease_seconds=settings.lease_seconds
        ),
    )
