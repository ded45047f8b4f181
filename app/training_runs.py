"""Retraining runs started from the API: a bounded queue, each run in its own process group.

Lifecycle. ``POST /training-runs`` writes a ``queued`` row (nothing is written when training
cannot run here: 503; or when too many already wait: 409). The queue's dispatcher, one thread
per service process, claims the oldest queued run with a conditional UPDATE queued -> running
(so two service processes sharing a database never start the same run) while fewer than
``training_max_running`` run on this host, and starts ``python -m cli -v train --run-id N`` in a
new session: the child and its data-preparation pool form one process group, which cancelling
and reaping kill as a whole (SIGTERM, then SIGKILL after a grace period). The child reports its
start and outcome on the row with conditional updates, so a run cancelled meanwhile stays
``cancelled``.

The same thread polls its children (no zombie stays) and reaps: a ``running`` row of this host
whose process is gone, a zombie, or a pid now used by an unrelated process (the service that
started it was killed, the machine rebooted) is marked failed with the reason, and what remains
of its process group is killed. Runs of other hosts are left to their own services.

Stopping the service stops the thread, not the runs: a child keeps training and reports its
outcome itself; the next service on this host reaps it if it dies unreported.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, CursorResult, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.auth import audit
from app.errors import ConflictError, NotFoundError, UnavailableError
from app.schemas.models import TrainingRunPublic
from models.repository import scrub_paths
from models.training_spec import TrainingRequest, TrainingSpec
from store.db import session_scope
from store.orm import TrainingRun, TrainingRunStatus

if TYPE_CHECKING:
    from app.runtime import Runtime
    from app.settings import Settings

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
# What `pip install 'mscreen[train]'` adds; looked up, never imported, in the request path.
TRAIN_EXTRA_MODULES = ("torch", "onnx", "sklearn")
# The project's own packages: a model repository inside one of them is the bundled, read-only
# one (or the source checkout), never a place to publish into.
PROJECT_PACKAGES = ("app", "cli", "hardware", "migrations", "models", "store", "training")
# A row claimed (running, no pid yet) for longer than this: the service that claimed it stopped
# before it could start the process.
CLAIM_TIMEOUT_S = 120.0
# How long the queue watches (and reaps) what is left of a run's process group after its leader.
ORPHAN_WATCH_S = 60.0
FIX_REPOSITORY = (
    "set MSCREEN_MODEL_REPOSITORY to a writable folder outside the installation (e.g. under "
    "the data folder; copy the bundled models there to keep serving them) and restart the service"
)


def this_host() -> str:
    return socket.gethostname()[:255]


def missing_train_modules() -> list[str]:
    """The modules of the ``train`` extra this interpreter lacks (found, not imported)."""
    missing = []
    for name in TRAIN_EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install of it
            found = False
        if not found:
            missing.append(name)
    return missing


@lru_cache(maxsize=1)
def _package_dirs() -> tuple[Path, ...]:
    # From this file, not importlib.find_spec: a folder named like a package in the working
    # directory (a ./models repository!) would otherwise count as the package.
    install_root = Path(__file__).resolve().parents[1]
    return tuple(install_root / name for name in PROJECT_PACKAGES)


def repository_problem(repository: Path) -> str | None:
    """Why a training run must not publish into ``repository``, else None (no path in it)."""
    resolved = repository.resolve()
    if any(resolved.is_relative_to(package) for package in _package_dirs()):
        return (
            "the configured model repository is the one bundled inside the installed mscreen "
            f"package (read-only; a version published there is lost or lands in the source "
            f"checkout): {FIX_REPOSITORY}"
        )
    existing = resolved
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"the configured model repository is not writable by the service: {FIX_REPOSITORY}"
    return None


def training_unavailable(settings: Settings) -> str | None:
    """Why no training run can run on this service, else None. Cheap: no heavy import."""
    if not settings.training_enabled:
        return (
            "training runs are disabled on this service (MSCREEN_TRAINING_ENABLED=false); "
            "enable them and restart, or train with `mscreen train` on a training machine"
        )
    missing = missing_train_modules()
    if missing:
        return (
            f"training needs the 'train' extra, which this service lacks ({', '.join(missing)} "
            "not installed): pip install 'mscreen[train]' and restart the service"
        )
    return repository_problem(settings.model_repository)


# -- the API's side -------------------------------------------------------------------------


def start_training_run(runtime: Runtime, request: TrainingRequest, *, requested_by: str) -> int:
    """Queue a run (its spec, audited) for the dispatcher; returns its id.

    UnavailableError (503) when training cannot run here, ConflictError (409) when
    ``training_max_queued`` runs already wait; nothing is written then. The child reads its
    spec from the row, so the API and the CLI share one spelling of the parameters
    (models.training_spec).
    """
    settings = runtime.settings
    problem = training_unavailable(settings)
    if problem is not None:
        raise UnavailableError(problem)
    params = request.model_dump(mode="json")
    with session_scope(runtime.session_factory) as session:
        waiting = session.scalar(
            select(func.count())
            .select_from(TrainingRun)
            .where(TrainingRun.status == TrainingRunStatus.queued)
        )
        if (waiting or 0) >= settings.training_max_queued:
            raise ConflictError(
                f"{waiting} training runs already wait (the limit, MSCREEN_TRAINING_MAX_QUEUED, "
                f"is {settings.training_max_queued}); retry when one has started, or cancel one "
                "(POST /api/v1/training-runs/{run_id}/cancel)"
            )
        run = TrainingRun(
            params=params,
            requested_by=requested_by,
            model_name=request.name,
            status=TrainingRunStatus.queued,
        )
        session.add(run)
        session.flush()
        run_id = run.id
        audit(session, requested_by, "training.start", f"training-run:{run_id}", **params)
    runtime.training.wake()
    logger.info("training run %d queued by %s", run_id, requested_by)
    return run_id


def run_or_error(session: Session, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFoundError(f"no training run {run_id}")
    return run


def list_runs(
    session: Session,
    *,
    status: TrainingRunStatus | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[TrainingRun]:
    """Runs newest first; page with ``before_id`` = the last id of the previous page."""
    query = select(TrainingRun)
    if status is not None:
        query = query.where(TrainingRun.status == status)
    if before_id is not None:
        query = query.where(TrainingRun.id < before_id)
    return list(session.scalars(query.order_by(TrainingRun.id.desc()).limit(limit)))


def cancel_training_run(
    runtime: Runtime, run_id: int, *, actor: str, reason: str | None = None
) -> int:
    """Cancel a queued run (it never starts) or a running one (its process group is killed).

    NotFoundError (404) for no such run, ConflictError (409) for a finished one. The row is
    ``cancelled`` (committed, audited with the status it replaced) before any signal is sent,
    and the child's own updates are conditional on ``running``, so it stays cancelled.
    """
    note = f"cancelled by {actor}" + (f": {reason}" if reason else "")
    with session_scope(runtime.session_factory) as session:
        run = run_or_error(session, run_id)
        before = run.status
        if before.finished:
            raise ConflictError(
                f"training run {run_id} is already {before.value}; only a queued or running "
                "run can be cancelled"
            )
        changed = _set_finished(
            session, run_id, TrainingRunStatus.cancelled, error=note, only_from=(before,)
        )
        if not changed:  # it moved on (started or finished) since it was read: say so
            session.rollback()
            now = run_or_error(session, run_id).status
            raise ConflictError(
                f"training run {run_id} changed from {before.value} to {now.value} meanwhile; "
                "retry the cancel if it is still wanted"
            )
        audit(
            session,
            actor,
            "training.cancel",
            f"training-run:{run_id}",
            reason=reason,
            before={"status": before.value},
            after={"status": TrainingRunStatus.cancelled.value},
        )
        pid, host = run.pid, run.host
    if before == TrainingRunStatus.running:
        runtime.training.kill_cancelled(run_id, pid, host)
    logger.info("training run %d cancelled by %s (was %s)", run_id, actor, before.value)
    return run_id


def training_run_view(
    run: TrainingRun, *, with_log: bool = True, settings: Settings | None = None
) -> TrainingRunPublic:
    """The API's view of a run; ``with_log``: the tail of its log (server paths scrubbed)."""
    log_tail: list[str] | None = None
    error = run.error
    paths = _server_paths(settings)
    if with_log:
        log_tail = []
        if run.log_path and Path(run.log_path).is_file():
            lines = _tail(Path(run.log_path), LOG_TAIL_LINES)
            # tqdm redraws with carriage returns; keep the last state of each line.
            log_tail = [scrub_paths(line.rsplit("\r", 1)[-1], *paths) for line in lines]
    if error:
        error = scrub_paths(error, *paths)
    return TrainingRunPublic(
        id=run.id,
        status=run.status.value,
        params=run.params,
        model_name=run.model_name,
        model_version=run.model_version,
        error=error,
        requested_by=run.requested_by,
        host=run.host,
        pid=run.pid,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        log_tail=log_tail,
    )


def _server_paths(settings: Settings | None) -> list[Path]:
    if settings is None:
        return []
    return [settings.model_repository, settings.data_dir, settings.resolved_image_dir]


def _tail(path: Path, lines: int, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a log that may be large (read from its end only)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - max_bytes))
        text = handle.read().decode(errors="replace")
    return text.splitlines()[-lines:]


# -- the child's side (cli/train.py) --------------------------------------------------------


def spec_of(session: Session, run_id: int) -> TrainingSpec:
    """The spec a run was started with (validated again: the row is data, not trusted code)."""
    return TrainingSpec.model_validate(session.get_one(TrainingRun, run_id).params)


def mark_running(session: Session, run_id: int) -> bool:
    """The child's start: records its pid and host. False when the run is no longer to run
    (cancelled, or already finished): the child must then exit without training.

    A run the queue claimed is ``running`` already; a queued one (``mscreen train --run-id``
    started by hand) is claimed here, atomically, as the dispatcher would."""
    now = datetime.now(UTC)
    claimed = _update(
        session,
        run_id,
        (TrainingRunStatus.running, TrainingRunStatus.queued),
        status=TrainingRunStatus.running,
        pid=os.getpid(),
        host=this_host(),
    )
    if claimed:
        run = session.get_one(TrainingRun, run_id)
        if run.started_at is None:
            run.started_at = now
    return claimed


def mark_finished(
    session: Session, run_id: int, *, version: int | None = None, error: str | None = None
) -> bool:
    """The child's outcome; False (nothing changed) when the run is no longer running (it was
    cancelled, or the reaper already failed it): a cancel is never overwritten."""
    status = TrainingRunStatus.failed if error else TrainingRunStatus.completed
    return _set_finished(session, run_id, status, error=error, version=version)


def _set_finished(
    session: Session,
    run_id: int,
    status: TrainingRunStatus,
    *,
    error: str | None = None,
    version: int | None = None,
    only_from: Sequence[TrainingRunStatus] = (TrainingRunStatus.running,),
) -> bool:
    return _update(
        session,
        run_id,
        only_from,
        status=status,
        error=error,
        model_version=version,
        finished_at=datetime.now(UTC),
    )


def _update(
    session: Session,
    run_id: int,
    only_from: Sequence[TrainingRunStatus],
    *,
    conditions: dict[str, Any] | None = None,
    **values: Any,
) -> bool:
    """UPDATE the run only while its status is one of ``only_from``; True if it did."""
    where = [TrainingRun.id == run_id, TrainingRun.status.in_(list(only_from))]
    where += [getattr(TrainingRun, column) == value for column, value in (conditions or {}).items()]
    return _update_where(session, where, **values) == 1


def _update_where(session: Session, where: Sequence[ColumnElement[bool]], **values: Any) -> int:
    """UPDATE the runs matching ``where``; how many it changed."""
    statement = update(TrainingRun).where(*where).values(**values)
    options = {"synchronize_session": False}
    result = cast("CursorResult[Any]", session.execute(statement, execution_options=options))
    session.expire_all()
    return int(result.rowcount)


# -- processes ------------------------------------------------------------------------------


def _proc(pid: int) -> Path | None:
    """/proc/<pid> where this system has /proc, else None."""
    return Path("/proc", str(pid)) if Path("/proc/self").exists() else None


def _is_zombie(pid: int) -> bool:
    proc = _proc(pid)
    if proc is None:
        return False
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return False
    # "pid (comm) state ...": comm may hold spaces and parentheses; the state follows the last ")".
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _names_run(pid: int, run_id: int) -> bool | None:
    """Whether process ``pid``'s command line is a training child for ``run_id``; None where
    there is no /proc to tell."""
    proc = _proc(pid)
    if proc is None:
        return None
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [arg.decode(errors="replace") for arg in argv]
    return any(
        arg == "--run-id" and index + 1 < len(args) and args[index + 1] == str(run_id)
        for index, arg in enumerate(args)
    )


def process_state(pid: int, run_id: int) -> str:
    """``alive`` (pid runs run ``run_id``), ``gone``, ``zombie`` or ``reused`` (pid alive but
    not this run's child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "reused"  # another user's process: never one of ours
    if _is_zombie(pid):
        return "zombie"
    if _names_run(pid, run_id) is False:
        return "reused"
    return "alive"


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to process group ``pgid``; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("process group %d is not ours to signal", pgid)
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` exists (zombies count until reaped)."""
    return signal_group(pgid, cast(signal.Signals, 0))


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux; best effort).

    A child killed mid-run leaves its preparation pool orphaned; once those are killed they
    wait, as zombies, for whoever adopted them - init, which in many containers (or when the
    service is itself PID 1) never reaps them, so their process group never disappears. As a
    subreaper this process adopts them and :meth:`TrainingRunQueue.tick` reaps them.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _stat(pid: str) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process from /proc/<pid>/stat, None if it is gone."""
    try:
        fields = Path("/proc", pid, "stat").read_text().rpartition(")")[2].split()
        return fields[0], int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def reap_group_zombies(groups: set[int], skip: set[int]) -> list[int]:
    """Reap this process's zombie children that belong to one of the process ``groups`` (the
    orphans it adopted from training runs), except ``skip`` (children a Popen still polls)."""
    if not groups or not Path("/proc/self").exists():
        return []
    me, reaped = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        stat = _stat(entry.name)
        if stat is not None and stat[0] == "Z" and stat[1] == me and stat[2] in groups:
            try:
                os.waitpid(int(entry.name), os.WNOHANG)
                reaped.append(int(entry.name))
            except ChildProcessError:
                pass
    return reaped


@dataclass
class _Child:
    run_id: int
    process: subprocess.Popen[bytes]
    kill_at: float | None = None  # monotonic: SIGKILL the group then (SIGTERM was sent)
    reported: bool = False  # its row is finished: the process is on its way out


class TrainingRunQueue:
    """Starts queued runs up to the cap, kills cancelled ones, reaps dead ones (one thread)."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.host = this_host()
        self._children: dict[int, _Child] = {}
        # Groups of runs this process did not start (a previous service's) that were sent
        # SIGTERM: pgid -> monotonic time to SIGKILL what is left.
        self._stragglers: dict[int, float] = {}
        # Process groups of training runs whose adopted orphans this process reaps.
        # pgid -> when its leader was last known alive (monotonic); forgotten after
        # ORPHAN_WATCH_S without a leader (zombies another reaper owns never go away).
        self._groups: dict[int, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        if not become_subreaper():
            logger.info("not a child subreaper here: a killed run's orphans are init's to reap")
        self._thread = threading.Thread(target=self._loop, name="training-queue", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching and reaping; running children keep running (see the module doc)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        # Runs cancelled (or just finished) in the last moments may still be exiting: see them
        # through and reap them (bounded) rather than leave zombies in a process that lives on
        # (tests, an embedding app). Runs still running keep running.
        deadline = time.monotonic() + self.settings.training_kill_grace_seconds + 2.0
        forced = False
        while True:
            try:
                self._poll_children()
                self._escalate_stragglers()
                self._reap_orphans()
            except Exception:  # the database gone already: nothing more to see through
                logger.exception("training-run queue: could not finish its kills")
                return
            with self._lock:
                live = {
                    c.process.pid
                    for c in self._children.values()
                    if c.kill_at is None and not c.reported
                }
                dying = set(self._groups) - live
                if not self._stragglers and not dying:
                    return
            if time.monotonic() >= deadline:
                if forced:
                    logger.warning("training-run queue: process groups %s outlived it", dying)
                    return
                forced, deadline = True, time.monotonic() + 5.0
                for pgid in dying:
                    signal_group(pgid, signal.SIGKILL)
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Run a tick now (a run was queued or cancelled)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the database away for a moment: try again next tick
                logger.exception("training-run queue tick failed")
            self._wake.wait(
                min(0.2, self.settings.training_poll_seconds)
                if self._killing()
                else self.settings.training_poll_seconds
            )
            self._wake.clear()

    def _killing(self) -> bool:
        """Whether processes are being killed (then the loop looks again sooner)."""
        with self._lock:
            dying = any(child.kill_at for child in self._children.values())
            leaders = {child.process.pid for child in self._children.values()}
            return dying or bool(self._stragglers) or bool(set(self._groups) - leaders)

    def tick(self) -> None:
        """One pass: poll children, reap, start what the cap allows. Public for tests."""
        self._poll_children()
        self.reap()
        self._escalate_stragglers()
        self._reap_orphans()
        if not self._stop.is_set():
            self.dispatch()

    # -- children this process started

    def _poll_children(self) -> None:
        with self._lock:
            children = list(self._children.values())
        if not children:
            return
        with session_scope(self.session_factory) as session:
            rows = session.execute(
                select(TrainingRun.id, TrainingRun.status).where(
                    TrainingRun.id.in_([child.run_id for child in children])
                )
            )
            statuses: dict[int, TrainingRunStatus] = {row[0]: row[1] for row in rows}
        now = time.monotonic()
        for child in children:
            pgid = child.process.pid
            code = child.process.poll()  # reaps it: no zombie stays
            status = statuses.get(child.run_id)
            child.reported = status is not None and status.finished
            if code is None:
                if child.kill_at is None and status in (TrainingRunStatus.cancelled, None):
                    logger.info("training run %d: SIGTERM to its process group", child.run_id)
                    signal_group(pgid, signal.SIGTERM)
                    child.kill_at = now + self.settings.training_kill_grace_seconds
                elif child.kill_at is not None and now >= child.kill_at:
                    logger.warning("training run %d: SIGKILL to its process group", child.run_id)
                    signal_group(pgid, signal.SIGKILL)
                continue
            # The leader is gone: whatever is left of its group (the preparation pool) is an
            # orphan. SIGKILL: it holds no state worth a graceful end.
            if signal_group(pgid, signal.SIGKILL):
                logger.warning("training run %d: killed its leftover processes", child.run_id)
            with self._lock:
                self._children.pop(child.run_id, None)
            if status == TrainingRunStatus.running:
                self._fail(child.run_id, _exit_reason(code), pid=pgid)

    def kill_cancelled(self, run_id: int, pid: int | None, host: str | None) -> None:
        """A running run was just cancelled (its row says so): end its process group.

        Its own child: the queue thread sends SIGTERM now (woken) and SIGKILL after the grace
        period. A process of this host that another service started: SIGTERM here (after
        checking the pid still runs this run), SIGKILL later. Another host's run: that host's
        service sees the cancelled row on its next tick."""
        with self._lock:
            ours = run_id in self._children
        if ours:
            self.wake()
            return
        if pid is None or host not in (self.host, None):
            return
        if process_state(pid, run_id) == "alive" and signal_group(pid, signal.SIGTERM):
            with self._lock:
                deadline = time.monotonic() + self.settings.training_kill_grace_seconds
                self._stragglers[pid] = deadline
                self._groups[pid] = time.monotonic()
            self.wake()

    def _reap_orphans(self) -> None:
        now = time.monotonic()
        with self._lock:
            leaders = {child.process.pid for child in self._children.values()}
            for pgid in leaders:
                self._groups[pgid] = now
            groups = dict(self._groups)
        reap_group_zombies(set(groups), leaders)
        for pgid, seen in groups.items():
            if pgid not in leaders and (not group_alive(pgid) or now - seen > ORPHAN_WATCH_S):
                with self._lock:
                    self._groups.pop(pgid, None)

    def _escalate_stragglers(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [pgid for pgid, deadline in self._stragglers.items() if now >= deadline]
            for pgid in due:
                del self._stragglers[pgid]
        for pgid in due:
            signal_group(pgid, signal.SIGKILL)

    # -- reaping runs this process does not hold

    def reap(self) -> None:
        """Fail this host's ``running`` rows whose process is gone; kill their leftovers."""
        with self._lock:
            ours = set(self._children)
        with session_scope(self.session_factory) as session:
            rows = session.execute(
                select(TrainingRun.id, TrainingRun.pid, TrainingRun.started_at).where(
                    TrainingRun.status == TrainingRunStatus.running,
                    or_(
                        TrainingRun.host == self.host,
                        # rows from before hosts were recorded: assume this machine's
                        TrainingRun.host.is_(None) & TrainingRun.pid.is_not(None),
                    ),
                )
            ).all()
            # Earlier versions started a run's process at once and left the row `queued` until
            # the child reported; one still queued with a pid never started: not run now.
            stale = _update_where(
                session,
                (TrainingRun.status == TrainingRunStatus.queued, TrainingRun.pid.is_not(None)),
                status=TrainingRunStatus.failed,
                error="its process never reported (started by an earlier version of the "
                "service); queue it again",
                finished_at=datetime.now(UTC),
            )
            if stale:
                logger.warning("failed %d stale queued training runs", stale)
        claim_cutoff = datetime.now(UTC) - timedelta(seconds=CLAIM_TIMEOUT_S)
        for run_id, pid, started_at in rows:
            if run_id in ours:
                continue
            if pid is None:
                if started_at is None or started_at < claim_cutoff:
                    self._fail(
                        run_id,
                        "the service that claimed it stopped before starting its process; "
                        "queue it again",
                        pid=None,
                    )
                continue
            state = process_state(pid, run_id)
            if state == "alive":
                continue
            reason = {
                "gone": f"its process (pid {pid}) is gone without reporting an outcome: it was "
                "killed, or the machine restarted; see its log and queue it again",
                "zombie": f"its process (pid {pid}) exited without reporting an outcome; see "
                "its log and queue it again",
                "reused": f"its process (pid {pid}) is gone (the pid now belongs to another "
                "process): it was killed, or the machine restarted; queue it again",
            }[state]
            # Its group can only hold its own leftovers: a pid is not reused while a group of
            # that id exists. A reused pid's group is someone else's: left alone.
            failed = self._fail(run_id, reason, pid=pid)
            if failed and state != "reused" and signal_group(pid, signal.SIGKILL):
                logger.warning("training run %d: killed its leftover processes", run_id)
                with self._lock:
                    self._groups[pid] = time.monotonic()

    def _fail(self, run_id: int, reason: str, *, pid: int | None) -> bool:
        """Fail a running run, only if its pid is still ``pid`` (None: not started yet)."""
        with session_scope(self.session_factory) as session:
            changed = _update(
                session,
                run_id,
                (TrainingRunStatus.running,),
                conditions={"pid": pid},
                status=TrainingRunStatus.failed,
                error=reason,
                finished_at=datetime.now(UTC),
            )
        if changed:
            logger.error("training run %d failed: %s", run_id, reason)
        return changed

    # -- dispatching

    def dispatch(self) -> None:
        """Start queued runs, oldest first, while fewer than the cap run on this host."""
        for _ in range(self.settings.training_max_running + 16):  # bounded: lost claims retry
            with session_scope(self.session_factory) as session:
                running = session.scalar(
                    select(func.count())
                    .select_from(TrainingRun)
                    .where(
                        TrainingRun.status == TrainingRunStatus.running,
                        TrainingRun.host == self.host,
                    )
                )
                with self._lock:  # cancelled but still dying: their cores are not free yet
                    dying = sum(1 for child in self._children.values() if child.kill_at)
                if (running or 0) + dying >= self.settings.training_max_running:
                    return
                candidate = session.scalar(
                    select(TrainingRun.id)
                    .where(TrainingRun.status == TrainingRunStatus.queued)
                    .order_by(TrainingRun.id)
                    .limit(1)
                )
                if candidate is None:
                    return
                claimed = _update(
                    session,
                    candidate,
                    (TrainingRunStatus.queued,),
                    status=TrainingRunStatus.running,
                    host=self.host,
                    pid=None,
                    started_at=datetime.now(UTC),
                )
            if claimed:  # else another service claimed it first: look again
                self._spawn(candidate)

    def command(self, run_id: int) -> list[str]:
        return [sys.executable, "-m", "cli", "-v", "train", "--run-id", str(run_id)]

    def _spawn(self, run_id: int) -> None:
        settings = self.settings
        log_dir = settings.data_dir / "training-runs"
        log_path = (log_dir / f"run-{run_id}.log").resolve()
        # The child reports to and publishes into this service's database and repository,
        # whatever its own environment says.
        env = dict(
            os.environ,
            MSCREEN_DATABASE_URL=settings.resolved_database_url,
            MSCREEN_MODEL_REPOSITORY=str(settings.model_repository.resolve()),
            MSCREEN_DATA_DIR=str(settings.data_dir.resolve()),
        )
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    self.command(run_id),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own process group, killed as one
                )
        except OSError as exc:  # claimed but not started: it must not stay running (or queued)
            self._fail(
                run_id,
                f"its training process could not be started ({type(exc).__name__}: "
                f"{exc.strerror or exc}); queue it again",
                pid=None,
            )
            return
        with self._lock:
            self._children[run_id] = _Child(run_id, process)
            self._groups[process.pid] = time.monotonic()
        with session_scope(self.session_factory) as session:
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id)
                .values(pid=process.pid, log_path=str(log_path)),
                execution_options={"synchronize_session": False},
            )
        logger.info("training run %d started as pid %d on %s", run_id, process.pid, self.host)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"its training process {how} without reporting an outcome; see its log"
