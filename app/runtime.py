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
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import migrations
from app import model_registry
from app.analyses import ClassifierCache
from app.analysis_worker import AnalysisContext, AnalysisWorker
from app.auth import KeyCache
from app.classifier import WellClassifier
from app.errors import (
    ConflictError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from app.settings import Settings
from app.training_runs import TrainingRunQueue
from app.worker import ScanWorker, WorkerContext
from hardware.backends import BackendOptions, get_backend
from hardware.microscope import PlateScanner
from hardware.plate import PlateGeometry
from models.inference import OnnxClassifier, RuntimeUnavailableError
from models.repository import (
    BrokenModelError,
    InvalidModelNameError,
    ModelArtifact,
    ModelNotFoundError,
    ModelRepository,
    load_failure,
)
from store import db
from store.images import ImageStore
from store.orm import ModelVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Activation:
    """A model activation: the version now serving, and the one it replaced (for the audit)."""

    row: ModelVersion
    previous: dict[str, Any] | None  # {"name", "version"} of the version active before


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    model_repository: ModelRepository
    microscope_name: str
    bit_depth: int | None  # of the instrument's stored frames (serving_bit_depth)
    worker: ScanWorker
    training: TrainingRunQueue  # retraining runs: queue, dispatcher, reaper
    analyses: AnalysisWorker  # re-analyses of stored scans with other model versions

    def __post_init__(self) -> None:
        self._model_lock = threading.Lock()
        self.key_cache = KeyCache()
        # (name, version) of the model the worker serves; None while degraded (set by
        # build_runtime and activate_model).
        self.serving: tuple[str, int] | None = None

    @property
    def model_problem(self) -> str | None:
        """Why no model serves (the service runs degraded), else None."""
        if self.worker.context.classifier is not None:
            return None
        return self.worker.context.model_problem or "no model is loaded"

    def require_model(self) -> WellClassifier:
        """The serving classifier; UnavailableError (503) with the reason while degraded."""
        classifier = self.worker.context.classifier
        if classifier is None:
            raise UnavailableError(
                f"no model can serve ({self.model_problem}); an admin must activate a good "
                "version (POST /api/v1/models/{name}/{version}/activate)"
            )
        return classifier

    @property
    def classifier(self) -> WellClassifier:
        return self.require_model()

    @property
    def model(self) -> OnnxClassifier:
        return self.require_model().model

    @property
    def image_store(self) -> ImageStore:
        return self.worker.context.image_store

    def activate_model(self, name: str, version: int) -> Activation:
        """Serve ``name`` v``version`` from the next scan on (the scan in flight keeps its model).
        On a degraded service this is how it recovers: scans are accepted again at once.

        Raises InvalidRequestError (malformed name), NotFoundError (no such version),
        UnavailableError (onnxruntime or its provider is missing here) or ConflictError (its
        files are broken: card not JSON, network not loadable; its parity check failed; its
        weights changed under a registered version). The running model stays on any error.
        """
        try:
            artifact = self.model_repository.get(name, version)
            with self._model_lock:
                previous = _active_version(self.session_factory)
                classifier, row = load_and_activate(self.settings, self.session_factory, artifact)
                self.worker.use_model(classifier, row.id)
                self.serving = (row.name, row.version)
        except InvalidModelNameError as exc:
            raise InvalidRequestError(str(exc)) from exc
        except ModelNotFoundError as exc:
            raise NotFoundError(str(exc)) from exc
        except RuntimeUnavailableError as exc:
            raise UnavailableError(str(exc)) from exc
        except (ValueError, RuntimeError) as exc:  # BrokenModelError, parity, changed weights
            raise ConflictError(str(exc)) from exc
        logger.info("model %s v%d activated (was %s)", name, version, previous)
        return Activation(row, previous)

    def classifier_for(self, version: ModelVersion | None) -> WellClassifier:
        """The classifier of ``version``: the serving one when it is that version (or None),
        else loaded from the model repository into the re-analyses' cache.

        Raises GoneError (that version's files are no longer in the repository), ConflictError
        (they cannot be loaded), UnavailableError (nor can the serving model's, on a degraded
        service, where that is the reason to give).
        """
        if version is None or self.serving == (version.name, version.version):
            return self.classifier
        name = f"model {version.name} v{version.version}"
        try:
            artifact = self.model_repository.get(version.name, version.version)
        except ModelNotFoundError as exc:
            raise GoneError(
                f"{name} is no longer in the model repository ({exc}); restore it to see its "
                "per-pixel calls"
            ) from exc
        try:
            return self.classifiers.get(version.id, artifact)
        except RuntimeUnavailableError as exc:  # onnxruntime or its provider missing here
            raise UnavailableError(str(exc)) from exc
        except Exception as exc:  # a broken network file: onnxruntime's own error types
            if self.serving is None:
                self.require_model()  # degraded: the 503 that says how to recover
            raise ConflictError(
                f"{name} cannot be loaded ({type(exc).__name__}); republish it"
            ) from exc

    @property
    def classifiers(self) -> ClassifierCache:
        """The re-analyses' loaded model versions (not the serving one)."""
        return self.analyses.context.classifiers

    def close(self) -> None:
        self.training.stop()
        self.analyses.stop()
        self.worker.stop()
        self.engine.dispose()


def load_and_activate(
    settings: Settings,
    session_factory: sessionmaker[Session],
    artifact: ModelArtifact,
) -> tuple[WellClassifier, ModelVersion]:
    """Load ``artifact``, register it, refuse it unless its parity check passed, activate it.

    Raises BrokenModelError (no path in its message) when onnxruntime cannot load the network.
    """
    try:
        model = OnnxClassifier(
            artifact.model_path,
            providers=settings.onnx_provider,
            intra_op_threads=settings.inference_threads,
        )
    except RuntimeUnavailableError:
        raise  # this machine's onnxruntime, not the artifact
    except Exception as exc:  # onnxruntime raises its own, non-standard exception classes
        raise BrokenModelError(load_failure(artifact, exc)) from exc
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
        simulation_high_fraction=settings.simulation_high_fraction,
        mm_app_path=settings.mm_app_path,
        mm_config=settings.mm_config,
        mm_port=settings.mm_port,
        camera_bit_depth=settings.camera_bit_depth,
        acquisition_channels=settings.acquisition_channels,
        autofocus=settings.autofocus,
        sim_timing=settings.sim_timing,
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


def _active_version(session_factory: sessionmaker[Session]) -> dict[str, Any] | None:
    with db.session_scope(session_factory) as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.active.is_(True)))
        return None if row is None else {"name": row.name, "version": row.version}


def _start_model(
    settings: Settings, repository: ModelRepository, session_factory: sessionmaker[Session]
) -> tuple[WellClassifier | None, ModelVersion | None, str | None]:
    """The serving model and its row, or (None, None, why) when it cannot be loaded.

    A bad artifact (the active or configured version missing, its card or network unreadable,
    its parity check failed, its weights changed) must not keep the service down: it starts
    degraded (health 503, scans refused, results readable) until an admin activates a good
    version. A missing onnxruntime or execution provider is a broken installation, not an
    artifact, and still fails the start.
    """
    try:
        artifact = _serving_artifact(settings, repository, session_factory)
        classifier, row = load_and_activate(settings, session_factory, artifact)
    except RuntimeUnavailableError:
        raise
    except (ModelNotFoundError, ValueError, RuntimeError) as exc:
        logger.error("no model can serve; the service starts degraded: %s", exc)
        return None, None, str(exc)
    return classifier, row, None


def build_runtime(settings: Settings) -> Runtime:
    url = settings.resolved_database_url
    if settings.auto_migrate:
        migrations.upgrade(url)
    engine = db.make_engine(url)
    session_factory = db.make_session_factory(engine)
    repository = ModelRepository(settings.model_repository)
    microscope_name, scanner = build_scanner(settings)
    classifier, model_row, model_problem = _start_model(settings, repository, session_factory)
    context = WorkerContext(
        session_factory=session_factory,
        scanner=scanner,
        classifier=classifier,
        model_version_id=model_row.id if model_row else None,
        model_problem=model_problem,
        image_store=ImageStore(settings.resolved_image_dir),
        microscope_name=microscope_name,
        plate=PlateGeometry(a1_center_um=(settings.plate_a1_x_um, settings.plate_a1_y_um)),
        plate_results=settings.plate_results,
        bit_depth=serving_bit_depth(settings),
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        model_repository=repository,
        microscope_name=microscope_name,
        bit_depth=serving_bit_depth(settings),
        worker=ScanWorker(
            context, poll_seconds=settings.worker_poll_seconds, lease_seconds=settings.lease_seconds
        ),
        training=TrainingRunQueue(settings, session_factory),
        analyses=build_analysis_worker(settings, session_factory, repository),
    )
    runtime.serving = (model_row.name, model_row.version) if model_row else None
    return runtime


def build_analysis_worker(
    settings: Settings,
    session_factory: sessionmaker[Session],
    repository: ModelRepository,
    *,
    prepare_workers: int | None = None,
) -> AnalysisWorker:
    """The re-analysis worker of this service or command (``prepare_workers``: processes
    preparing fields; None: MSCREEN_REANALYSIS_WORKERS)."""
    workers = settings.reanalysis_workers if prepare_workers is None else prepare_workers
    # With a prepare pool, onnxruntime's own thread pool would fight the pool's processes for
    # the same cores (measured: 100 vs 116 fields/s on 2 cores): one inference thread.
    threads = 1 if workers > 1 else settings.inference_threads
    context = AnalysisContext(
        session_factory=session_factory,
        repository=repository,
        classifiers=ClassifierCache(providers=settings.onnx_provider, intra_op_threads=threads),
        bit_depth=serving_bit_depth(settings),
        prepare_workers=workers,
        batch_size=settings.reanalysis_batch_size,
        write_plate_results=settings.plate_results,
    )
    return AnalysisWorker(
        context, poll_seconds=settings.worker_poll_seconds, lease_seconds=settings.lease_seconds
    )
