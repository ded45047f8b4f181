"""Wiring: builds the database, model, microscope and worker from :class:`Settings`.

The API and the CLI both start from :func:`build_runtime`, so ``mscreen scan`` runs exactly the
service's code path (same worker, database and model) without an HTTP hop.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import migrations
from app import model_registry
from app.auth import KeyCache
from app.classifier import WellClassifier
from app.errors import ConflictError, NotFoundError, UnavailableError
from app.settings import Settings
from app.worker import ScanWorker, WorkerContext
from hardware.backends import BackendOptions, get_backend
from hardware.microscope import PlateScanner
from hardware.plate import PlateGeometry
from models.inference import OnnxClassifier, RuntimeUnavailableError
from models.repository import ModelArtifact, ModelNotFoundError, ModelRepository
from store import db
from store.images import ImageStore
from store.orm import ModelVersion

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    model_repository: ModelRepository
    microscope_name: str
    bit_depth: int | None  # of the instrument's stored frames (serving_bit_depth)
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

        Raises NotFoundError (no such version), UnavailableError (onnxruntime cannot load it
        here) or ConflictError (its parity check failed; its weights changed under a version).
        """
        try:
            artifact = self.model_repository.get(name, version)
            with self._model_lock:
                classifier, row = load_and_activate(self.settings, self.session_factory, artifact)
                self.worker.use_model(classifier, row.id)
        except ModelNotFoundError as exc:
            raise NotFoundError(str(exc)) from exc
        except RuntimeUnavailableError as exc:
            raise UnavailableError(str(exc)) from exc
        except (ValueError, RuntimeError) as exc:
            raise ConflictError(str(exc)) from exc
        return row

    def close(self) -> None:
        self.worker.stop()
        self.engine.dispose()


def load_and_activate(
    settings: Settings,
    session_factory: sessionmaker[Session],
    artifact: ModelArtifact,
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
    return WellClassifier(model), row


@contextmanager
def _keep_logging_config() -> Iterator[None]:
    """Import Micro-Manager libraries without their logging side effects.

    pymmcore-plus configures logging when first imported: it sets the *root* logger to DEBUG
    (every library's debug lines then reach our handlers) and opens a log file in the user's
    home. The service owns its logging, so the level is restored and the file is off unless
    PYMM_LOG_FILE says otherwise.
    """
    os.environ.setdefault("PYMM_LOG_FILE", "0")
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        root.setLevel(level)


def backend_options(settings: Settings) -> BackendOptions:
    return BackendOptions(
        simulation_seed=settings.simulation_seed,
        mm_app_path=settings.mm_app_path,
        mm_config=settings.mm_config,
        mm_port=settings.mm_port,
        camera_bit_depth=settings.camera_bit_depth,
    )


def serving_bit_depth(settings: Settings) -> int | None:
    """Significant bits of the configured instrument's frames, for its *stored* frames (training
    on them and overlays must scale them as serving did; live frames carry their own)."""
    return get_backend(settings.microscope).bit_depth(backend_options(settings))


def build_scanner(settings: Settings) -> tuple[str, PlateScanner]:
    """The configured microscope backend as a plate scanner: (instrument name, scanner)."""
    backend = get_backend(settings.microscope)
    with _keep_logging_config():
        scanner = backend.build(backend_options(settings))
    return settings.microscope_id or backend.instrument, scanner


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
        migrations.upgrade(url)
    engine = db.make_engine(url)
    session_factory = db.make_session_factory(engine)
    repository = ModelRepository(settings.model_repository)
    artifact = _serving_artifact(settings, repository, session_factory)
    microscope_name, scanner = build_scanner(settings)
    classifier, model_row = load_and_activate(settings, session_factory, artifact)
    context = WorkerContext(
        session_factory=session_factory,
        scanner=scanner,
        classifier=classifier,
        model_version_id=model_row.id,
        image_store=ImageStore(settings.resolved_image_dir),
        microscope_name=microscope_name,
        plate=PlateGeometry(a1_center_um=(settings.plate_a1_x_um, settings.plate_a1_y_um)),
    )
    return Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        model_repository=repository,
        microscope_name=microscope_name,
        bit_depth=serving_bit_depth(settings),
        worker=ScanWorker(
            context, poll_seconds=settings.worker_poll_seconds, lease_seconds=settings.lease_seconds
        ),
    )
