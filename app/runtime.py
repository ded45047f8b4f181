"""Wiring: builds the database, model, microscope and worker from :class:`Settings`.

The API and the CLI both start from :func:`build_runtime`, so ``mscreen scan`` runs exactly the
service's code path (same worker, database and model) without an HTTP hop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app import db, model_registry
from app.classifier import WellClassifier
from app.settings import Settings
from app.storage import ImageStore
from app.worker import ScanWorker, WorkerContext
from hardware.microscope import PlateScanner, StepScanner
from hardware.simulation import SimulatedMicroscope, SimulationConfig
from models.repository import ModelRepository
from models.runtime import OnnxClassifier

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    model: OnnxClassifier
    model_version_id: int
    microscope_name: str
    worker: ScanWorker

    def close(self) -> None:
        self.worker.stop()
        self.engine.dispose()


def build_scanner(settings: Settings) -> tuple[str, PlateScanner, int | None]:
    """The configured microscope as a plate scanner: (name, scanner, camera bit depth)."""
    if settings.microscope == "simulated":
        config = SimulationConfig(seed=settings.simulation_seed)
        return "simulated", StepScanner(SimulatedMicroscope(config)), config.bit_depth
    raise ValueError(f"unknown microscope backend {settings.microscope!r}")


def build_runtime(settings: Settings) -> Runtime:
    url = settings.resolved_database_url
    if settings.auto_migrate:
        db.upgrade(url)
    engine = db.make_engine(url)
    session_factory = db.make_session_factory(engine)

    artifact = ModelRepository(settings.model_repository).get(
        settings.model_name, settings.model_version
    )
    model = OnnxClassifier(
        artifact.model_path,
        providers=settings.onnx_provider,
        intra_op_threads=settings.inference_threads,
    )
    with db.session_scope(session_factory) as session:
        row = model_registry.register(session, artifact)
        model_registry.activate(session, row)
        model_version_id = row.id
    logger.info("model %s v%d on %s", artifact.name, artifact.version, model.provider)

    microscope_name, scanner, bit_depth = build_scanner(settings)
    context = WorkerContext(
        session_factory=session_factory,
        scanner=scanner,
        classifier=WellClassifier(model, bit_depth=bit_depth),
        model_version_id=model_version_id,
        image_store=ImageStore(settings.resolved_image_dir),
        microscope_name=microscope_name,
    )
    worker = ScanWorker(context, poll_seconds=settings.worker_poll_seconds)
    return Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        model=model,
        model_version_id=model_version_id,
        microscope_name=microscope_name,
        worker=worker,
    )
