"""Calls a lab can act on, through the real API: selective calls ("uncertain", confirm by FCT),
the out-of-distribution guard ("no call"), threshold policies, and refusals at creation.

The served models are copies of the bundled one with metadata added (models.onnx_export.
write_metadata): v1 as bundled (no decision set, no guard), v2 with a decision set whose
selective threshold at alpha 0.1 is known (0.95), v3 with that set and a guard every field
fails. Scans run on the simulated microscope, on SQLite and (where a server answers)
PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.auth import create_key
from app.main import create_app
from app.settings import Settings
from app.wells import CONFIRM_CSV_COLUMNS, CSV_COLUMNS
from models import decision, ood
from models.decision import DecisionSet, ThresholdPolicy, resolve_policy
from models.onnx_export import write_metadata
from models.ood import OodGuard, descriptor_length
from models.repository import BUNDLED_REPOSITORY
from store.db import session_scope
from store.orm import Image, Role, Scan, WellResult
from tests.conftest import Service, wait_for_scan

pytestmark = pytest.mark.slow

BARCODE = "MSC-2026-0002"
# On the bundled model these span the range: confident highs and lows (A1, B1, B8, H9), wells
# it is unsure of (A2 0.09, A3 0.53, C2 0.32) and C11, whose only field QC excludes.
WELLS = ["A1", "A2", "A3", "B1", "B8", "C2", "C11", "H9"]
ALPHA = 0.1


def decision_set() -> DecisionSet:
    """200 held-out fields: at P 0.05 / 0.95 always right, at P 0.4 / 0.6 half wrong.

    Learn-then-Test at alpha 0.1 accepts confidence 0.95 (100 calls, no error: the
    Clopper-Pearson bound is 1 - 0.1 ** (1 / 100) = 0.023) and rejects 0.6 (200 calls, 50
    errors), so only wells at least as confident as 0.95 are called.
    """
    p = [0.05] * 50 + [0.95] * 50 + [0.4] * 50 + [0.6] * 50
    y = [0] * 50 + [1] * 50 + [0, 1] * 50
    return DecisionSet.of(p, y, source="test: two confident groups, two coin flips")


def guard_everything_out(bands: int = 6) -> OodGuard:
    """A guard centred far from any real descriptor with a tiny threshold: every field is out."""
    d = descriptor_length(bands)
    return OodGuard(
        mean=np.full(d, 1e3), precision=np.eye(d), threshold=1.0, quantile=0.99, n_train=100
    )


def call_repository(root: Path) -> Path:
    """A model repository at ``root``: hscnn-sim v1 (bundled), v2 (+ decision set), v3 (+ a
    guard every field fails); also used by the browser test."""
    (root / "hscnn-sim").mkdir(parents=True)
    for version in (1, 2, 3):  # all three the bundled v1's network (no decision set, no guard)
        shutil.copytree(BUNDLED_REPOSITORY / "hscnn-sim" / "1", root / "hscnn-sim" / str(version))
    dset = json.dumps(decision_set().to_dict())
    write_metadata(root / "hscnn-sim" / "2" / "model.onnx", {decision.METADATA_KEY: dset})
    write_metadata(
        root / "hscnn-sim" / "3" / "model.onnx",
        {
            decision.METADATA_KEY: dset,
            ood.METADATA_KEY: json.dumps(guard_everything_out().to_dict()),
        },
    )
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return call_repository(tmp_path_factory.mktemp("calls") / "repo")


@contextmanager
def serve(
    settings: Settings, repository: Path, version: int, **overrides: Any
) -> Iterator[Service]:
    """The app serving ``hscnn-sim`` v``version`` of ``repository``; operator key by default."""
    settings.model_repository = repository
    settings.model_version = version
    for name, value in overrides.items():
        setattr(settings, name, value)
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        with session_scope(runtime.session_factory) as session:
            keys = {role.value: create_key(session, f"test-{role.value}", role) for role in Role}
        client.headers["X-API-Key"] = keys["operator"]
        yield Service(client, keys)


def _scan(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/scans", json={"plate_barcode": BARCODE, **body})
    assert response.status_code == 202, response.text
    final = wait_for_scan(client, response.headers["Location"])
    assert final["status"] == "completed", final
    return final


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_selective_calls_mark_uncertain_wells_everywhere(settings, repository):
    with serve(settings, repository, version=2) as service:
        client = service.client
        created = client.post(
            "/api/v1/scans", json={"plate_barcode": BARCODE, "wells": WELLS, "alpha": ALPHA}
        )
        assert created.status_code == 202, created.text
        # Recorded at creation as asked, the service's defaults filled in.
        assert created.json()["decision_policy"] == {
            "threshold_policy": "default",
            "alpha": ALPHA,
            "delta": 0.1,
        }
        scan = wait_for_scan(client, created.headers["Location"])
        assert scan["status"] == "completed", scan
        policy = scan["decision_policy"]
        expected = resolve_policy(decision_set=decision_set(), alpha=ALPHA, delta=0.1)
        assert expected.selective is not None
        assert expected.selective.threshold == pytest.approx(0.95)
        assert policy["requested"] == {"threshold_policy": "default", "alpha": ALPHA, "delta": 0.1}
        assert policy["threshold"] == 0.5 and policy["ood_threshold"] is None
        assert policy["selective"]["threshold"] == pytest.approx(expected.selective.threshold)

        wells = {
            w["well"]: w for w in client.get(f"/api/v1/plates/{BARCODE}/wells").json()["wells"]
        }
        assert sorted(wells) == sorted(WELLS)
        assert wells["C11"]["label"] is None and wells["C11"]["status"] == "excluded"
        scored = [w for w in wells.values() if w["probability"] is not None]
        uncertain = [w for w in scored if w["label"] == "uncertain"]
        called = [w for w in scored if w["label"] in ("high", "low")]
        assert uncertain and called, wells
        assert len(uncertain) + len(called) == len(scored)
        for w in scored:
            p = w["probability"]
            assert w["leaning"] == ("high" if p >= 0.5 else "low")
            assert w["confidence"] == pytest.approx(max(p, 1 - p))  # one field: no spread
            assert w["field_spread"] == 0.0 and w["ood_score"] is None
            assert (w["label"] == "uncertain") == (w["confidence"] < 0.95), w
        for w in called:
            assert w["label"] == w["leaning"] and w["call_reason"] is None
        for w in uncertain:
            assert w["call_reason"].startswith("confirm by FCT: confidence"), w
            assert "needed for error <= 0.1" in w["call_reason"]

        # Stored as such, not only computed for the answer.
        with session_scope(service.runtime.session_factory) as session:
            rows = session.scalars(select(WellResult).where(WellResult.scan_id == scan["id"]))
            stored = {r.well.name: (r.label, r.leaning, r.call_reason) for r in rows}
            assert session.get_one(Scan, scan["id"]).decision_policy == policy
        for w in uncertain:
            assert stored[w["well"]] == ("uncertain", w["leaning"], w["call_reason"])

        only = client.get(f"/api/v1/plates/{BARCODE}/wells", params={"label": "uncertain"})
        assert only.status_code == 200
        assert sorted(w["well"] for w in only.json()["wells"]) == sorted(
            w["well"] for w in uncertain
        )
        one = client.get(f"/api/v1/plates/{BARCODE}/wells/{uncertain[0]['well']}").json()
        assert one["label"] == "uncertain" and one["call_reason"] == uncertain[0]["call_reason"]

        table = client.get(f"/api/v1/plates/{BARCODE}/wells?format=csv")
        assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
        assert tuple(table.text.splitlines()[0].split(",")) == CSV_COLUMNS
        rows_csv = {r["well"]: r for r in _csv(table.text)}
        for w in uncertain:
            row = rows_csv[w["well"]]
            assert row["label"] == "uncertain" and row["leaning"] == w["leaning"]
            assert row["call_reason"] == w["call_reason"]
            assert float(row["confidence"]) == pytest.approx(w["confidence"], abs=1e-4)

        confirm = client.get(f"/api/v1/plates/{BARCODE}/confirm")
        assert confirm.status_code == 200, confirm.text
        body = confirm.json()
        assert body["scan_id"] == scan["id"] and body["decision_policy"] == policy
        listed = {w["well"]: w for w in body["wells"]}
        assert set(listed) == {w["well"] for w in uncertain} | {"C11"}
        assert [w["well"] for w in body["wells"]] == [
            w for w in WELLS if w in listed
        ]  # plate order
        for w in uncertain:
            entry = listed[w["well"]]
            assert entry["label"] == "uncertain" and entry["reason"] == w["call_reason"]
            assert entry["probability"] == w["probability"] and entry["leaning"] == w["leaning"]
        assert listed["C11"]["label"] is None and "excluded by QC" in listed["C11"]["reason"]
        assert body["counts"] == {
            "total": len(WELLS),
            "called": len(called),
            "high": sum(w["label"] == "high" for w in called),
            "low": sum(w["label"] == "low" for w in called),
            "uncertain": len(uncertain),
            "no_call": 0,
            "excluded": 1,
            "failed": 0,
            "to_confirm": len(uncertain) + 1,
        }
        download = client.get(f"/api/v1/plates/{BARCODE}/confirm", params={"format": "csv"})
        assert download.status_code == 200
        assert (
            f'filename="{BARCODE}-scan{scan["id"]}-confirm.csv"'
            in (download.headers["content-disposition"])
        )
        assert tuple(download.text.splitlines()[0].split(",")) == CONFIRM_CSV_COLUMNS
        assert [r["well"] for r in _csv(download.text)] == [w["well"] for w in body["wells"]]
        assert client.get(f"/api/v1/plates/{BARCODE}/confirm?scan_id=999").status_code == 404
        assert client.get("/api/v1/plates/NOPE-1/confirm").status_code == 404
        viewer = client.get(
            f"/api/v1/plates/{BARCODE}/confirm", headers={"X-API-Key": service.keys["viewer"]}
        )
        assert viewer.status_code == 200


def test_the_ood_guard_gives_no_call(settings, repository):
    with serve(settings, repository, version=2) as service:
        client = service.client
        activated = client.post(
            "/api/v1/models/hscnn-sim/3/activate", headers=service.headers("admin")
        )
        assert activated.status_code == 200, activated.text
        scan = _scan(client, wells=["A1", "A2", "B1"])
        guard = guard_everything_out()
        assert scan["decision_policy"]["ood_threshold"] == guard.threshold
        assert scan["model"]["version"] == 3

        wells = client.get(f"/api/v1/plates/{BARCODE}/wells").json()["wells"]
        assert [w["label"] for w in wells] == ["no call"] * 3
        for w in wells:
            assert w["status"] == "ok" and w["leaning"] is None and w["fields_used"] == 0
            assert w["call_reason"].startswith("out of distribution: all 1 field(s)")
            assert w["ood_score"] > guard.threshold
            assert "out_of_distribution" in w["qc_flags"]
            assert w["images"][0]["ood_score"] == pytest.approx(w["ood_score"])
        with session_scope(service.runtime.session_factory) as session:
            scores = session.scalars(select(Image.ood_score).where(Image.scan_id == scan["id"]))
            assert all(s is not None and s > guard.threshold for s in scores)

        # "no call" has a space: percent-encoded and form-encoded both reach the filter.
        for query in ("label=no%20call", "label=no+call"):
            only = client.get(f"/api/v1/plates/{BARCODE}/wells?{query}")
            assert only.status_code == 200, (query, only.text)
            assert len(only.json()["wells"]) == 3
        assert client.get(f"/api/v1/plates/{BARCODE}/wells?label=high").json()["wells"] == []
        assert client.get(f"/api/v1/plates/{BARCODE}/wells?label=nocall").status_code == 422

        confirm = client.get(f"/api/v1/plates/{BARCODE}/confirm").json()
        assert [w["label"] for w in confirm["wells"]] == ["no call"] * 3
        assert confirm["counts"]["no_call"] == 3 and confirm["counts"]["called"] == 0
        assert all(w["reason"].startswith("out of distribution") for w in confirm["wells"])


def test_policies_a_model_cannot_serve_are_refused_at_creation(settings, repository):
    with serve(settings, repository, version=1) as service:  # no decision set
        client = service.client
        for body, named in (
            ({"alpha": 0.05}, "selective calls (alpha 0.05)"),
            ({"threshold_policy": "youden"}, "threshold policy youden"),
        ):
            refused = client.post(
                "/api/v1/scans", json={"plate_barcode": "REFUSED-1", "wells": ["A1"], **body}
            )
            assert refused.status_code == 409, refused.text
            detail = refused.json()["detail"]
            assert "hscnn-sim v1" in detail and named in detail and "decision set" in detail
        listed = client.get("/api/v1/scans", params={"plate": "REFUSED-1"}).json()
        assert listed["total"] == 0  # nothing was queued
        plain = client.post("/api/v1/scans", json={"plate_barcode": "REFUSED-1", "wells": ["A1"]})
        assert plain.status_code == 202, plain.text


def test_a_service_alpha_the_model_cannot_serve_names_the_setting(settings, repository):
    with serve(settings, repository, version=1, selective_alpha=0.05) as service:
        refused = service.client.post(
            "/api/v1/scans", json={"plate_barcode": "REFUSED-2", "wells": ["A1"]}
        )
        assert refused.status_code == 409, refused.text
        assert "MSCREEN_SELECTIVE_ALPHA" in refused.json()["detail"]


def test_service_defaults_are_recorded_and_a_request_overrides_them(settings, repository):
    with serve(
        settings, repository, version=2, threshold_policy="youden", selective_delta=0.2
    ) as service:
        client = service.client
        created = client.post(
            "/api/v1/scans", json={"plate_barcode": BARCODE, "wells": ["A1"]}
        ).json()
        assert created["decision_policy"] == {
            "threshold_policy": "youden",
            "alpha": None,
            "delta": 0.2,
        }
        scan = wait_for_scan(client, f"/api/v1/scans/{created['id']}")
        expected = ThresholdPolicy.parse("youden").threshold(decision_set(), 0.5)
        assert scan["decision_policy"]["threshold_policy"] == "youden"
        assert scan["decision_policy"]["threshold"] == pytest.approx(expected)
        assert scan["decision_policy"]["selective"] is None  # no alpha: selective calls off
        (well,) = client.get(f"/api/v1/plates/{BARCODE}/wells").json()["wells"]
        assert well["label"] == ("high" if well["probability"] >= expected else "low")

        # A request's own choice wins, in any case spelling; the scan records it normalised.
        own = client.post(
            "/api/v1/scans",
            json={
                "plate_barcode": BARCODE,
                "wells": ["A1"],
                "threshold_policy": "Sensitivity:0.9",
                "alpha": 0.2,
                "delta": 0.05,
            },
        )
        assert own.status_code == 202, own.text
        assert own.json()["decision_policy"] == {
            "threshold_policy": "sensitivity:0.9",
            "alpha": 0.2,
            "delta": 0.05,
        }
        done = wait_for_scan(client, own.headers["Location"])
        assert done["decision_policy"]["requested"]["threshold_policy"] == "sensitivity:0.9"
        assert done["decision_policy"]["selective"]["alpha"] == 0.2


def test_bad_policies_are_422_naming_the_field(settings, repository):
    with serve(settings, repository, version=2) as service:
        client = service.client
        for body, field in (
            ({"threshold_policy": "median"}, "threshold_policy"),
            ({"threshold_policy": "sensitivity:1.5"}, "threshold_policy"),
            ({"threshold_policy": "sensitivity"}, "threshold_policy"),
            ({"alpha": 0}, "alpha"),
            ({"alpha": 1.5}, "alpha"),
            ({"alpha": "0.1"}, "alpha"),  # strict: a JSON string is not a number
            ({"delta": 1}, "delta"),
        ):
            bad = client.post("/api/v1/scans", json={"plate_barcode": "BAD-1", **body})
            assert bad.status_code == 422, (body, bad.text)
            assert any(e["loc"][-1] == field for e in bad.json()["detail"]), bad.text
        assert client.get("/api/v1/scans", params={"plate": "BAD-1"}).json()["total"] == 0


def test_idempotent_retries_include_the_policy(settings, repository):
    with serve(settings, repository, version=2, worker_enabled=False) as service:
        client = service.client
        key = {"Idempotency-Key": "policy-retry-1"}
        body = {"plate_barcode": "IDEM-1", "wells": ["A1"], "alpha": 0.1}
        first = client.post("/api/v1/scans", json=body, headers=key)
        again = client.post("/api/v1/scans", json=body, headers=key)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        other = client.post("/api/v1/scans", json={**body, "alpha": 0.2}, headers=key)
        assert other.status_code == 422 and "different request" in other.json()["detail"]


def test_the_cli_plate_map_marks_uncertain_and_no_call_wells():
    from app.schemas.plates import WellResultPublic
    from cli.platemap import render_plate_map

    def well(name: str, label: str | None, p: float | None, **extra: Any) -> WellResultPublic:
        base: dict[str, Any] = {
            "well": name,
            "row": ord(name[0]) - ord("A"),
            "column": int(name[1:]) - 1,
            "status": "ok" if label else "excluded",
            "label": label,
            "probability": p,
            "qc_flags": [],
            "fields_used": 1,
            "confluence_pct": None,
            "model": None,
            "scan_id": 1,
            "error": None,
            "acquisition_ms": 0.0,
            "preprocessing_ms": 0.0,
            "inference_ms": 0.0,
        }
        return WellResultPublic.model_validate({**base, **extra})

    text = render_plate_map(
        [
            well("A1", "high", 0.97, leaning="high"),
            well("A2", "uncertain", 0.62, leaning="high", call_reason="confirm by FCT: ..."),
            well("A3", "uncertain", 0.2, leaning="low"),
            well("A4", "no call", 0.5, call_reason="out of distribution: ..."),
            well("A5", None, None),
        ]
    )
    row_a = next(line for line in text.splitlines() if line.startswith(" A "))
    assert row_a.split()[1:7] == ["H", "0.97", "?h0.62", "?l0.20", "X", "QC-x"]
    assert "high: 1   low: 0   uncertain (confirm by FCT): 2   no call: 1   excluded by QC: 1" in (
        text
    )
    assert "?h / ?l = uncertain, confirm by FCT" in text and "X = no call" in text
