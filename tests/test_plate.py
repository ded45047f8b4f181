import pytest

from hardware.plate import SBS_96, WellNameError


def test_96_wells_in_row_major_order():
    names = SBS_96.well_names
    assert len(names) == 96
    assert names[:3] == ("A1", "A2", "A3")
    assert names[11:13] == ("A12", "B1")
    assert names[-1] == "H12"
    assert len(set(names)) == 96


@pytest.mark.parametrize(
    ("well", "expected_um"),
    [
        ("A1", (14380.0, 11240.0)),
        ("A12", (14380.0 + 11 * 9000.0, 11240.0)),
        ("H1", (14380.0, 11240.0 + 7 * 9000.0)),
        ("H12", (113380.0, 74240.0)),
        ("C5", (14380.0 + 4 * 9000.0, 11240.0 + 2 * 9000.0)),
    ],
)
def test_well_centres_follow_sbs_pitch(well, expected_um):
    assert SBS_96.well_center_um(well) == pytest.approx(expected_um)


def test_well_names_are_normalised():
    assert SBS_96.normalise("b07") == "B7"
    assert SBS_96.parse(" h12 ") == (7, 11)


@pytest.mark.parametrize("bad", ["I1", "A0", "A13", "", "1A", "AA1", "A-1"])
def test_bad_well_names_are_rejected_with_the_name(bad):
    with pytest.raises(WellNameError, match=r"well|not a well"):
        SBS_96.parse(bad)


def test_edge_wells():
    assert SBS_96.is_edge_well("A5") and SBS_96.is_edge_well("D12") and SBS_96.is_edge_well("H1")
    assert not SBS_96.is_edge_well("D6")
    assert sum(SBS_96.is_edge_well(w) for w in SBS_96.well_names) == 36


def test_field_offsets_are_centred():
    assert SBS_96.field_offsets_um(1, 1000.0) == [(0.0, 0.0)]
    four = SBS_96.field_offsets_um(4, 1000.0)
    assert four == [(-500.0, -500.0), (500.0, -500.0), (-500.0, 500.0), (500.0, 500.0)]
    nine = SBS_96.field_offsets_um(9, 1000.0)
    assert nine[4] == (0.0, 0.0)
    with pytest.raises(ValueError):
        SBS_96.field_offsets_um(0, 1000.0)
