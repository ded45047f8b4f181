"""Leased jobs: what the scan worker (:mod:`app.worker`) and the re-analysis worker
(:mod:`app.analysis_worker`) share.

A job (a :class:`store.orm.Scan` or :class:`store.orm.Analysis` row) is run by the worker that
holds its *lease* (``lease_owner``, ``lease_expires_at``), renewed from a :class:`Heartbeat`
thread while it runs. Every write the worker makes for the job is a conditional UPDATE on the
job's row (still running, still our lease) in the same transaction as the write itself, so a
worker that lost its lease (it stalled past the expiry and another took the job over, or the
job was cancelled) cannot write: :meth:`LeasedWorker.bump_progress` says which, and
:meth:`LeasedWorker.finish` records an outcome only while the lease is ours.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session, sessionmaker

from store.db import session_scope
from store.orm import Analysis, Scan, ScanStatus

logger = logging.getLogger(__name__)


class LeaseLostError(RuntimeError):
    """Another worker took the job over (our lease expired); stop without writing."""


def now() -> datetime:
    return datetime.now(UTC)


class LeasedWorker:
    """A worker that runs leased jobs of one table, one at a time, in a background thread (or
    synchronously with :meth:`run_pending`). Subclasses say which table (``job``) and how to
    claim and run one (:meth:`run_next`).

    Args:
        session_factory: the database.
        poll_seconds: how often an idle worker looks for work.
        lease_seconds: how long a claim lasts without renewal; renewed every third of it.
    """

    job: ClassVar[type[Scan] | type[Analysis]]
    kind: ClassVar[str]  # "scan", "analysis": in thread names and messages

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        poll_seconds: float = 0.5,
        lease_seconds: float = 30.0,
    ) -> None:
        self.session_factory = session_factory
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Progress callback (e.g. the CLI's progress bar): (job id, wells_done, wells_total).
        self.on_progress: Callable[[int, int, int], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"{self.kind}-worker", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_next()
            except Exception:  # keep the worker alive; the job itself is marked failed
                logger.exception("%s worker iteration failed", self.kind)
                ran = False
            if not ran:
                self._stop.wait(self.poll_seconds)

    def run_next(self) -> bool:
        """Claim the next job and run it; False if there is none to claim."""
        raise NotImplementedError

    def run_pending(self) -> int:
        """Run every claimable job now, in this thread. Returns how many ran."""
        count = 0
        while self.run_next():
            count += 1
        return count

    # -- the lease -----------------------------------------------------------------------------
    def _ours(self, job_id: int) -> Any:
        job = self.job
        return and_(
            job.id == job_id, job.lease_owner == self.owner, job.status == ScanStatus.running
        )

    def renew_lease(self, job_id: int) -> bool:
        """Extend our lease; False if it is no longer ours (expired and taken, or cancelled)."""
        with session_scope(self.session_factory) as session:
            result = session.execute(
                update(self.job)
                .where(self._ours(job_id))
                .values(lease_expires_at=now() + timedelta(seconds=self.lease_seconds))
            )
            return getattr(result, "rowcount", 0) == 1

    def bump_progress(self, session: Session, job_id: int) -> int | None:
        """In ``session``'s transaction, count one more well done and renew the lease, first,
        so that it takes the job row's write lock before the well's rows are written: a cancel
        then either commits before it or waits for the commit. The new ``wells_done``, or None
        if the job was cancelled meanwhile (the caller writes nothing).

        Raises:
            LeaseLostError: the job is no longer ours (taken over, or deleted).
        """
        job = self.job
        bumped = session.execute(
            update(job)
            .where(self._ours(job_id))
            .values(
                wells_done=job.wells_done + 1,
                lease_expires_at=now() + timedelta(seconds=self.lease_seconds),
            )
            .returning(job.wells_done)
        ).scalar_one_or_none()
        if bumped is not None:
            return int(bumped)
        status = session.scalar(select(job.status).where(job.id == job_id))
        if status == ScanStatus.cancelled:
            return None
        state = status.value if status is not None else "deleted"
        raise LeaseLostError(f"{self.kind} {job_id} is no longer ours ({state})")

    def finish(self, job_id: int, status: ScanStatus, error: str | None, **values: Any) -> bool:
        """Record the outcome (and ``values``), only if the job still runs under our lease (a
        cancel or another worker's takeover wins); True if it was recorded."""
        with session_scope(self.session_factory) as session:
            result = session.execute(
                update(self.job)
                .where(self._ours(job_id))
                .values(
                    status=status,
                    error=error,
                    finished_at=now(),
                    lease_owner=None,
                    lease_expires_at=None,
                    **values,
                )
            )
        if getattr(result, "rowcount", 0) != 1:
            return False
        logger.info("%s %d %s", self.kind, job_id, status.value)
        return True


class Heartbeat:
    """Renews a job's lease every third of the lease time while the job runs."""

    def __init__(self, worker: LeasedWorker, job_id: int) -> None:
        self.worker = worker
        self.job_id = job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-{worker.kind}-{job_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _beat(self) -> None:
        while not self._stop.wait(self.worker.lease_seconds / 3.0):
            try:
                if not self.worker.renew_lease(self.job_id):
                    return  # cancelled or taken over; the job loop notices at its next well
            except Exception:  # a missed beat is survivable; the next one may succeed
                logger.exception("lease renewal for %s %d failed", self.worker.kind, self.job_id)
