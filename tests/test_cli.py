"""The CLI: help, one-line user errors, and a small local scan through the service code path."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli.main import cli


def _mscreen(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_help_lists_the_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "scan", "results", "train", "db"):
        assert command in result.output


def test_user_errors_are_one_line(tmp_path, monkeypatch):
    import os

    env = dict(os.environ, MSCREEN_DATA_DIR=str(tmp_path / "data"))
    unknown = _mscreen("results", "--plate", "NOPE", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("error: no database at")
    assert "Traceback" not in unknown.stderr
    objective = _mscreen("scan", "--plate", "P1", "--objective", "63x", env=env)
    assert objective.returncode == 2 and "Traceback" not in objective.stderr
    assert "40x or 100x" in objective.stderr


@pytest.mark.slow
def test_local_scan_of_a_few_wells_prints_a_map_and_csv(tmp_path):
    import os

    env = dict(os.environ, MSCREEN_DATA_DIR=str(tmp_path / "data"))
    scan = _mscreen("scan", "--plate", "SIM-CLI-1", "--wells", "A1,B2,c3", env=env)
    assert scan.returncode == 0, scan.stderr
    assert " A  " in scan.stdout and " H  " in scan.stdout
    assert "completed" in scan.stderr
    csv_out = _mscreen("results", "--plate", "SIM-CLI-1", "--csv", env=env)
    assert csv_out.returncode == 0, csv_out.stderr
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0].startswith("well,status,label,probability")
    assert [line.split(",")[0] for line in lines[1:]] == ["A1", "B2", "C3"]
    other = _mscreen("results", "--plate", "NOT-SCANNED", env=env)
    assert other.returncode == 2
    assert other.stderr.strip() == "error: no results for plate 'NOT-SCANNED' in " + (
        f"sqlite:///{tmp_path / 'data' / 'mscreen.db'}"
    )
    bad = _mscreen("scan", "--plate", "SIM-CLI-1", "--wells", "A1,Q4", env=env)
    assert bad.returncode == 2 and "Q4" in bad.stderr and "Traceback" not in bad.stderr


def test_sim_fct_export_matches_the_service_simulator(tmp_path, monkeypatch):
    """`mscreen sim fct-export` is the simulator's cytometer CSV for the seed the service's
    simulated microscope uses (MSCREEN_SIMULATION_SEED), or --seed; stdout or --output."""
    from app.settings import get_settings
    from hardware.sim import SimulationConfig
    from hardware.sim.truth import fct_export_csv

    # get_settings may be memoised: each environment below must be read afresh.
    forget = getattr(get_settings, "cache_clear", lambda: None)
    runner = CliRunner()
    try:
        forget()
        default = runner.invoke(cli, ["sim", "fct-export", "--plate", "SIM-FCT-1"])
        assert default.exit_code == 0, default.output
        assert default.stdout == fct_export_csv(SimulationConfig(seed=0), "SIM-FCT-1")
        assert default.stdout.splitlines()[5] == "Well,Sample ID,Events,CD73-FITC+ %,CD90-PE+ %"
        assert len(default.stdout.splitlines()) == 6 + 96

        monkeypatch.setenv("MSCREEN_SIMULATION_SEED", "7")
        forget()
        seeded = runner.invoke(cli, ["sim", "fct-export", "--plate", "SIM-FCT-1"])
        assert seeded.exit_code == 0, seeded.output
        assert seeded.stdout == fct_export_csv(SimulationConfig(seed=7), "SIM-FCT-1")
        assert seeded.stdout != default.stdout

        target = tmp_path / "fct.csv"
        written = runner.invoke(
            cli, ["sim", "fct-export", "-p", "SIM-FCT-1", "--seed", "0", "--output", str(target)]
        )
        assert written.exit_code == 0, written.output
        assert target.read_text() == default.stdout
        assert "SIM-FCT-1" in written.stderr and written.stdout == ""
    finally:
        monkeypatch.delenv("MSCREEN_SIMULATION_SEED", raising=False)
        forget()


def test_sim_fct_export_refuses_a_bad_barcode_in_one_line():
    bad = _mscreen("sim", "fct-export", "--plate", "no spaces")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("error: --plate 'no spaces' is not a barcode")
