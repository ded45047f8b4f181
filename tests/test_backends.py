"""The microscope backend registry: names, clear errors, and the bit depth each backend stamps
on the fields it acquires."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings
from hardware.backends import Backend, BackendOptions, backend_names, get_backend, register
from hardware.microscope import ScanPlan
from hardware.pycromanager import PycromanagerSettings
from hardware.sim import SimulationConfig


def test_registry_names_the_built_in_backends_and_refuses_unknown_ones():
    assert backend_names() == ["pycromanager-sim", "simulated", "pycromanager"]
    assert get_backend("pycromanager").instrument == "micromanager"
    with pytest.raises(ValidationError, match="unknown microscope backend 'nikon'; known: "):
        Settings(microscope="nikon")
    with pytest.raises(ValueError, match="already registered"):
        register(get_backend("simulated"))


def test_a_registered_backend_is_a_valid_setting(monkeypatch):
    import hardware.backends as backends

    monkeypatch.setitem(
        backends._BACKENDS,
        "test-scope",
        Backend("test-scope", "bench", lambda o: get_backend("simulated").build(o), lambda o: 10),
    )
    assert Settings(microscope="test-scope").microscope == "test-scope"


@pytest.mark.parametrize("name", ["simulated", "pycromanager-sim"])
def test_simulated_backends_stamp_their_bit_depth_on_every_field(name):
    options = BackendOptions(simulation_seed=3)
    backend = get_backend(name)
    (well,) = list(backend.build(options).scan(ScanPlan("BITS-1", ["B2"], fields_per_well=2)))
    assert well.error is None
    expected = SimulationConfig(seed=3).bit_depth
    assert [f.bit_depth for f in well.fields] == [expected, expected]
    assert backend.bit_depth(options) == expected  # what training and overlays use


def test_real_micromanager_bit_depth_comes_from_the_setting():
    assert get_backend("pycromanager").bit_depth(BackendOptions(camera_bit_depth=12)) == 12
    assert get_backend("pycromanager").bit_depth(BackendOptions()) is None
    with pytest.raises(ValueError, match="camera_bit_depth must be within"):
        PycromanagerSettings(camera_bit_depth=20)
    with pytest.raises(ValueError, match="MSCREEN_MM_APP_PATH needs MSCREEN_MM_CONFIG"):
        get_backend("pycromanager").build(BackendOptions(mm_app_path=Path(".")))
