"""Scan claiming: one running scan per microscope, in order; an expired lease is taken over."""

from datetime import UTC, datetime, timedelta

from app.runtime import build_runtime
from app.scans import create_scan
from app.schemas.scans import ScanCreate
from app.worker import ScanWorker
from store.db import session_scope
from store.orm import Scan, ScanStatus


def test_one_scan_per_microscope_in_order_and_takeover_after_lease_expiry(settings):
    settings.microscope = "simulated"
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            ids = [
                create_scan(
                    session,
                    ScanCreate(plate_barcode=f"Q-{i}", wells=["A1"]),
                    microscope=runtime.microscope_name,
                ).id
                for i in range(3)
            ]
            other = create_scan(
                session, ScanCreate(plate_barcode="OTHER", wells=["A1"]), microscope="another-scope"
            ).id
        first = runtime.worker
        second = ScanWorker(first.context, lease_seconds=30)
        assert first.owner != second.owner

        assert first._claim() == ids[0]  # oldest first
        assert second._claim() is None  # the microscope is busy while the lease is live
        with session_scope(runtime.session_factory) as session:
            assert session.get_one(Scan, ids[1]).status == ScanStatus.queued
            assert session.get_one(Scan, other).status == ScanStatus.queued  # not ours

        # The first worker dies: its lease runs out, and the interrupted scan is resumed first.
        with session_scope(runtime.session_factory) as session:
            session.get_one(Scan, ids[0]).lease_expires_at = datetime.now(UTC) - timedelta(
                seconds=1
            )
        assert second._claim() == ids[0]
        assert not first.renew_lease(ids[0])  # the dead worker cannot renew or write any more
        assert second.renew_lease(ids[0])
        with session_scope(runtime.session_factory) as session:
            scan = session.get_one(Scan, ids[0])
            assert scan.lease_owner == second.owner and scan.status == ScanStatus.running

        # Running it to the end frees the microscope for the queue, in order.
        second._run(ids[0])
        assert second._claim() == ids[1]
    finally:
        runtime.close()


def test_a_cancel_cannot_be_undone_by_the_worker_finishing(settings):
    """The worker's final write is conditional: a scan cancelled meanwhile stays cancelled."""
    from app.scans import ScanStateError, cancel_scan

    settings.microscope = "simulated"
    runtime = build_runtime(settings)
    try:
        with session_scope(runtime.session_factory) as session:
            scan_id = create_scan(
                session,
                ScanCreate(plate_barcode="RACE-1", wells=["A1"]),
                microscope=runtime.microscope_name,
            ).id
        worker = runtime.worker
        assert worker._claim() == scan_id
        with session_scope(runtime.session_factory) as session:
            cancel_scan(session, session.get_one(Scan, scan_id))
        worker.finish(scan_id, ScanStatus.completed, None)
        with session_scope(runtime.session_factory) as session:
            scan = session.get_one(Scan, scan_id)
            assert scan.status == ScanStatus.cancelled
            try:
                cancel_scan(session, scan)
            except ScanStateError as exc:
                assert "already cancelled" in str(exc)
            else:
                raise AssertionError("cancelling twice must fail")
    finally:
        runtime.close()
