"""The request guard (key, then body size, before parsing), security headers, local docs, the
405 Allow header and the audit trail."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import migrations
from app.auth import create_key
from store.orm import Role
from tests.conftest import Service

BIG = 200 * 1024 * 1024


def test_no_key_is_401_before_the_body_is_parsed(service: Service) -> None:
    client = service.client
    anonymous = {"X-API-Key": ""}
    bad_json = client.post(
        "/api/v1/scans",
        content=b"{not json",
        headers={**anonymous, "Content-Type": "application/json"},
    )
    assert bad_json.status_code == 401
    assert bad_json.json() == {"detail": "missing X-API-Key header"}
    wrong = client.post("/api/v1/scans", content=b"{", headers={"X-API-Key": "msk_nope"})
    assert wrong.status_code == 401 and "invalid" in wrong.json()["detail"]
    assert client.get("/api/v1/health", headers=anonymous).status_code == 200


def test_bodies_above_the_cap_are_413_declared_or_streamed(service: Service) -> None:
    client = service.client
    limit = service.runtime.settings.max_body_bytes
    declared = client.post(
        "/api/v1/scans",
        content=b"x" * (limit + 1),
        headers={"Content-Type": "application/json"},
    )
    assert declared.status_code == 413 and str(limit) in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(limit // 1000 + 2):
            yield b"x" * 1000

    streamed = client.post(
        "/api/v1/scans", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    fine = client.post("/api/v1/scans", json={"plate_barcode": "GUARD-1", "wells": ["A1"]})
    assert fine.status_code == 202


def test_uploads_have_their_own_cap(service: Service) -> None:
    client = service.client
    upload_limit = service.runtime.settings.max_upload_bytes
    assert upload_limit > service.runtime.settings.max_body_bytes
    response = client.put(
        "/api/v1/plates/GUARD-2/fct",
        content=b"well,cd73_pct,cd90_pct\n" + b"A1,97,98\n" * (upload_limit // 9 + 1),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 413


def test_security_headers_and_offline_docs(service: Service) -> None:
    client = service.client
    page = client.get("/")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower() and "http" not in docs.text.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/docs/init.js").status_code == 200
    # Refusals from the guard carry the headers too.
    refused = client.get("/api/v1/scans/1", headers={"X-API-Key": ""})
    assert refused.status_code == 401 and refused.headers["x-frame-options"] == "DENY"


def test_405_names_every_method_of_the_path(service: Service) -> None:
    response = service.client.request("PATCH", "/api/v1/keys", headers=service.headers("admin"))
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


def test_openapi_documents_the_error_responses(service: Service) -> None:
    document = service.client.get("/openapi.json").json()
    responses = document["paths"]["/api/v1/scans"]["post"]["responses"]
    for status in ("401", "403", "404", "409", "413", "422"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }


def test_the_audit_trail_is_readable_by_admins_only(service: Service) -> None:
    client = service.client
    client.post("/api/v1/scans", json={"plate_barcode": "AUDIT-1", "wells": ["A1"]})
    assert client.get("/api/v1/audit").status_code == 403  # operator
    page = client.get(
        "/api/v1/audit", params={"action": "scan.create"}, headers=service.headers("admin")
    )
    assert page.status_code == 200
    events = page.json()["items"]
    assert events and events[-1]["actor"] == "test-operator"
    assert events[-1]["at"].endswith("Z")  # timezone-aware on both databases
    assert events[-1]["details"]["plate_barcode"] == "AUDIT-1"


def test_timestamps_keep_their_timezone(service: Service) -> None:
    client = service.client
    created = client.post("/api/v1/scans", json={"plate_barcode": "TZ-1", "wells": ["A1"]})
    read = client.get(created.headers["Location"])
    for body in (created.json(), read.json()):
        assert body["requested_at"].endswith("Z"), body["requested_at"]


@pytest.mark.postgres
def test_the_audit_table_is_append_only_on_postgres(postgres_url: str) -> None:
    migrations.upgrade(postgres_url)
    engine = create_engine(postgres_url)
    try:
        with Session(engine) as session:
            create_key(session, "audited", Role.viewer)
            session.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, target, details) "
                    "VALUES (now(), 'me', 'x.test', 'thing:1', '{}')"
                )
            )
            session.commit()
        for statement in (
            "UPDATE audit_events SET actor = 'someone else'",
            "DELETE FROM audit_events",
        ):
            with Session(engine) as session, pytest.raises(DBAPIError, match="append-only"):
                session.execute(text(statement))
        with Session(engine) as session:
            assert session.execute(text("SELECT actor FROM audit_events")).scalars().all() == ["me"]
    finally:
        engine.dispose()


# -- a real server: memory and time of a 200 MB body without a key --------------------------------
def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read memory")
def test_a_200_mb_body_without_a_key_costs_neither_time_nor_memory(
    sqlite_url: str, tmp_path: Path
) -> None:
    migrations.upgrade(sqlite_url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "MSCREEN_DATABASE_URL": sqlite_url,
        "MSCREEN_DATA_DIR": str(tmp_path / "data"),
        "MSCREEN_ONNX_PROVIDER": "cpu",
        "MSCREEN_WORKER_ENABLED": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        before = _rss_kb(process.pid)
        body = b'{"plate_barcode": "' + b"x" * BIG + b'"}'
        for content_length in (True, False):
            started = time.perf_counter()
            content = (
                body
                if content_length
                else iter([body[i : i + 2**20] for i in range(0, len(body), 2**20)])
            )
            try:
                response = httpx.post(
                    f"{base}/api/v1/scans",
                    content=content,
                    headers={"Content-Type": "application/json"},
                    timeout=30,
                )
                status = response.status_code
            except httpx.HTTPError:  # the server may close before the client finished sending
                status = 401
            assert status == 401
            assert time.perf_counter() - started < 1.0
        grown_mb = (_rss_kb(process.pid) - before) / 1024
        assert grown_mb < 20, f"server memory grew {grown_mb:.1f} MB"
    finally:
        process.terminate()
        process.wait(30)
