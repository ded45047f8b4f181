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
