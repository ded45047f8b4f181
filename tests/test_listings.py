"""Discovery (GET /plates, GET /scans), image checksums per well, idempotent POST /scans under
concurrency, bounded parameters (422, never a database error), and a cancel that is final.

Every test runs on SQLite and PostgreSQL (the ``service`` fixture)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from sqlalchemy import event, func, select

from hardware.microscope import ScanPlan
from hardware.sim import SimulationConfig
from hardware.sim.truth import fct_export_csv
from store.db import session_scope
from store.orm import Image, Scan, ScanStatus, WellResult
from tests.conftest import wait_for_scan

API = "/api/v1"


def _scan(service, barcode: str, wells: list[str], fields: int = 1) -> dict:
    response = service.client.post(
        f"{API}/scans",
        json={"plate_barcode": barcode, "wells": wells, "fields_per_well": fields},
    )
    assert response.status_code == 202, response.text
    return wait_for_scan(service.client, response.headers["Location"])


@contextmanager
def _count_statements(service) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        # Requests only: the worker polls the same engine from its own threads.
        if not threading.current_thread().name.startswith(("scan-worker", "lease-scan-")):
            statements.append(statement)

    engine = service.runtime.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


LISTED_TABLES = ("plates", "scans", "model_versions", "wells", "fct_measurements", "images")


def _selects(statements: list[str]) -> int:
    """SELECTs of what the listings read (background threads read other tables meanwhile)."""
    return sum(
        1
        for s in statements
        if s.lstrip().upper().startswith("SELECT")
        and re.search(rf"\bFROM ({'|'.join(LISTED_TABLES)})\b", s)
    )


def test_plate_and_scan_listings_page_filter_and_avoid_n_plus_1(service):
    client = service.client
    assert client.get(f"{API}/plates").json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    first = _scan(service, "LIST-A-1", ["A1"])
    second = _scan(service, "LIST-A-2", ["A1", "A2"])
    _scan(service, "LIST-A-2", ["B1"])  # a newer scan of the same plate
    third = _scan(service, "OTHER_1", ["C3"])
    csv = fct_export_csv(SimulationConfig(seed=0), "LIST-A-1")
    put = client.put(
        f"{API}/plates/LIST-A-1/fct", content=csv, headers={"Content-Type": "text/csv"}
    )
    assert put.status_code == 200, put.text
    queued = client.post(f"{API}/scans", json={"plate_barcode": "LIST-Q", "wells": ["A1"]})
    client.post(queued.headers["Location"] + "/cancel")

    viewer = service.headers("viewer")
    client.get(f"{API}/health", headers=viewer)  # the key is looked up (and cached) once
    assert client.get(f"{API}/scans?limit=1", headers=viewer).status_code == 200
    with _count_statements(service) as statements:
        page = client.get(f"{API}/plates", headers=viewer)
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["total"] == 4 and body["limit"] == 50 and body["offset"] == 0
    assert [p["barcode"] for p in body["items"]] == ["LIST-Q", "OTHER_1", "LIST-A-2", "LIST-A-1"]
    by_barcode = {p["barcode"]: p for p in body["items"]}
    assert by_barcode["LIST-A-1"]["has_fct"] is True
    assert by_barcode["LIST-A-2"]["has_fct"] is False
    latest = by_barcode["LIST-A-2"]["latest_scan"]
    assert latest["id"] > second["id"] and latest["status"] == "completed"
    assert latest["finished_at"] is not None
    assert by_barcode["OTHER_1"]["latest_scan"]["id"] == third["id"]
    assert by_barcode["LIST-Q"]["latest_scan"]["status"] == "cancelled"
    plate_selects = _selects(statements)

    # More plates cost no more queries: latest scans and FCT come in the same query.
    for i in range(4):
        _scan(service, f"LIST-B-{i}", ["A1"])
    with _count_statements(service) as statements:
        assert client.get(f"{API}/plates", headers=viewer).json()["total"] == 8
    assert _selects(statements) == plate_selects

    paged = client.get(f"{API}/plates?limit=3&offset=2&barcode_prefix=LIST-", headers=viewer)
    assert paged.status_code == 200, paged.text
    assert paged.json()["total"] == 7 and paged.json()["limit"] == 3
    assert [p["barcode"] for p in paged.json()["items"]] == ["LIST-B-1", "LIST-B-0", "LIST-Q"]
    # The prefix is literal and case-sensitive: '_' is no wildcard, 'list-' matches nothing.
    only = client.get(f"{API}/plates?barcode_prefix=OTHER_", headers=viewer).json()
    assert [p["barcode"] for p in only["items"]] == ["OTHER_1"]
    assert client.get(f"{API}/plates?barcode_prefix=list-", headers=viewer).json()["total"] == 0

    # Scans: newest first, by plate and status, paged; plate and model loaded with the page.
    with _count_statements(service) as statements:
        scans = client.get(f"{API}/scans", headers=viewer)
    assert scans.status_code == 200, scans.text
    all_scans = scans.json()
    assert all_scans["total"] == 9
    ids = [s["id"] for s in all_scans["items"]]
    assert ids == sorted(ids, reverse=True)
    scan_selects = _selects(statements)
    with _count_statements(service) as statements:
        assert client.get(f"{API}/scans?limit=2", headers=viewer).json()["total"] == 9
    assert _selects(statements) == scan_selects
    of_plate = client.get(f"{API}/scans?plate=LIST-A-2", headers=viewer).json()
    assert of_plate["total"] == 2
    assert [s["plate_barcode"] for s in of_plate["items"]] == ["LIST-A-2", "LIST-A-2"]
    assert of_plate["items"][1]["id"] == second["id"]
    cancelled = client.get(f"{API}/scans?status=cancelled", headers=viewer).json()
    assert [s["plate_barcode"] for s in cancelled["items"]] == ["LIST-Q"]
    second_page = client.get(f"{API}/scans?limit=2&offset=8", headers=viewer).json()
    assert [s["id"] for s in second_page["items"]] == [first["id"]]
    assert client.get(f"{API}/scans?plate=NO-SUCH", headers=viewer).json()["total"] == 0

    for bad in (
        "/scans?limit=0",
        "/scans?limit=201",
        "/scans?offset=-1",
        "/scans?offset=9223372036854775808",
        "/scans?status=done",
        "/scans?plate=%00",
        "/plates?limit=0",
        "/plates?limit=201",
        "/plates?offset=2147483648",
        "/plates?barcode_prefix=%00",
        "/plates?barcode_prefix=",
    ):
        response = client.get(API + bad, headers=viewer)
        assert response.status_code == 422, (bad, response.text)
    assert client.get(f"{API}/plates", headers={"X-API-Key": "nope"}).status_code == 401


def test_well_results_carry_their_images_checksums(service):
    done = _scan(service, "IMG-SHA-1", ["A1", "B2"], fields=2)
    assert done["status"] == "completed", done
    with session_scope(service.runtime.session_factory) as session:
        stored = {
            (image.field_index, image.sha256)
            for image in session.scalars(select(Image).where(Image.scan_id == done["id"]))
        }
    assert len(stored) == 4
    with _count_statements(service) as statements:
        wells = service.client.get(f"{API}/plates/IMG-SHA-1/wells")
    assert wells.status_code == 200, wells.text
    seen = set()
    for well in wells.json()["wells"]:
        assert [image["field"] for image in well["images"]] == [0, 1]
        for image in well["images"]:
            assert re.fullmatch("[0-9a-f]{64}", image["sha256"])
            assert image["height"] > 0 and image["width"] > 0 and image["dtype"] == "uint16"
            seen.add((image["field"], image["sha256"]))
    assert seen == stored
    # One query for every well's images, not one per well.
    assert sum("FROM images" in s for s in statements) == 1
    one = service.client.get(f"{API}/plates/IMG-SHA-1/wells/b02").json()
    assert one["well"] == "B2" and [i["field"] for i in one["images"]] == [0, 1]
    assert {(i["field"], i["sha256"]) for i in one["images"]} <= stored


def test_idempotency_key_under_50_concurrent_posts(service):
    """Same key, different bodies, all at once: one scan, every other body a 422, never a
    500 or 409; the same key and body again is that same scan."""
    client = service.client
    barrier = threading.Barrier(50)

    def post(i: int):
        barrier.wait()
        return client.post(
            f"{API}/scans",
            json={"plate_barcode": f"IDEM-{i % 5}", "wells": ["A1"], "fields_per_well": 1 + i % 2},
            headers={"Idempotency-Key": "race-1"},
        )

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(post, range(50)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {202, 422}, [r.text for r in responses if r.status_code not in (202, 422)]
    won = [(i, r.json()) for i, r in enumerate(responses) if r.status_code == 202]
    assert won and len({body["id"] for _, body in won}) == 1
    winner = won[0][1]
    # Every 202 asked for exactly what the winner asked for; every other body got a 422.
    for i, r in enumerate(responses):
        same = f"IDEM-{i % 5}" == winner["plate_barcode"] and 1 + i % 2 == winner["fields_per_well"]
        assert r.status_code == (202 if same else 422), (i, r.text)
        if not same:
            assert "race-1" in r.json()["detail"] and "different request" in r.json()["detail"]
    with session_scope(service.runtime.session_factory) as session:
        assert session.scalar(select(func.count(Scan.id))) == 1

    again = client.post(
        f"{API}/scans",
        json={
            "plate_barcode": winner["plate_barcode"],
            "wells": ["A1"],
            "fields_per_well": winner["fields_per_well"],
        },
        headers={"Idempotency-Key": "race-1"},
    )
    assert again.status_code == 202 and again.json()["id"] == winner["id"]


BAD_REQUESTS = [
    ("get", "/scans/0"),
    ("get", "/scans/2147483648"),
    ("get", "/scans/9223372036854775808"),
    ("get", "/scans/2147483648/events"),
    ("get", "/scans/9223372036854775808/events"),
    ("post", "/scans/2147483648/cancel"),
    ("post", "/scans/9223372036854775808/cancel"),
    ("get", "/plates/BOUND-1/wells?scan_id=2147483648"),
    ("get", "/plates/BOUND-1/wells?scan_id=9223372036854775808"),
    ("get", "/plates/BOUND-1/wells/A1?scan_id=2147483648"),
    ("get", "/plates/BOUND-1/wells/A1/image?scan_id=2147483648"),
    ("get", "/plates/BOUND-1/wells/A1/overlay?scan_id=9223372036854775808"),
    ("get", "/plates/BOUND-1/wells/A1/image?field=25"),
    ("get", "/plates/BOUND-1/wells/A1/image?field=9223372036854775808"),
    ("get", "/plates/BOUND-1/wells/A1/overlay?field=-1"),
    ("get", "/plates/%00/wells"),
    ("get", "/plates/%00/wells/A1"),
    ("get", "/plates/%00/wells/A1/image"),
    ("get", "/plates/%00/wells/A1/overlay"),
    ("get", "/plates/BOUND-1/wells/%00"),
    ("get", "/plates/BOUND-1/wells/Z9"),
    ("get", "/plates/BOUND-1/wells/A1%00/image"),
    ("get", "/plates/BOUND-1/wells?qc_flag=blurry"),
    ("get", "/plates/BOUND-1/wells?qc_flag=%00"),
    ("delete", "/keys/%00"),
    ("delete", "/keys/a%20b"),
]


def test_out_of_range_ids_nul_bytes_and_unknown_flags_are_422(service):
    _scan(service, "BOUND-1", ["A1"])
    admin = service.headers("admin")
    for method, path in BAD_REQUESTS:
        response = getattr(service.client, method)(API + path, headers=admin)
        assert response.status_code == 422, (method, path, response.status_code, response.text)
    # The bounds are not off by one: the largest id is a plain 404, a real flag a 200.
    assert service.client.get(f"{API}/scans/2147483647").status_code == 404
    flagged = service.client.get(f"{API}/plates/BOUND-1/wells?qc_flag=overexposed")
    assert flagged.status_code == 200
    assert service.client.get(f"{API}/plates/BOUND-1/wells/A1/image?field=24").status_code == 404
    assert service.client.delete(f"{API}/keys/no-such-key", headers=admin).status_code == 404


class _GatedScanner:
    """Wraps the real scanner: holds the ``hold_at``-th well (0-based) after it was imaged and
    before the worker classifies and commits it, until the test lets it go."""

    def __init__(self, inner, hold_at: int) -> None:
        self.inner = inner
        self.hold_at = hold_at
        self.reached = threading.Event()
        self.release = threading.Event()

    def scan(self, plan: ScanPlan, should_stop: Callable[[], bool] = lambda: False):
        for index, acquisition in enumerate(self.inner.scan(plan, should_stop)):
            if index == self.hold_at:
                self.reached.set()
                assert self.release.wait(60), "the test never released the held well"
            yield acquisition

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_cancel_drops_the_well_in_flight_and_reports_the_final_count(service):
    worker = service.runtime.worker
    gate = _GatedScanner(worker.context.scanner, hold_at=4)
    worker.context.scanner = gate
    try:
        start = service.client.post(
            f"{API}/scans",
            json={"plate_barcode": "CANCEL-1", "wells": ["A1", "A2", "A3", "A4", "A5", "A6"]},
        )
        assert start.status_code == 202, start.text
        assert gate.reached.wait(120), "the worker never reached the fifth well"
        cancelled = service.client.post(start.headers["Location"] + "/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["wells_done"] == 4
        gate.release.set()
        # The worker wakes with a fifth well ready; it must not commit it. Its run is over
        # when the scan's lease heartbeat thread has ended.
        _wait_until(lambda: not _running(f"lease-scan-{start.json()['id']}"))
    finally:
        gate.release.set()
        worker.context.scanner = gate.inner
    after = wait_for_scan(service.client, start.headers["Location"])
    assert after["status"] == "cancelled" and after["wells_done"] == 4
    wells = service.client.get(f"{API}/plates/CANCEL-1/wells").json()["wells"]
    assert [w["well"] for w in wells] == ["A1", "A2", "A3", "A4"]
    with session_scope(service.runtime.session_factory) as session:
        results = session.scalar(
            select(func.count(WellResult.id)).where(WellResult.scan_id == start.json()["id"])
        )
        images = session.scalar(
            select(func.count(Image.id)).where(Image.scan_id == start.json()["id"])
        )
        status = session.scalar(select(Scan.status).where(Scan.id == start.json()["id"]))
    assert (results, images, status) == (4, 4, ScanStatus.cancelled)


def _running(thread_name: str) -> bool:
    return any(t.name == thread_name for t in threading.enumerate())


def _wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class _GatedImageStore:
    """Wraps the worker's image store: holds the ``hold_at``-th save (0-based), i.e. the middle
    of a well's commit transaction, until the test lets it go."""

    def __init__(self, inner, hold_at: int) -> None:
        self.inner = inner
        self.hold_at = hold_at
        self.saves = 0
        self.reached = threading.Event()
        self.release = threading.Event()

    def save(self, *args, **kwargs):
        index, self.saves = self.saves, self.saves + 1
        if index == self.hold_at:
            self.reached.set()
            assert self.release.wait(60), "the test never released the held save"
        return self.inner.save(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_a_cancel_during_a_well_commit_reports_what_stays_committed(service):
    """A cancel racing the commit of a well either drops that well or waits for it and counts
    it; whichever, its ``wells_done`` is the scan's final count (it once said 4 while a fifth
    well was committed after it)."""
    worker = service.runtime.worker
    gate = _GatedImageStore(worker.context.image_store, hold_at=4)
    worker.context.image_store = gate
    try:
        start = service.client.post(
            f"{API}/scans",
            json={"plate_barcode": "CANCEL-2", "wells": ["A1", "A2", "A3", "A4", "A5", "A6"]},
        )
        assert start.status_code == 202, start.text
        assert gate.reached.wait(120), "the worker never reached the fifth well's commit"
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(service.client.post, start.headers["Location"] + "/cancel")
            time.sleep(1.0)  # the cancel reaches its UPDATE while the well's commit is open
            gate.release.set()
            cancelled = pending.result(timeout=60)
        assert cancelled.status_code in (200, 409), cancelled.text
        _wait_until(lambda: not _running(f"lease-scan-{start.json()['id']}"))
    finally:
        gate.release.set()
        worker.context.image_store = gate.inner
    after = wait_for_scan(service.client, start.headers["Location"])
    wells = service.client.get(f"{API}/plates/CANCEL-2/wells").json()["wells"]
    if cancelled.status_code == 409:
        # On a loaded machine the cancel can arrive only after the last well: then it is
        # refused, and the scan is complete with every well (the answer is still the truth).
        assert "already completed" in cancelled.text
        assert after["status"] == "completed" and after["wells_done"] == len(wells) == 6
        return
    answered = cancelled.json()
    assert after["status"] == answered["status"] == "cancelled"
    assert answered["wells_done"] in (4, 5)
    assert after["wells_done"] == answered["wells_done"] == len(wells)
