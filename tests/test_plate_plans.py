"""Plate types from useq-schema's registry, useq WellPlatePlans as scan plans, and the service
scanning a 384-well plate from a plan."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import useq
from fastapi.testclient import TestClient

from app.classifier import WellCall
from app.main import create_app
from app.worker import _result_row
from hardware.autofocus import AutofocusReport
from hardware.microscope import AcquiredField, WellAcquisition
from hardware.plans import scan_plan_from_useq, simulated_field_of_view_um
from hardware.plate import SBS_96, WellNameError, plate_geometry
from tests.conftest import wait_for_scan

FOV_40X = simulated_field_of_view_um("40x")


def _wpp(**fields: Any) -> useq.WellPlatePlan:
    """A WellPlatePlan as useq validates it (plate names, lists and slices coerced)."""
    return useq.WellPlatePlan.model_validate(fields)


# -- the registry -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("plate_type", "rows", "columns", "pitch_um", "well_um", "circular"),
    [
        ("6-well", 2, 3, 39120.0, 34800.0, True),
        ("24-well", 4, 6, 19000.0, 15600.0, True),
        ("96-well", 8, 12, 9000.0, 6400.0, True),
        ("384-well", 16, 24, 4500.0, 3400.0, False),
    ],
)
def test_registry_geometry(plate_type, rows, columns, pitch_um, well_um, circular):
    geometry = plate_geometry(plate_type)
    assert (geometry.rows, geometry.columns) == (rows, columns)
    assert geometry.pitch_um == pytest.approx(pitch_um)
    assert geometry.well_diameter_um == pytest.approx(well_um)
    assert geometry.circular_wells is circular
    assert len(geometry.well_names) == rows * columns
    # The well array is centred on the SBS footprint (127.76 x 85.48 mm).
    x_last, y_last = geometry.well_center_um(geometry.last_well)
    x_a1, y_a1 = geometry.a1_center_um
    assert (x_a1 + x_last, y_a1 + y_last) == pytest.approx((127760.0, 85480.0))


def test_96_well_is_sbs_96_exactly():
    assert plate_geometry("96-well") is SBS_96
    assert plate_geometry("SBS-96") is SBS_96
    assert SBS_96.name == "SBS-96"
    assert SBS_96.a1_center_um == (14380.0, 11240.0)
    assert plate_geometry("384-well").a1_center_um == pytest.approx((12130.0, 8990.0))


def test_unknown_and_non_plate_types_are_refused():
    with pytest.raises(ValueError, match=r"unknown plate type 'SBS-97'.*384-well"):
        plate_geometry("SBS-97")
    with pytest.raises(ValueError, match="not a multi-well plate"):
        plate_geometry("coverslip-18mm-square")


def test_1536_rows_beyond_z_are_named_as_useq_names_them():
    geometry = plate_geometry("1536-well")
    assert geometry.well_names[-1] == "AF48"
    assert geometry.parse("AF48") == (31, 47)
    assert geometry.normalise("aa07") == "AA7"
    assert geometry.well_names == tuple(useq.WellPlate.from_str("1536-well").all_well_names.flat)
    with pytest.raises(WellNameError, match=r"outside this plate.*A1\.\.AF48"):
        geometry.parse("AG1")
    with pytest.raises(WellNameError, match="outside this plate"):
        SBS_96.parse("AA1")
    with pytest.raises(WellNameError, match="outside this plate"):
        plate_geometry("384-well").parse("Q1")


# -- rotation and the inverse ----------------------------------------------------------------------
@pytest.mark.parametrize("rotation_deg", [0.0, 1.5, -3.0])
def test_well_at_inverts_well_center_with_rotation(rotation_deg):
    geometry = dataclasses.replace(plate_geometry("384-well"), rotation_deg=rotation_deg)
    for name in geometry.well_names:
        x, y = geometry.well_center_um(name)
        assert geometry.well_at(x, y) == name
    # Half a pitch from A1 along the plate's own x axis is the wall between A1 and A2.
    theta = math.radians(rotation_deg)
    half = geometry.pitch_um / 2
    x0, y0 = geometry.a1_center_um
    assert geometry.well_at(x0 + half * math.cos(theta), y0 - half * math.sin(theta)) is None
    assert geometry.well_at(-1e5, 0.0) is None


def test_rotation_turns_the_plate_about_a1_like_useq_in_a_mirrored_frame():
    geometry = dataclasses.replace(SBS_96, rotation_deg=4.0)
    assert geometry.well_center_um("A1") == SBS_96.well_center_um("A1")
    far = geometry.well_center_um("H12")
    assert far != pytest.approx(SBS_96.well_center_um("H12"))
    # At 4 degrees H12 has moved by about 4 % of its 116 mm from A1: no longer over its well.
    assert SBS_96.well_at(*far) != "H12"
    plan = _wpp(
        plate="96-well",
        a1_center_xy=geometry.a1_center_um,
        rotation=4.0,
        selected_wells=slice(None),
    )
    x0, y0 = geometry.a1_center_um
    for position in plan.selected_well_positions:
        assert position.name is not None and position.x is not None and position.y is not None
        x, y = geometry.well_center_um(position.name)
        assert (x - x0, y - y0) == pytest.approx((position.x - x0, -(position.y - y0)))


def test_square_and_round_wells_differ_in_the_corners():
    square = plate_geometry("384-well")
    r = square.well_diameter_um / 2
    assert square.inside_well(0.9 * r, 0.9 * r)
    round_well = dataclasses.replace(square, circular_wells=True)
    assert not round_well.inside_well(0.9 * r, 0.9 * r)
    assert round_well.inside_well(0.9 * r, 0.0)


# -- useq plans --------------------------------------------------------------------------------
def _plan_384(points: useq.RelativeMultiPointPlan, **kwargs) -> useq.WellPlatePlan:
    return _wpp(
        plate="384-well",
        a1_center_xy=(12130.0, 8990.0),
        selected_wells=([0, 2, 15], [0, 5, 23]),
        well_points_plan=points,
        **kwargs,
    )


def test_grid_plan_becomes_a_scan_plan_with_useq_wells_and_mirrored_points():
    grid = useq.GridRowsColumns(rows=2, columns=2, fov_width=500.0, fov_height=400.0)
    plan = _plan_384(grid, rotation=1.0)
    scan_plan = scan_plan_from_useq(
        plan.model_dump(mode="json"), barcode="P384", objective="40x", field_of_view_um=FOV_40X
    )
    assert list(scan_plan.wells) == ["A1", "C6", "P24"] == plan.selected_well_names
    assert scan_plan.plate.name == "384-well" and scan_plan.plate.rotation_deg == 1.0
    assert scan_plan.fields_per_well == 4
    assert scan_plan.offsets() == [
        (-250.0, -200.0),
        (250.0, -200.0),
        (250.0, 200.0),
        (-250.0, 200.0),
    ]
    # Every stage position is useq's, mirrored in y about A1's centre.
    y0 = plan.a1_center_xy[1]
    ours = [
        (cx + dx, cy + dy)
        for well in scan_plan.wells
        for cx, cy in [scan_plan.plate.well_center_um(well)]
        for dx, dy in scan_plan.offsets()
    ]
    theirs = [(p.x, 2 * y0 - (p.y or 0.0)) for p in plan.image_positions]
    np.testing.assert_allclose(np.array(ours), np.array(theirs), atol=1e-6)
    for x, y in ours:
        assert scan_plan.plate.well_at(x, y) is not None


def test_a_point_whose_field_touches_the_wall_is_refused_by_name():
    points = useq.GridRowsColumns(rows=1, columns=3, fov_width=1000.0, fov_height=800.0)
    with pytest.raises(ValueError, match=r"point 0 .*\(-1000, .*384-well.*keep the \|dx\|"):
        scan_plan_from_useq(
            _plan_384(points), barcode="P384", objective="40x", field_of_view_um=FOV_40X
        )
    # The same grid fits at 100x (a smaller field).
    fov_100x = simulated_field_of_view_um("100x")
    scan_plan_from_useq(_plan_384(points), barcode="P", objective="100x", field_of_view_um=fov_100x)
    # A 1.2 mm field is too big for a 1536-well plate's 1.7 mm wells wherever it is.
    tiny = _wpp(plate="1536-well", a1_center_xy=(0.0, 0.0), selected_wells=([31], [47]))
    with pytest.raises(ValueError, match="1200 x 1200 um field does not fit inside a 1700 um"):
        scan_plan_from_useq(tiny, barcode="P", objective="40x", field_of_view_um=(1200.0, 1200.0))
    # A 40x field of the simulated camera fits at its centre (75 um to spare).
    assert scan_plan_from_useq(
        tiny, barcode="P", objective="40x", field_of_view_um=FOV_40X
    ).wells == ["AF48"]


def test_unsupported_plans_are_refused_clearly():
    unseeded = useq.RandomPoints(num_points=3, max_width=500, max_height=500)
    with pytest.raises(ValueError, match="random_seed"):
        scan_plan_from_useq(
            _plan_384(unseeded), barcode="P", objective="40x", field_of_view_um=FOV_40X
        )
    seeded = useq.RandomPoints(num_points=3, max_width=500, max_height=500, random_seed=7)
    first = scan_plan_from_useq(
        _plan_384(seeded), barcode="P", objective="40x", field_of_view_um=FOV_40X
    )
    again = scan_plan_from_useq(
        _plan_384(seeded).model_dump(mode="json"),
        barcode="P",
        objective="40x",
        field_of_view_um=FOV_40X,
    )
    assert first.offsets() == again.offsets() and len(first.offsets()) == 3
    # Unset, useq counts no wells but iterates all of them: the scan asks for them explicitly.
    unset = _wpp(plate="384-well", a1_center_xy=(0.0, 0.0))
    with pytest.raises(ValueError, match="selected_wells unset"):
        scan_plan_from_useq(unset, barcode="P", objective="40x", field_of_view_um=FOV_40X)
    every = _wpp(plate="384-well", a1_center_xy=(0.0, 0.0), selected_wells=slice(None))
    assert list(
        scan_plan_from_useq(every, barcode="P", objective="40x", field_of_view_um=FOV_40X).wells
    ) == list(plate_geometry("384-well").well_names)
    nothing = _wpp(plate="384-well", a1_center_xy=(0.0, 0.0), selected_wells=[])
    with pytest.raises(ValueError, match="selects no wells"):
        scan_plan_from_useq(nothing, barcode="P", objective="40x", field_of_view_um=FOV_40X)
    with pytest.raises(ValueError, match="objective"):
        scan_plan_from_useq(
            _plan_384(useq.RelativePosition()),
            barcode="P",
            objective="20x",  # type: ignore[arg-type]
            field_of_view_um=FOV_40X,
        )


def test_oversized_plates_and_point_counts_are_refused_before_they_are_built():
    base = {"a1_center_xy": [0.0, 0.0], "selected_wells": [[0], [0]]}
    huge_plate = {"rows": 10**5, "columns": 10**5, "well_spacing": 1.0, "well_size": 0.5}
    with pytest.raises(ValueError, match="100000 x 100000 wells; at most 1536"):
        scan_plan_from_useq(
            {**base, "plate": huge_plate}, barcode="P", objective="40x", field_of_view_um=FOV_40X
        )
    huge_grid = {"rows": 10**5, "columns": 10**5, "fov_width": 1.0, "fov_height": 1.0}
    with pytest.raises(ValueError, match=r"10000000000 points per well; 1\.\.25 allowed"):
        scan_plan_from_useq(
            {**base, "plate": "384-well", "well_points_plan": huge_grid},
            barcode="P",
            objective="40x",
            field_of_view_um=FOV_40X,
        )
    # A plate spelled out rather than named is the registered type of that geometry.
    spelled = {"rows": 2, "columns": 3, "well_spacing": 39.12, "well_size": 34.8}
    plan = scan_plan_from_useq(
        {**base, "plate": spelled}, barcode="P", objective="40x", field_of_view_um=FOV_40X
    )
    assert plan.plate.name == "6-well"
    odd = {"rows": 2, "columns": 3, "well_spacing": 30.0, "well_size": 20.0}
    with pytest.raises(ValueError, match="not a registered plate type"):
        scan_plan_from_useq(
            {**base, "plate": odd}, barcode="P", objective="40x", field_of_view_um=FOV_40X
        )


# -- the worker's record -------------------------------------------------------------------------
def test_a_failed_autofocus_flags_the_well_and_instrument_time_is_summed():
    def field(index: int, ok: bool) -> AcquiredField:
        report = AutofocusReport(
            method="software", ok=ok, z_um=1.0, steps=9, score=0.5, seconds=0.2
        )
        return AcquiredField(
            well="B2",
            field_index=index,
            image=np.zeros((4, 4), np.uint16),
            x_um=0.0,
            y_um=0.0,
            objective="40x",
            pixel_size_um=1.0,
            acquired_at=datetime.now(UTC),
            acquisition_ms=1.0,
            z_um=1.0,
            instrument_ms=250.0,
            autofocus=report,
        )

    acquisition = WellAcquisition(well="B2", fields=[field(0, True), field(1, False)])
    call = WellCall("high", 0.9, [], ["out_of_focus"], None, 1.0, 1.0)
    row = _result_row(1, 2, acquisition, call, 3)
    assert row.qc_flags == ["out_of_focus", "focus_failed"]
    assert row.instrument_ms == 500.0
    good = WellAcquisition(well="B2", fields=[field(0, True)])
    assert _result_row(1, 2, good, call, 3).qc_flags == ["out_of_focus"]


# -- settings ------------------------------------------------------------------------------------
def test_autofocus_and_timing_settings_reach_the_backend(monkeypatch):
    from app.runtime import backend_options
    from app.settings import Settings

    defaults = backend_options(Settings(_env_file=None))  # type: ignore[call-arg]
    assert (defaults.autofocus, defaults.sim_timing) == ("continuous", "fast")
    monkeypatch.setenv("MSCREEN_AUTOFOCUS", "map")
    monkeypatch.setenv("MSCREEN_SIM_TIMING", "realtime")
    options = backend_options(Settings(_env_file=None))  # type: ignore[call-arg]
    assert (options.autofocus, options.sim_timing) == ("map", "realtime")
    monkeypatch.setenv("MSCREEN_AUTOFOCUS", "laser")
    with pytest.raises(ValueError, match="autofocus"):
        Settings(_env_file=None)  # type: ignore[call-arg]


# -- the service ---------------------------------------------------------------------------------
@pytest.fixture
def simulated_service(settings, request):
    """The app on a simulator backend: `simulated` (the simulator driven directly by
    StepScanner) unless the test asks for another (indirect parametrisation)."""
    from app.auth import create_key
    from store.db import session_scope
    from store.orm import Role

    backend = getattr(request, "param", "simulated")
    with TestClient(create_app(settings.model_copy(update={"microscope": backend}))) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        with session_scope(runtime.session_factory) as session:
            key = create_key(session, "test-operator", Role.operator)
        client.headers["X-API-Key"] = key
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("simulated_service", ["simulated", "pycromanager-sim"], indirect=True)
def test_a_384_well_plate_plan_scans_end_to_end(simulated_service):
    client = simulated_service
    grid = useq.GridRowsColumns(rows=1, columns=3, fov_width=500.0, fov_height=500.0)
    plan = _plan_384(grid, rotation=0.5).model_dump(mode="json")
    response = client.post(
        "/api/v1/scans", json={"plate_barcode": "SIM-384-0001", "plate_plan": plan}
    )
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["plate_type"] == "384-well" and queued["wells_total"] == 3
    assert queued["fields_per_well"] == 3
    assert (queued["plate_rows"], queued["plate_columns"]) == (16, 24)

    final = wait_for_scan(client, response.headers["Location"])
    assert final["status"] == "completed", final
    body = client.get("/api/v1/plates/SIM-384-0001/wells").json()
    assert [w["well"] for w in body["wells"]] == ["A1", "C6", "P24"]
    for well in body["wells"]:
        assert well["status"] in ("ok", "excluded")
        assert [image["field"] for image in well["images"]] == [0, 1, 2]
        for image in well["images"]:
            # Continuous focus (the default): z is the lock's, and no autofocus search ran.
            assert image["z_um"] is not None and image["autofocus"] is None
        assert well["instrument_ms"] > 0
    assert final["instrument_s"] == pytest.approx(
        sum(w["instrument_ms"] for w in body["wells"]) / 1000.0
    )

    runtime = client.app.state.runtime
    from store.orm import Image, Plate, Scan

    with runtime.session_factory() as session:
        scan = session.get_one(Scan, final["id"])
        assert scan.plate.plate_type == "384-well" and len(scan.plate.wells) == 384
        assert scan.plate_plan["plate"]["name"] == "384-well"
        geometry = dataclasses.replace(
            plate_geometry("384-well"), a1_center_um=(12130.0, 8990.0), rotation_deg=0.5
        )
        images = session.query(Image).filter(Image.scan_id == scan.id).all()
        assert len(images) == 9
        for image in images:
            well = session.get_one(Plate, scan.plate_id).wells
            name = next(w.name for w in well if w.id == image.well_id)
            assert geometry.well_at(image.x_um, image.y_um) == name

    # Another plan for the same plate with another type: 409 naming both types.
    other = _wpp(plate="96-well", a1_center_xy=(14380.0, 11240.0), selected_wells=[0])
    clash = client.post(
        "/api/v1/scans",
        json={"plate_barcode": "SIM-384-0001", "plate_plan": other.model_dump(mode="json")},
    )
    assert clash.status_code == 409, clash.text
    assert "stored as a 384-well plate" in clash.text and "for a SBS-96 plate" in clash.text
    # A wells list on the stored 384-well plate is checked against its own geometry.
    listed = client.post("/api/v1/scans", json={"plate_barcode": "SIM-384-0001", "wells": ["P24"]})
    assert listed.status_code == 202, listed.text
    wait_for_scan(client, listed.headers["Location"])


def test_plate_plan_requests_are_validated(simulated_service):
    client = simulated_service
    plan = _plan_384(useq.RelativePosition()).model_dump(mode="json")
    both = client.post(
        "/api/v1/scans",
        json={
            "plate_barcode": "SIM-384-0002",
            "plate_plan": plan,
            "wells": ["A1"],
            "fields_per_well": 2,
        },
    )
    assert both.status_code == 422
    assert "plate_plan and wells and fields_per_well both given" in both.text
    bad = client.post(
        "/api/v1/scans",
        json={
            "plate_barcode": "SIM-384-0002",
            "plate_plan": {"plate": "999-well", "a1_center_xy": [0, 0]},
        },
    )
    assert bad.status_code == 422 and "999-well" in bad.text
    edge = _plan_384(useq.RelativePosition(x=1500.0, y=0.0)).model_dump(mode="json")
    near_wall = client.post(
        "/api/v1/scans", json={"plate_barcode": "SIM-384-0002", "plate_plan": edge}
    )
    assert near_wall.status_code == 422 and "point 0" in near_wall.text
    # JSON's NaN / Infinity tokens parse: they must not reach the stage (or the database).
    for field, value in (("a1_center_xy", "[NaN, 0]"), ("rotation", "Infinity")):
        body = (
            '{"plate_barcode": "SIM-384-0003", "plate_plan": {"plate": "384-well", '
            f'"a1_center_xy": [0, 0], "selected_wells": [[0], [0]], "{field}": {value}}}}}'
        )
        nan = client.post(
            "/api/v1/scans", content=body, headers={"Content-Type": "application/json"}
        )
        assert nan.status_code == 422 and field in nan.text, nan.text
    # A well selected over and over is refused before it costs anything.
    many = {"plate": "384-well", "a1_center_xy": [0, 0], "selected_wells": [[0] * 500, [0] * 500]}
    repeated = client.post(
        "/api/v1/scans", json={"plate_barcode": "SIM-384-0003", "plate_plan": many}
    )
    assert repeated.status_code == 422 and "selected once" in repeated.text
    # The wider well pattern does not let a 96-well plate take a 384-well name.
    a13 = client.post("/api/v1/scans", json={"plate_barcode": "SIM-96-0002", "wells": ["A13"]})
    assert a13.status_code == 422 and "A1..H12" in a13.text


@pytest.mark.slow
def test_cli_scans_a_plate_plan_file_and_prints_the_plates_own_grid(tmp_path):
    import os

    from tests.test_cli import _mscreen

    plan = _wpp(
        plate="24-well",
        a1_center_xy=(16380.0, 14240.0),
        selected_wells=([0, 1], [0, 3]),
        well_points_plan=useq.GridRowsColumns(rows=2, columns=1, fov_width=1200, fov_height=900),
    )
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    env = dict(os.environ, MSCREEN_DATA_DIR=str(tmp_path / "data"), MSCREEN_MICROSCOPE="simulated")
    scan = _mscreen("scan", "--plate", "SIM-CLI-24", "--plate-plan", str(path), env=env)
    assert scan.returncode == 0, scan.stderr
    assert "2 wells" in scan.stderr and "completed" in scan.stderr
    assert " D  " in scan.stdout and " E  " not in scan.stdout  # 4 rows x 6 columns
    both = _mscreen(
        "scan", "--plate", "SIM-CLI-24", "--plate-plan", str(path), "--wells", "A1", env=env
    )
    assert both.returncode == 2 and "drop --wells and --fields" in both.stderr
