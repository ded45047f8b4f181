"""Multi-channel end to end: the simulator's light paths, acquisition through Micro-Manager's
channel group, OME-Zarr channels, and a band_source="channels" model trained on simulated plates
that serves a two-channel scan."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Reader
from sqlalchemy import select

from hardware.backends import BackendOptions, get_backend
from hardware.microscope import AcquiredField, ScanPlan, StepScanner
from hardware.pycromanager import PycromanagerScanner, PycromanagerSettings, plan_events
from hardware.sim import SIM_CHANNELS, SimulatedMicroscope, SimulationConfig, render_field
from hardware.sim.mm_devices import build_simulated_core, set_plate
from models.pipeline import PipelineConfig, prepare
from store.images import ImageStore, pixel_sha256

SMALL = SimulationConfig(seed=11, camera_shape=(66, 90), overexposure_rate=0.0)
TWO = ("Phase", "Brightfield")
ALL = tuple(SIM_CHANNELS)
BARCODE = "MC-0001"


def _centre(well: str) -> tuple[float, float]:
    return SMALL.plate.well_center_um(well)


# ---------------------------------------------------------------------------------------------
# The simulator's channels


def test_phase_channel_is_the_single_frame_and_channels_are_co_registered() -> None:
    x, y = _centre("C4")
    single = render_field(SimulationConfig(seed=2), BARCODE, "C4", x, y, "40x")
    stack = render_field(SimulationConfig(seed=2), BARCODE, "C4", x, y, "40x", channels=ALL)
    assert stack.shape == (*single.shape, len(ALL)) and stack.dtype == np.uint16
    np.testing.assert_array_equal(stack[..., 0], single)  # "Phase" is today's frame
    planes = stack.reshape(-1, len(ALL)).T.astype(np.float64)
    correlation = np.asarray(np.corrcoef(planes))
    # Same cells in the same place: every channel correlates with phase contrast...
    assert correlation[0, 1:].min() > 0.4
    # ...but each light path images them differently (not a copy with new noise).
    assert all(not np.array_equal(stack[..., 0], stack[..., c]) for c in range(1, len(ALL)))
    contrast = stack.reshape(-1, len(ALL)).std(axis=0)
    brightfield = ALL.index("Brightfield")
    assert contrast[brightfield] < 0.8 * contrast[0]  # no phase ring: weaker contrast
    # A focal offset flips edge contrast: above and below focus differ in opposite directions.
    above, below = ALL.index("Phase+2um"), ALL.index("Phase-2um")
    diff_above = stack[..., above].astype(np.float64) - stack[..., 0]
    diff_below = stack[..., below].astype(np.float64) - stack[..., 0]
    assert np.corrcoef(diff_above.ravel(), diff_below.ravel())[0, 1] < -0.3


def test_channels_are_checked_with_clear_errors() -> None:
    x, y = _centre("A1")
    with pytest.raises(ValueError, match=r"unknown simulated channel 'DAPI'.*Brightfield"):
        render_field(SMALL, BARCODE, "A1", x, y, "40x", channels=("Phase", "DAPI"))
    with pytest.raises(ValueError, match="unique"):
        render_field(SMALL, BARCODE, "A1", x, y, "40x", channels=("Phase", "Phase"))
    with pytest.raises(ValueError, match="unknown simulated channel"):
        SimulatedMicroscope(SMALL).set_channel("Fluo")


def test_step_scanner_acquires_every_field_in_each_channel() -> None:
    plan = ScanPlan(BARCODE, ["B2", "G11"], objective="100x", fields_per_well=2)
    wells = list(StepScanner(SimulatedMicroscope(SMALL), channels=TWO).scan(plan))
    for well in wells:
        for field in well.fields:
            expected = render_field(
                SMALL, BARCODE, well.well, field.x_um, field.y_um, "100x", channels=TWO
            )
            np.testing.assert_array_equal(field.image, expected)
            assert field.channel_names == TWO and field.metadata["channels"] == list(TWO)
            assert field.bit_depth == SMALL.bit_depth
    (single,) = StepScanner(SimulatedMicroscope(SMALL)).scan(ScanPlan(BARCODE, ["B2"]))
    assert single.fields[0].image.ndim == 2 and "channels" not in single.fields[0].metadata


def test_a_microscope_without_channels_or_an_unknown_channel_is_refused_up_front() -> None:
    class NoChannels:
        name = "plain"

    with pytest.raises(ValueError, match="cannot switch channels"):
        StepScanner(NoChannels(), channels=TWO)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown simulated channel"):
        StepScanner(SimulatedMicroscope(SMALL), channels=("Phase", "GFP"))
    with pytest.raises(ValueError, match="unknown simulated channel"):
        get_backend("pycromanager-sim").build(BackendOptions(acquisition_channels=("GFP",)))


# ---------------------------------------------------------------------------------------------
# Micro-Manager's channel group through pycromanager's engine


def test_single_channel_events_are_unchanged() -> None:
    from hardware.pycromanager import plan_sites

    sites = plan_sites(ScanPlan(BARCODE, ["A1", "A2"]))
    events = plan_events(sites, "40x", "Objective")
    assert [e["config_group"] for e in events] == [["Objective", "40x"]] * 2
    assert [e["axes"] for e in events] == [
        {"position": "A1", "channel": "40x"},
        {"position": "A2", "channel": "40x"},
    ]
    multi = plan_events(sites, "40x", "Objective", channels=TWO, channel_group="Channel")
    assert [(e["axes"]["position"], e["config_group"][1]) for e in multi] == [
        ("A1", "Phase"),
        ("A1", "Brightfield"),
        ("A2", "Phase"),
        ("A2", "Brightfield"),
    ]


def test_pycromanager_scan_through_the_channel_group_matches_render_field() -> None:
    core = build_simulated_core(SMALL)
    try:
        assert set(core.getAvailableConfigs("Channel")) == set(SIM_CHANNELS)
        settings = PycromanagerSettings(
            snap_timeout_s=5.0, device_timeout_s=5.0, stall_timeout_s=30.0, channels=ALL
        )
        scanner = PycromanagerScanner(
            core=core, settings=settings, load_plate=lambda barcode: set_plate(core, barcode)
        )
        snapped: list[str] = []
        core.events.imageSnapped.connect(snapped.append)
        plan = ScanPlan(BARCODE, ["A1", "D6", "H12"], objective="100x", fields_per_well=2)
        wells = list(scanner.scan(plan))
        assert [w.well for w in wells] == ["A1", "D6", "H12"] and not any(w.failed for w in wells)
        assert len(snapped) == 3 * 2 * len(ALL)  # one exposure per field and channel
        for well in wells:
            assert [f.field_index for f in well.fields] == [0, 1]
            for field in well.fields:
                expected = render_field(
                    SMALL, BARCODE, well.well, field.x_um, field.y_um, "100x", channels=ALL
                )
                np.testing.assert_array_equal(field.image, expected)
                assert field.channel_names == ALL and field.objective == "100x"
                assert field.pixel_size_um == pytest.approx(core.getPixelSizeUmByID("Res100x"))
        assert core.getCurrentConfig("Objective") == "100x"  # set once, before the events
    finally:
        core.unloadAllDevices()


def test_pycromanager_settings_refuse_bad_channels() -> None:
    with pytest.raises(ValueError, match="unique"):
        PycromanagerSettings(channels=("Phase", "Phase"))
    with pytest.raises(ValueError, match="group of their own"):
        PycromanagerSettings(channels=TWO, channel_group="Objective")


# ---------------------------------------------------------------------------------------------
# OME-Zarr channels


def _field(image: np.ndarray, well: str = "B7", index: int = 0, **metadata) -> AcquiredField:
    return AcquiredField(
        well=well,
        field_index=index,
        image=image,
        x_um=1000.0,
        y_um=2000.0,
        objective="40x",
        pixel_size_um=0.65,
        acquired_at=datetime.now(UTC),
        acquisition_ms=1.0,
        bit_depth=12,
        metadata=dict(metadata),
    )


@pytest.mark.parametrize("ngff_version", ["0.5", "0.4"])
def test_multi_channel_fields_round_trip_as_named_ome_zarr_channels(
    tmp_path: Path, ngff_version: str
) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4096, (48, 64, 3), dtype=np.uint16)
    names = ["Phase", "Brightfield", "Phase+2um"]
    store = ImageStore(tmp_path, ngff_version=ngff_version)  # type: ignore[arg-type]
    stored = store.save("P1", 4, _field(image, channels=names), fields_per_well=2)
    store.save(
        "P1", 4, _field(rng.integers(0, 4096, (48, 64), np.uint16), index=1), fields_per_well=2
    )

    loaded = ImageStore.load(stored.path, sha256=stored.sha256)
    assert loaded.shape == (48, 64, 3) and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, image)
    assert ImageStore.channel_names(stored.path) == tuple(names)
    assert ImageStore.channel_names(str(Path(stored.path).parent / "1")) == ()
    # The checksum is of the stored (C, Y, X) array, checkable from the zarr data alone.
    s0 = zarr.open_array(str(Path(stored.path) / "s0"), mode="r")
    assert s0.shape == (3, 48, 64)
    assert stored.sha256 == pixel_sha256(np.asarray(s0[...]))

    (node,) = [
        n
        for n in Reader(parse_url(stored.path))()
        if any(isinstance(s, Multiscales) for s in n.specs)
    ]
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    assert node.metadata["channel_names"] == names
    assert node.data[1].shape == (3, 24, 32)
    np.testing.assert_array_equal(np.asarray(node.data[0]), image.transpose(2, 0, 1))
    full_res = node.metadata["coordinateTransformations"][0]
    scale = next(t["scale"] for t in full_res if t["type"] == "scale")
    translation = next(t["translation"] for t in full_res if t["type"] == "translation")
    assert scale == pytest.approx([1.0, 0.65, 0.65])
    assert translation == pytest.approx([0.0, 2000.0 - 47 / 2 * 0.65, 1000.0 - 63 / 2 * 0.65])

    if ngff_version == "0.5":
        from ome_zarr_models.v05.hcs import HCS
    else:
        from ome_zarr_models.v04.hcs import HCS  # type: ignore[assignment]
    hcs = HCS.from_zarr(zarr.open_group(str(store.plate_path("P1", 4)), mode="r"))
    assert [w.path for w in hcs.ome_attributes.plate.wells] == ["B/7"]


def test_single_channel_storage_is_unchanged_and_odd_shapes_are_refused(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    frame = np.random.default_rng(1).integers(0, 4096, (48, 64), dtype=np.uint16)
    stored = store.save("P1", 1, _field(frame[:, :, None]), fields_per_well=1)  # (H, W, 1)
    attrs = zarr.open_group(stored.path, mode="r").attrs.asdict()
    assert zarr.open_array(str(Path(stored.path) / "s0"), mode="r").shape == (48, 64)
    assert "omero" not in dict(attrs["ome"])  # type: ignore[arg-type]
    assert stored.sha256 == pixel_sha256(frame)
    np.testing.assert_array_equal(ImageStore.load(stored.path), frame)
    with pytest.raises(ValueError, match=r"2\.\.8 channels"):
        store.save("P1", 1, _field(np.zeros((8, 8, 9), np.uint16)), fields_per_well=1)
    # Without recorded names the channels are still named, in order.
    unnamed = store.save("P1", 2, _field(np.zeros((8, 8, 2), np.uint8)), fields_per_well=1)
    assert ImageStore.channel_names(unnamed.path) == ("channel_0", "channel_1")


# ---------------------------------------------------------------------------------------------
# Train on two-channel simulated plates, serve a two-channel scan

PIPELINE = PipelineConfig(band_source="channels", channels=2, height=64, width=64, ws=5, k=8)
TRAIN_WELLS = ["A1", "A2", "B3", "B4", "C5", "C6", "D7", "D8", "E9", "E10", "F11", "F12"]
SCAN_WELLS = ["A3", "B6", "G2", "H9"]


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny SCNN trained two epochs on two-channel simulated plates, published as ONNX."""
    from models.networks import create_model
    from models.repository import ModelRepository
    from training.imagesets import simulated_image_set
    from training.publish import publish
    from training.trainer import TrainConfig, train

    sim = SimulationConfig(seed=0, overexposure_rate=0.0)  # the service simulates seed 0

    def image_set(barcode: str, wells: list[str]):
        return simulated_image_set(
            [barcode], sim=sim, pipeline=PIPELINE, wells=wells, workers=1, progress=False
        )

    train_set = image_set("MC-TRAIN", TRAIN_WELLS)
    val_set = image_set("MC-VAL", TRAIN_WELLS[:6])
    model = create_model("scnn", in_bands=2)
    result = train(
        model, train_set, val_set, TrainConfig(epochs=2, batch_size=4, seed=1), progress=False
    )
    repository_path = tmp_path_factory.mktemp("repo")
    artifact = publish(
        result.model,
        repository=ModelRepository(repository_path),
        name="mc-tiny",
        architecture="scnn",
        pipeline=PIPELINE,
        in_bands=2,
        card={"data": {"source": "simulated", "channels": list(TWO)}},
    )
    return sim, train_set, artifact, repository_path


@pytest.mark.slow  # ~15 s: renders, prepares and trains the module's model
def test_channels_data_set_is_what_a_two_channel_scan_prepares(two_channel_model) -> None:
    from training.imagesets import simulated_image_set

    sim, train_set, _, _ = two_channel_model
    assert train_set.features.shape == (len(TRAIN_WELLS), 2, 64, 64)
    assert np.isfinite(train_set.features).all() and train_set.excluded == 0
    (acquired,) = StepScanner(SimulatedMicroscope(sim), channels=TWO).scan(
        ScanPlan("MC-TRAIN", ["C5"])
    )
    served = prepare(acquired.fields[0].image, PIPELINE, bit_depth=acquired.fields[0].bit_depth)
    assert served.features is not None
    np.testing.assert_array_equal(
        served.features.view(np.uint32), train_set.features[TRAIN_WELLS.index("C5")].view(np.uint32)
    )
    with pytest.raises(ValueError, match="band_source='channels'"):
        simulated_image_set(["X"], sim=sim, pipeline=PipelineConfig(), channels=TWO, wells=["A1"])
    with pytest.raises(ValueError, match="expects 2"):
        simulated_image_set(["X"], sim=sim, pipeline=PIPELINE, channels=ALL, wells=["A1"])


@pytest.mark.slow  # ~15 s: two epochs of training plus a service scan
def test_the_service_classifies_a_two_channel_scan_with_the_trained_model(
    two_channel_model, settings
) -> None:
    from fastapi.testclient import TestClient

    from app.auth import create_key
    from app.main import create_app
    from models.inference import OnnxClassifier
    from store.db import session_scope
    from store.orm import Image, Role
    from tests.conftest import wait_for_scan

    sim, _, artifact, repository_path = two_channel_model
    card = json.loads(artifact.card_path.read_text())
    assert card["parity"]["passed"] and card["pipeline"]["band_source"] == "channels"
    settings.model_repository = repository_path
    settings.model_name = "mc-tiny"
    settings.acquisition_channels = TWO
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        with session_scope(runtime.session_factory) as session:
            client.headers["X-API-Key"] = create_key(session, "op", Role.operator)
        response = client.post(
            "/api/v1/scans", json={"plate_barcode": "MC-SCAN", "wells": SCAN_WELLS}
        )
        assert response.status_code == 202, response.text
        final = wait_for_scan(client, response.headers["Location"])
        assert final["status"] == "completed", final
        wells = client.get("/api/v1/plates/MC-SCAN/wells").json()["wells"]
        assert [w["well"] for w in wells] == SCAN_WELLS
        assert all(w["label"] in ("high", "low") for w in wells)
        for kind in ("image", "overlay"):
            png = client.get(f"/api/v1/plates/MC-SCAN/wells/A3/{kind}")
            assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        with session_scope(runtime.session_factory) as session:
            images = session.scalars(select(Image).order_by(Image.id)).all()
            rows = [(i.path, i.sha256, i.probability) for i in images]
    # What was stored is the two-channel frame, and the model's call is reproducible from it.
    classifier = OnnxClassifier(artifact.model_path, providers="cpu")
    assert len(rows) == len(SCAN_WELLS)
    for (path, sha256, probability), well in zip(rows, SCAN_WELLS, strict=True):
        frame = ImageStore.load(path, sha256=sha256)
        assert frame.shape == (*sim.camera_shape, 2)
        assert ImageStore.channel_names(path) == TWO
        x, y = sim.plate.well_center_um(well)
        np.testing.assert_array_equal(
            frame, render_field(sim, "MC-SCAN", well, x, y, "40x", channels=TWO)
        )
        prepared = prepare(frame, PIPELINE, bit_depth=sim.bit_depth)
        assert prepared.features is not None and prepared.mask is not None
        again, _ = classifier.predict(
            prepared.features[None], prepared.mask[None, None].astype(np.float32)
        )
        assert float(again[0]) == pytest.approx(probability, abs=1e-6)


def test_a_single_channel_model_refuses_a_multi_channel_scan_naming_the_setting() -> None:
    """The bundled filter-bank model must not read two acquired channels as anything else."""
    from app.classifier import WellClassifier
    from models.inference import OnnxClassifier
    from models.repository import BUNDLED_REPOSITORY

    model = OnnxClassifier(BUNDLED_REPOSITORY / "hscnn-sim/1/model.onnx", providers="cpu")
    (acquired,) = StepScanner(SimulatedMicroscope(SMALL), channels=TWO).scan(
        ScanPlan(BARCODE, ["A1"])
    )
    with pytest.raises(ValueError, match="MSCREEN_ACQUISITION_CHANNELS"):
        WellClassifier(model).classify(acquired.fields)
