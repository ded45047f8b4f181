"""Ground-truth uploads (FCT, manual calls): formats a cytometer or spreadsheet writes, bounds,
the plate a file names, fractions, replace semantics, read back, delete and the audit trail."""

from __future__ import annotations

import codecs
import json

import pytest
from sqlalchemy import select

from app.ground_truth import (
    MAX_ROWS,
    SHOWN_CHARS,
    UploadError,
    parse_fct,
    parse_manual,
)
from hardware.sim import SimulationConfig, fct_export_csv, plate_truth
from store.orm import AuditEvent, FctMeasurement, ManualCall
from tests.conftest import Service

CSV = {"Content-Type": "text/csv"}
SIM = SimulationConfig(seed=0)


def _error(exc: pytest.ExceptionInfo[UploadError]) -> tuple[int, str, str]:
    first = exc.value.errors[0]
    return first.row, first.field, first.message


def _count(service: Service, model: type) -> int:
    with service.runtime.session_factory() as session:
        return len(session.scalars(select(model)).all())


def _audits(service: Service, action: str) -> list[AuditEvent]:
    with service.runtime.session_factory() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list(session.scalars(query))


# -- parsing (no database) ---------------------------------------------------------------------
def test_the_simulators_export_parses_to_its_hidden_truth() -> None:
    rows = parse_fct(fct_export_csv(SIM, "P1").encode(), "text/csv", "P1")
    truth = plate_truth(SIM, "P1")
    assert {r.well: r.label for r in rows} == {w: t.label for w, t in truth.items()}
    assert all(r.event_count == truth[r.well].event_count for r in rows)


def test_an_export_naming_another_plate_is_refused_naming_both() -> None:
    with pytest.raises(UploadError) as exc:
        parse_fct(fct_export_csv(SIM, "P1").encode(), "text/csv", "P2")
    row, field, message = _error(exc)
    assert (row, field) == (0, "plate") and "'P1'" in message and "'P2'" in message
    for key in ("Plate ID", "BARCODE", "plate"):
        body = f"{key},OTHER\n\nWell,CD73 %,CD90 %\nA1,99,99\n".encode()
        with pytest.raises(UploadError, match="OTHER"):
            parse_fct(body, "text/csv", "P2")
    with pytest.raises(UploadError, match="OTHER"):
        parse_fct(json.dumps({"plate": "OTHER", "rows": []}).encode(), "application/json", "P2")
    with pytest.raises(UploadError) as exc:  # a plate column in the table, row by row
        parse_fct(b"plate,well,cd73_pct,cd90_pct\nP2,A1,99,99\nP3,A2,99,99\n", "text/csv", "P2")
    assert _error(exc)[:2] == (2, "plate")


def test_more_than_96_rows_is_refused_at_row_97_whatever_follows() -> None:
    body = ("well,cd73_pct,cd90_pct\n" + "A1,99,99\n" * 100_000 + "garbage\n").encode()
    with pytest.raises(UploadError) as exc:
        parse_fct(body, "text/csv", "P")
    assert len(exc.value.errors) == 1
    row, field, message = _error(exc)
    assert (row, field) == (MAX_ROWS + 1, "rows") and str(MAX_ROWS) in message
    rows = [{"well": "A1", "cd73_pct": 99, "cd90_pct": 99}] * 97
    with pytest.raises(UploadError, match="more than 96"):
        parse_fct(json.dumps(rows).encode(), "application/json", "P")


def test_huge_cells_are_refused_and_never_echoed_whole() -> None:
    huge = "Z" * 100_000
    body = f"well,cd73_pct,cd90_pct\n{huge},{huge},99\nA2,99,{'9' * 5000}\n".encode()
    with pytest.raises(UploadError) as exc:
        parse_fct(body, "text/csv", "P")
    assert len(str(exc.value)) < 300
    assert all(len(e.message) < SHOWN_CHARS + 60 for e in exc.value.errors)
    assert {(e.row, e.field) for e in exc.value.errors} == {
        (1, "well"),
        (1, "cd73_pct"),
        (2, "cd90_pct"),
    }
    # A cell beyond the csv module's own limit (128 KiB) is a 422 too.
    with pytest.raises(UploadError, match="not readable as CSV"):
        parse_fct(f"well,cd73_pct,cd90_pct\nA1,{'9' * 200_000},1\n".encode(), "text/csv", "P")
    # JSON: an int too long for Python, and nesting too deep, are 422s, not crashes.
    for text in ("[" + "1" * 5000 + "]", "[" * 100_000):
        with pytest.raises(UploadError, match="not valid JSON"):
            parse_fct(text.encode(), "application/json", "P")


def test_fractions_are_refused_unless_units_say_so() -> None:
    body = b"well,cd73_pct,cd90_pct\nA1,0.97,0.99\nA2,0.80,0.99\n"
    with pytest.raises(UploadError) as exc:
        parse_fct(body, "text/csv", "P")
    row, field, message = _error(exc)
    assert (row, field) == (0, "units") and "fraction" in message and "units=fraction" in message
    rows = parse_fct(body, "text/csv", "P", units="fraction")
    assert [(r.cd73_pct, r.cd90_pct, r.label) for r in rows] == [
        (97.0, 99.0, "high"),
        (80.0, 99.0, "low"),
    ]
    with pytest.raises(UploadError, match=r"outside 0\.\.1"):
        parse_fct(b"well,cd73_pct,cd90_pct\nA1,97,99\n", "text/csv", "P", units="fraction")
    # All zero is not "fractions"; one percentage above 1 makes the file percentages.
    assert parse_fct(b"well,cd73,cd90\nA1,0,0\n", "text/csv", "P")[0].label == "low"
    assert len(parse_fct(b"well,cd73,cd90\nA1,0.5,0.5\nA2,50,0.5\n", "text/csv", "P")) == 2


def test_semicolon_tab_decimal_commas_and_utf16_spreadsheet_exports() -> None:
    semicolon = "Plate;P\n\nWell;CD73-FITC+ %;CD90-PE+ %;Events\nA1;97,5;98,1;12000\nb07;80;99,9;\n"
    rows = parse_fct(semicolon.encode(), "text/csv", "P")
    assert [(r.well, r.cd73_pct, r.cd90_pct, r.event_count) for r in rows] == [
        ("A1", 97.5, 98.1, 12000),
        ("B7", 80.0, 99.9, None),
    ]
    tab = "Well\tCD73 %\tCD90 %\r\nA1\t99,0\t99,0\r\n"
    utf16 = codecs.BOM_UTF16_LE + tab.encode("utf-16-le")
    assert parse_fct(utf16, "text/plain", "P")[0].cd73_pct == 99.0
    # With "," as the delimiter a decimal comma cannot be told from a column break.
    with pytest.raises(UploadError):
        parse_fct(b'well,cd73_pct,cd90_pct\nA1,"97,5",98\n', "text/csv", "P")
    manual = parse_manual(b"well;label;seconds_spent\nA1;HIGH;12,5\n", "text/csv", "P")
    assert [(r.well, r.label, r.seconds_spent) for r in manual] == [("A1", "high", 12.5)]


def test_json_is_told_by_content_type_file_name_or_content() -> None:
    rows = [{"well": "A1", "cd73_pct": 99, "cd90_pct": 98}]
    body = json.dumps(rows).encode()
    for content_type, filename in (
        ("application/json", None),
        ("application/octet-stream", "fct.json"),
        ("application/x-www-form-urlencoded", None),  # curl --data-binary's default
    ):
        assert parse_fct(body, content_type, "P", filename=filename)[0].well == "A1"
    with pytest.raises(UploadError, match="no table header"):
        parse_fct(b"nothing useful\n", "text/csv", "P")


# -- the API -----------------------------------------------------------------------------------
def test_a_bad_upload_lists_the_first_20_problems_and_counts_them_all(service: Service) -> None:
    body = "well,cd73_pct,cd90_pct\n" + "".join(f"X{i},{'y' * 500},-1\n" for i in range(90))
    response = service.client.put("/api/v1/plates/ERR-1/fct", content=body, headers=CSV)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert set(detail) == {"message", "errors", "error_count"}
    assert len(detail["errors"]) == 20 and detail["error_count"] == 270
    assert (detail["errors"][0]["row"], detail["errors"][0]["field"]) == (1, "well")
    assert len(response.content) < 5000
    too_many = "well,cd73_pct,cd90_pct\n" + "A1,99,99\n" * 200
    response = service.client.put("/api/v1/plates/ERR-1/fct", content=too_many, headers=CSV)
    assert response.status_code == 422 and "96" in response.json()["detail"]["message"]
    assert response.json()["detail"]["error_count"] == 1
    assert _count(service, FctMeasurement) == 0


def test_put_replaces_the_plates_fct_and_the_audit_keeps_old_and_new(service: Service) -> None:
    client = service.client
    url = "/api/v1/plates/REPL-1/fct"
    first = client.put(url, content="well,cd73_pct,cd90_pct\nA1,99,99\nA2,99,99\n", headers=CSV)
    assert first.json() == {
        "plate_barcode": "REPL-1",
        "rows": 2,
        "removed": 0,
        "plate_created": True,
    }
    second = client.put(
        url + "?reason=re-gated",
        content="well,cd73_pct,cd90_pct\nA2,80,99\nA3,99,99\n",
        headers=CSV,
    )
    assert second.json() == {
        "plate_barcode": "REPL-1",
        "rows": 2,
        "removed": 1,
        "plate_created": False,
    }
    stored = client.get(url).json()
    assert [(r["well"], r["cd73_pct"], r["label"]) for r in stored] == [
        ("A2", 80.0, "low"),
        ("A3", 99.0, "high"),
    ]
    event = _audits(service, "fct.upload")[-1]
    assert event.reason == "re-gated" and event.actor == "test-operator"
    before, after = event.details["before"], event.details["after"]
    assert before["rows"] == 2 and after["rows"] == 2
    assert set(before["wells"]) == {"A1", "A2"} and set(after["wells"]) == {"A2", "A3"}
    assert before["wells"]["A2"]["label"] == "high" and after["wells"]["A2"]["label"] == "low"

    # DELETE: viewers may not; an operator removes all, audited; then there is nothing (404).
    assert client.delete(url, headers=service.headers("viewer")).status_code == 403
    deleted = client.delete(url + "?reason=wrong%20plate")
    assert deleted.status_code == 204 and deleted.content == b""
    assert client.get(url).json() == []
    removed = _audits(service, "fct.delete")[-1]
    assert removed.reason == "wrong plate"
    assert set(removed.details["before"]["wells"]) == {"A2", "A3"}
    again = client.delete(url)
    assert again.status_code == 404 and "no FCT" in again.json()["detail"]
    assert client.delete("/api/v1/plates/NEVER-SEEN/fct").status_code == 404
    assert client.get("/api/v1/plates/NEVER-SEEN/fct").status_code == 404


def test_uploads_a_lims_or_a_person_sends(service: Service) -> None:
    client = service.client
    export = fct_export_csv(SIM, "LIMS-1")
    # curl -F file=@fct.csv: one file part, whatever its field name and content type.
    response = client.put(
        "/api/v1/plates/LIMS-1/fct",
        files={"upload": ("fct.csv", export.encode(), "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == 96
    # A JSON file, told by its name; units=fraction multiplies by 100.
    rows = [{"well": "A1", "cd73_pct": 0.99, "cd90_pct": 0.98}]
    response = client.put(
        "/api/v1/plates/LIMS-2/fct?units=fraction",
        files={"file": ("fct.json", json.dumps(rows).encode(), "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    assert client.get("/api/v1/plates/LIMS-2/fct").json()[0]["cd73_pct"] == 99.0
    # Several files, or none, or a broken form: 422 saying what to send.
    two = [("a", ("a.csv", b"x", "text/csv")), ("b", ("b.csv", b"y", "text/csv"))]
    response = client.put("/api/v1/plates/LIMS-3/fct", files=two)
    assert response.status_code == 422 and "2 file parts" in response.json()["detail"]["message"]
    text_only = (
        b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\nwell,cd73,cd90\r\n--x--\r\n'
    )
    response = client.put(
        "/api/v1/plates/LIMS-3/fct",
        content=text_only,
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 422 and "no file part" in response.json()["detail"]["message"]
    response = client.put(
        "/api/v1/plates/LIMS-3/fct",
        content=b"--x\r\nnot a part\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 422, response.text
    # The wrong plate's export, and fractions, are refused; nothing is written for them.
    response = client.put("/api/v1/plates/LIMS-3/fct", content=export, headers=CSV)
    assert response.status_code == 422
    assert "'LIMS-1'" in response.text and "'LIMS-3'" in response.text
    response = client.put(
        "/api/v1/plates/LIMS-3/fct", content="well,cd73_pct,cd90_pct\nA1,0.97,0.99\n", headers=CSV
    )
    assert response.status_code == 422 and "units=fraction" in response.text
    response = client.put(
        "/api/v1/plates/LIMS-3/fct",
        content="Well;CD73 %;CD90 %\nA1;97,5;98,1\n",
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 200, response.text
    assert client.get("/api/v1/plates/LIMS-3/fct").json()[0]["cd73_pct"] == 97.5


def test_manual_calls_replace_per_operator_read_back_and_delete(service: Service) -> None:
    client = service.client
    url = "/api/v1/plates/MV-2/manual-calls"
    put = client.put(
        url + "?operator=alice",
        content="well,label,seconds_spent\nB1,high,30\nA2,low,\n",
        headers=CSV,
    )
    assert put.status_code == 200 and put.json()["plate_created"] is True
    assert (
        client.put(url + "?operator=bob", content="well,label\nA1,low\n", headers=CSV).status_code
        == 200
    )
    replaced = client.put(url + "?operator=alice", content="well,label\nA2,high\n", headers=CSV)
    assert replaced.json()["removed"] == 1
    listed = client.get(url, headers=service.headers("viewer"))
    assert listed.status_code == 200
    assert [(r["well"], r["operator"], r["label"]) for r in listed.json()] == [
        ("A1", "bob", "low"),
        ("A2", "alice", "high"),
    ]
    assert set(listed.json()[0]) == {"well", "operator", "label", "seconds_spent", "recorded_at"}
    assert [r["well"] for r in client.get(url + "?operator=bob").json()] == ["A1"]
    event = _audits(service, "manual.upload")[-1]
    assert event.details["operator"] == "alice"
    assert event.details["before"]["wells"] == {
        "B1": {"label": "high", "seconds_spent": 30.0},
        "A2": {"label": "low", "seconds_spent": None},
    }
    # Delete one operator's calls; the other's stay.
    assert client.delete(url + "?operator=alice").status_code == 204
    assert client.delete(url + "?operator=alice").status_code == 404
    assert [r["operator"] for r in client.get(url).json()] == ["bob"]
    assert _audits(service, "manual.delete")[-1].details["before"]["rows"] == 1
    assert client.get("/api/v1/plates/NOPE/manual-calls").status_code == 404
    # The operator's name: printable, 1..64 characters (NUL would break PostgreSQL).
    for bad in ("%00", "a%0Ab", "x" * 65, ""):
        response = client.put(f"{url}?operator={bad}", content="well,label\nA1,low\n", headers=CSV)
        assert response.status_code == 422, (bad, response.text)
        assert client.get(f"{url}?operator={bad}").status_code == 422
        assert client.delete(f"{url}?operator={bad}").status_code == 422
    assert client.delete(url).status_code == 422  # which operator's calls: required
    assert _count(service, ManualCall) == 1


def test_openapi_documents_the_bodies_and_refusals(service: Service) -> None:
    document = service.client.get("/openapi.json").json()
    paths = document["paths"]
    put = paths["/api/v1/plates/{barcode}/fct"]["put"]
    assert put["tags"] == ["ground truth"]
    assert set(put["requestBody"]["content"]) == {
        "text/csv",
        "application/json",
        "multipart/form-data",
    }
    assert put["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorBody"
    )
    assert {p["name"] for p in put["parameters"]} >= {"barcode", "units", "reason"}
    manual = paths["/api/v1/plates/{barcode}/manual-calls"]
    assert set(manual) >= {"put", "get", "delete"}
    assert "404" in manual["delete"]["responses"] and "204" in manual["delete"]["responses"]
    assert manual["get"]["responses"]["200"]["content"]["application/json"]["schema"]["items"][
        "$ref"
    ].endswith("ManualCallPublic")
    assert "delete" in paths["/api/v1/plates/{barcode}/fct"]


@pytest.mark.postgres
def test_two_uploads_to_one_new_plate_at_once_are_a_409_not_a_500(postgres_url: str) -> None:
    """The second upload's inserts wait for the first's transaction, then collide with its
    rows: refused whole as a conflict (it can be re-sent), never a database error."""
    import threading

    import migrations
    from app.errors import ConflictError
    from app.ground_truth import upload_fct
    from store.db import make_engine, make_session_factory

    migrations.upgrade(postgres_url)
    engine = make_engine(postgres_url)
    factory = make_session_factory(engine)
    body = b"well,cd73_pct,cd90_pct\nA1,99,99\n"
    first = factory()
    upload_fct(first, "RACE-1", body, "text/csv", uploaded_by="a")  # flushed, not committed
    outcome: list[object] = []

    def second() -> None:
        with factory() as session:
            try:
                upload_fct(session, "RACE-1", body, "text/csv", uploaded_by="b")
                session.commit()
                outcome.append("stored")
            except ConflictError as exc:
                session.rollback()
                outcome.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive()  # waiting on the first transaction's rows
    first.commit()
    first.close()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ConflictError), outcome
    assert "send this one again" in str(outcome[0])
    engine.dispose()
