"""The service a lab relies on: roles, idempotent retries, cancel, uploads validated whole,
queries, server-sent events, evaluation against a hand-computed case, model activation."""

import json
import shutil
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.auth import create_key
from app.main import create_app
from hardware.sim import SimulationConfig, fct_export_csv, plate_truth
from store.db import session_scope
from store.orm import AuditEvent, FctMeasurement, ManualCall, Role, Scan
from tests.conftest import copy_bundled_v1, wait_for_scan

SIX_WELLS = ["A1", "A2", "B3", "C4", "D5", "E6"]


def _count(service, model) -> int:
    with service.runtime.session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def _small_scan(service, barcode: str, wells=SIX_WELLS) -> dict:
    response = service.client.post("/api/v1/scans", json={"plate_barcode": barcode, "wells": wells})
    assert response.status_code == 202, response.text
    return wait_for_scan(service.client, response.headers["Location"])


# -- auth ----------------------------------------------------------------------------------------
def test_roles_are_enforced_and_writes_audited(service):
    client = service.client
    body = {"plate_barcode": "ROLES-1", "wells": ["A1"]}
    assert client.post("/api/v1/scans", json=body, headers={"X-API-Key": ""}).status_code == 401
    assert (
        client.post("/api/v1/scans", json=body, headers={"X-API-Key": "msk_nope"}).status_code
        == 401
    )
    forbidden = client.post("/api/v1/scans", json=body, headers=service.headers("viewer"))
    assert forbidden.status_code == 403 and "operator" in forbidden.json()["detail"]
    created = client.post("/api/v1/scans", json=body, headers=service.headers("operator"))
    assert created.status_code == 202
    assert (
        client.get(created.headers["Location"], headers=service.headers("viewer")).status_code
        == 200
    )
    assert client.get("/api/v1/keys", headers=service.headers("operator")).status_code == 403
    new_key = client.post(
        "/api/v1/keys",
        json={"name": "lab-reader", "role": "viewer"},
        headers=service.headers("admin"),
    )
    assert new_key.status_code == 201
    secret = new_key.json()["key"]
    assert client.get("/api/v1/models", headers={"X-API-Key": secret}).status_code == 200
    assert (
        client.delete("/api/v1/keys/lab-reader", headers=service.headers("admin")).status_code
        == 204
    )
    assert client.get("/api/v1/models", headers={"X-API-Key": secret}).status_code == 401
    # Only the hash is stored.
    with service.runtime.session_factory() as session:
        from store.orm import ApiKey

        stored = session.scalar(select(ApiKey).where(ApiKey.name == "lab-reader"))
        assert secret not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64
        actions = [
            (e.actor, e.action) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))
        ]
    assert ("test-operator", "scan.create") in actions
    assert ("test-admin", "key.create") in actions and ("test-admin", "key.revoke") in actions
    assert client.get("/api/v1/health", headers={"X-API-Key": ""}).status_code == 200


# -- idempotency and cancel ----------------------------------------------------------------------
def test_idempotent_retries(service):
    client = service.client
    body = {"plate_barcode": "IDEM-1", "wells": ["A1", "A2"]}
    first = client.post("/api/v1/scans", json=body, headers={"Idempotency-Key": "k-123"})
    again = client.post("/api/v1/scans", json=body, headers={"Idempotency-Key": "k-123"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert first.headers["Location"] == again.headers["Location"]
    # The same body spelled differently (defaults written out) is the same request.
    explicit = dict(body, objective="40x", fields_per_well=1)
    assert (
        client.post("/api/v1/scans", json=explicit, headers={"Idempotency-Key": "k-123"}).json()[
            "id"
        ]
        == first.json()["id"]
    )
    other = client.post(
        "/api/v1/scans", json={**body, "wells": ["B1"]}, headers={"Idempotency-Key": "k-123"}
    )
    assert other.status_code == 422 and "k-123" in other.json()["detail"]
    with service.runtime.session_factory() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(Scan).where(Scan.idempotency_key == "k-123")
            )
            == 1
        )
    assert wait_for_scan(client, first.headers["Location"])["status"] == "completed"


def test_cancel_stops_a_scan_and_keeps_committed_wells(service):
    client = service.client
    response = client.post("/api/v1/scans", json={"plate_barcode": "CANCEL-1"})
    location = response.headers["Location"]
    cancelled = client.post(f"{location}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    final = wait_for_scan(client, location)
    assert final["status"] == "cancelled" and final["wells_done"] < 96
    assert client.post(f"{location}/cancel").status_code == 409
    assert client.post(f"{location}/cancel", headers=service.headers("viewer")).status_code == 403


# -- uploads -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "content_type", "row", "field"),
    [
        ("well,cd73_pct,cd90_pct\nA1,99,98\nZ9,99,98\n", "text/csv", 2, "well"),
        ("well,cd73_pct,cd90_pct\nA1,99,98\nA1,97,96\n", "text/csv", 2, "well"),
        ("well,cd73_pct,cd90_pct\nA1,99,98\nA2,101,98\n", "text/csv", 2, "cd73_pct"),
        ("well,cd73_pct,cd90_pct\nA1,99,98\nA2,97,lots\n", "text/csv", 2, "cd90_pct"),
        (
            json.dumps(
                [
                    {"well": "A1", "cd73_pct": 99, "cd90_pct": 98},
                    {"well": "B2", "cd73_pct": "x", "cd90_pct": 9},
                ]
            ),
            "application/json",
            2,
            "cd73_pct",
        ),
        (
            json.dumps([{"well": "A1", "cd73_pct": 99, "cd90_pct": 98, "event_count": -3}]),
            "application/json",
            1,
            "event_count",
        ),
    ],
)
def test_a_bad_fct_upload_names_row_and_field_and_writes_nothing(
    service, body, content_type, row, field
):
    response = service.client.put(
        "/api/v1/plates/UPLOAD-1/fct", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]["errors"]
    assert {"row": row, "field": field} == {k: errors[0][k] for k in ("row", "field")}
    assert _count(service, FctMeasurement) == 0


def test_fct_export_of_the_simulator_uploads_and_matches_hidden_labels(service):
    config = SimulationConfig(seed=service.runtime.settings.simulation_seed)
    response = service.client.put(
        "/api/v1/plates/FCT-SIM-1/fct",
        content=fct_export_csv(config, "FCT-SIM-1"),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == 96
    truth = plate_truth(config, "FCT-SIM-1")
    with service.runtime.session_factory() as session:
        from store.orm import Well

        stored = dict(
            session.execute(
                select(Well.name, FctMeasurement.label).join(
                    FctMeasurement, FctMeasurement.well_id == Well.id
                )
            ).all()
        )
    assert stored == {w: t.label for w, t in truth.items()}
    # Viewers cannot upload.
    denied = service.client.put(
        "/api/v1/plates/FCT-SIM-1/fct",
        content="well,cd73_pct,cd90_pct\nA1,99,99\n",
        headers={"Content-Type": "text/csv", **service.headers("viewer")},
    )
    assert denied.status_code == 403


def test_a_bad_manual_upload_writes_nothing(service):
    response = service.client.put(
        "/api/v1/plates/MV-1/manual-calls?operator=alice",
        content="well,label,seconds_spent\nA1,high,30\nA2,medium,20\n",
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 422
    assert response.json()["detail"]["errors"][0]["field"] == "label"
    assert _count(service, ManualCall) == 0


# -- queries, images, events ---------------------------------------------------------------------
def test_queries_csv_images_and_events(service):
    client = service.client
    final = _small_scan(service, "QUERY-1")
    assert final["status"] == "completed"
    wells = client.get("/api/v1/plates/QUERY-1/wells").json()["wells"]
    assert [w["well"] for w in wells] == SIX_WELLS
    one = client.get("/api/v1/plates/QUERY-1/wells/b3").json()
    assert one["well"] == "B3" and one["scan_id"] == final["id"]
    highs = client.get("/api/v1/plates/QUERY-1/wells?label=high").json()["wells"]
    assert all(w["label"] == "high" for w in highs)
    assert len(highs) == sum(w["label"] == "high" for w in wells)
    csv_text = client.get("/api/v1/plates/QUERY-1/wells?format=csv")
    assert csv_text.headers["content-type"].startswith("text/csv")
    assert csv_text.text.splitlines()[0].startswith("well,status,label,probability")
    assert len(csv_text.text.strip().splitlines()) == 7
    by_scan = client.get(f"/api/v1/plates/QUERY-1/wells?scan_id={final['id']}").json()
    assert by_scan["scan"]["id"] == final["id"]
    assert client.get("/api/v1/plates/QUERY-1/wells?scan_id=99999").status_code == 404
    for kind in ("image", "overlay"):
        png = client.get(f"/api/v1/plates/QUERY-1/wells/A1/{kind}")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/api/v1/plates/QUERY-1/wells/H12/image").status_code == 404
    # Server-sent events replay a finished scan: one `well` event per well, then `end`.
    with client.stream("GET", f"/api/v1/scans/{final['id']}/events") as stream:
        text = "".join(stream.iter_text())
    events = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert events.count("well") == len(SIX_WELLS)
    assert events[-1] == "end" and "progress" in events
    # Each well event carries its result id; Last-Event-ID resumes after it.
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert len(ids) == len(SIX_WELLS) and ids == sorted(ids)
    resumed_from = {"Last-Event-ID": str(ids[2])}
    with client.stream(
        "GET", f"/api/v1/scans/{final['id']}/events", headers=resumed_from
    ) as stream:
        resumed = "".join(stream.iter_text())
    assert [int(line[4:]) for line in resumed.splitlines() if line.startswith("id: ")] == ids[3:]


def test_an_event_stream_closes_after_its_time_limit_without_end(settings):
    """A queued scan's stream does not hold its connection forever (the client reconnects)."""
    settings.worker_enabled = False  # the scan stays queued
    settings.events_max_seconds = 1.0
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime
        with session_scope(runtime.session_factory) as session:
            key = create_key(session, "events", Role.operator)
        client.headers["X-API-Key"] = key
        created = client.post("/api/v1/scans", json={"plate_barcode": "QUEUED-1", "wells": ["A1"]})
        started = time.monotonic()
        with client.stream("GET", f"{created.headers['Location']}/events") as stream:
            text = "".join(stream.iter_text())
        assert time.monotonic() - started < 10
    assert "event: progress" in text and "event: end" not in text


# -- evaluation ----------------------------------------------------------------------------------
def test_evaluation_matches_a_hand_computed_case(service):
    client = service.client
    wells = ["A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8"]
    final = _small_scan(service, "EVAL-1", wells)
    calls = {w["well"]: w for w in client.get("/api/v1/plates/EVAL-1/wells").json()["wells"]}
    called = [w for w in wells if calls[w]["label"] is not None]
    assert len(called) >= 6
    # FCT: agree with the model on all called wells but the first two (one FP or FN each).
    truth = {}
    for index, well in enumerate(called):
        model_high = calls[well]["label"] == "high"
        truth[well] = (not model_high) if index < 2 else model_high
    fct = "well,cd73_pct,cd90_pct\n" + "".join(
        f"{w},{99.0 if high else 80.0},{98.0 if high else 97.0}\n" for w, high in truth.items()
    )
    assert (
        client.put(
            "/api/v1/plates/EVAL-1/fct", content=fct, headers={"Content-Type": "text/csv"}
        ).status_code
        == 200
    )
    # A manual operator who gets everything right except the third well, 30 s per well.
    manual = "well,label,seconds_spent\n" + "".join(
        f"{w},{('low' if high else 'high') if i == 2 else ('high' if high else 'low')},30\n"
        for i, (w, high) in enumerate(truth.items())
    )
    assert (
        client.put(
            "/api/v1/plates/EVAL-1/manual-calls?operator=bob",
            content=manual,
            headers={"Content-Type": "text/csv"},
        ).status_code
        == 200
    )

    report = client.get("/api/v1/plates/EVAL-1/evaluation?resamples=200").json()
    y = [truth[w] for w in called]
    pred = [calls[w]["label"] == "high" for w in called]
    tp = sum(a and b for a, b in zip(y, pred, strict=True))
    tn = sum((not a) and (not b) for a, b in zip(y, pred, strict=True))
    fp = sum((not a) and b for a, b in zip(y, pred, strict=True))
    fn = sum(a and (not b) for a, b in zip(y, pred, strict=True))
    metrics = report["model"]["metrics"]
    assert (metrics["tp"], metrics["tn"], metrics["fp"], metrics["fn"]) == (tp, tn, fp, fn)
    assert fp + fn == 2
    assert metrics["accuracy"] == pytest.approx((len(called) - 2) / len(called))
    if tp + fn:
        assert metrics["sensitivity"] == pytest.approx(tp / (tp + fn))
    manual_metrics = report["manual"]["bob"]["metrics"]
    assert manual_metrics["accuracy"] == pytest.approx((len(called) - 1) / len(called))
    comparison = report["model_vs_manual"]["bob"]
    assert comparison["wells"] == len(called)
    # Discordant pairs: the model alone is wrong on wells 0 and 1, the operator alone on well 2.
    assert comparison["mcnemar"]["model_only_correct"] == 1
    assert comparison["mcnemar"]["manual_only_correct"] == 2
    assert comparison["mcnemar"]["p_value"] == pytest.approx(1.0)
    assert report["time_seconds"]["manual"] == {"bob": 30.0 * len(called)}
    assert report["time_seconds"]["model_scan"] > 0
    assert report["scan_id"] == final["id"]
    pooled = client.get("/api/v1/evaluation?plates=EVAL-1&resamples=200").json()
    assert pooled["model"]["metrics"] == metrics
    # PPV / NPV at a lab's prevalence, by Bayes' rule from this plate's sensitivity/specificity
    assert "at_prevalence" not in report["model"]
    at = client.get("/api/v1/plates/EVAL-1/evaluation?resamples=200&prevalence=0.9").json()
    sens, spec = metrics["sensitivity"], metrics["specificity"]
    if sens is not None and spec is not None and (sens, spec) != (0.0, 1.0):
        want_ppv = sens * 0.9 / (sens * 0.9 + (1 - spec) * 0.1)
        assert at["model"]["at_prevalence"]["ppv"] == pytest.approx(want_ppv)
    assert at["prevalence"] == 0.9 and "at_prevalence" in at["manual"]["bob"]
    assert at["model"]["metrics"] == metrics  # the plate's own figures are unchanged
    again = client.get("/api/v1/plates/EVAL-1/evaluation?resamples=200").json()
    assert "at_prevalence" not in again["model"]  # the cached report was not altered
    for bad in ("1.5", "-0.1", "nan"):
        got = client.get(f"/api/v1/plates/EVAL-1/evaluation?prevalence={bad}")
        assert got.status_code == 422


# -- models --------------------------------------------------------------------------------------
def test_model_activation_requires_a_passed_parity_check(tmp_path, settings):
    from fastapi.testclient import TestClient

    from app.auth import create_key
    from app.main import create_app
    from store.db import session_scope
    from store.orm import Role

    repository = tmp_path / "repo"
    copy_bundled_v1(repository)
    shutil.copytree(repository / "hscnn-sim" / "1", repository / "hscnn-sim" / "2")
    card_path = repository / "hscnn-sim" / "2" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["parity"]["passed"] = False
    card_path.write_text(json.dumps(card))
    settings.model_repository = repository
    settings.model_version = 1
    with TestClient(create_app(settings)) as client:
        with session_scope(client.app.state.runtime.session_factory) as session:
            admin = create_key(session, "admin", Role.admin)
        headers = {"X-API-Key": admin}
        listed = client.get("/api/v1/models", headers=headers).json()
        assert [(m["version"], m["active"], m["parity_passed"]) for m in listed] == [
            (1, True, True),
            (2, False, False),
        ]
        assert "intended_use" in listed[0]["card"]
        refused = client.post("/api/v1/models/hscnn-sim/2/activate", headers=headers)
        assert refused.status_code == 409 and "parity" in refused.json()["detail"]
        assert (
            client.post("/api/v1/models/hscnn-sim/7/activate", headers=headers).status_code == 404
        )
        assert (
            client.post("/api/v1/models/hscnn-sim/1/activate", headers=headers).status_code == 200
        )
        assert client.get("/api/v1/health").json()["model"]["version"] == 1


@pytest.mark.slow
def test_a_retraining_run_started_from_the_api_publishes_a_new_version(tmp_path, settings):
    """The run is a separate process that reports back through the database."""
    import time

    from fastapi.testclient import TestClient

    from app.auth import create_key
    from app.main import create_app
    from store.db import session_scope
    from store.orm import Role

    repository = tmp_path / "repo"
    copy_bundled_v1(repository)
    settings.model_repository = repository
    with TestClient(create_app(settings)) as client:
        with session_scope(client.app.state.runtime.session_factory) as session:
            admin = create_key(session, "admin", Role.admin)
            operator = create_key(session, "op", Role.operator)
        body = {"train_plates": 1, "val_plates": 1, "test_plates": 1, "epochs": 1, "seed": 5}
        assert (
            client.post(
                "/api/v1/training-runs", json=body, headers={"X-API-Key": operator}
            ).status_code
            == 403
        )
        started = client.post("/api/v1/training-runs", json=body, headers={"X-API-Key": admin})
        assert started.status_code == 202, started.text
        url = started.json()["url"]
        deadline = time.monotonic() + 400
        while (run := client.get(url, headers={"X-API-Key": admin}).json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, run
            time.sleep(1.0)
        assert run["status"] == "completed", run
        assert run["model_version"] == 2 and run["requested_by"] == "admin"
        assert any("published hscnn-sim v2" in line for line in run["log_tail"])
        listed = client.get("/api/v1/models", headers={"X-API-Key": admin}).json()
        assert [m["version"] for m in listed] == [1, 2]
        assert listed[1]["card"]["parity"]["passed"] is True
        activated = client.post("/api/v1/models/hscnn-sim/2/activate", headers={"X-API-Key": admin})
        assert activated.status_code == 200
        assert client.get("/api/v1/health").json()["model"]["version"] == 2


def test_upload_edge_cases_are_4xx_not_5xx(service):
    client = service.client
    huge = "well,cd73_pct,cd90_pct,event_count\nA1,99,99,10000000000000000000\n"
    response = client.put(
        "/api/v1/plates/EDGE-1/fct", content=huge, headers={"Content-Type": "text/csv"}
    )
    assert (
        response.status_code == 422
        and response.json()["detail"]["errors"][0]["field"] == "event_count"
    )
    long_barcode = "B" * 80
    ok_body = "well,cd73_pct,cd90_pct\nA1,99,99\n"
    response = client.put(
        f"/api/v1/plates/{long_barcode}/fct", content=ok_body, headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 422
    assert _count(service, FctMeasurement) == 0


@pytest.mark.slow
def test_retraining_from_the_labelled_plates_in_the_database(tmp_path, settings):
    """The product's loop: scan plates, upload their FCT, retrain on them through the API."""
    import time

    from fastapi.testclient import TestClient

    from app.auth import create_key
    from app.main import create_app
    from store.db import session_scope
    from store.orm import Role

    settings.model_repository = tmp_path / "repo"
    copy_bundled_v1(settings.model_repository)
    config = SimulationConfig(seed=settings.simulation_seed)
    with TestClient(create_app(settings)) as client:
        with session_scope(client.app.state.runtime.session_factory) as session:
            client.headers["X-API-Key"] = create_key(session, "admin", Role.admin)
        barcodes = ["LAB-1", "LAB-2", "LAB-3"]
        for barcode in barcodes:
            scan = client.post("/api/v1/scans", json={"plate_barcode": barcode, "wells": SIX_WELLS})
            assert scan.status_code == 202, scan.text
            finished = wait_for_scan(client, scan.headers["Location"])
            assert finished["status"] == "completed", finished
            uploaded = client.put(
                f"/api/v1/plates/{barcode}/fct",
                content=fct_export_csv(config, barcode),
                headers={"Content-Type": "text/csv"},
            )
            assert uploaded.status_code == 200, uploaded.text
        body = {"name": "hscnn-lab", "source": "database", "plates": barcodes, "epochs": 1}
        started = client.post("/api/v1/training-runs", json=body)
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 400
        while (run := client.get(started.json()["url"]).json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, run
            time.sleep(1.0)
        assert run["status"] == "completed", (run["error"], run["log_tail"][-15:])
        assert run["model_version"] == 1
        listed = client.get("/api/v1/models").json()
        card = next(m for m in listed if m["name"] == "hscnn-lab")["card"]
        assert card["data"]["source"] == "database"
        assert card["data"]["plates"] == barcodes
        groups = [set(card["data"][f"{role}_groups"]) for role in ("train", "val", "test")]
        assert set().union(*groups) == set(barcodes) and sum(map(len, groups)) == 3
        assert card["data"]["images"]["train"] + card["data"]["images"]["val"] > 0
