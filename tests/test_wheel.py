"""The package as a user installs it: a wheel built from the repo, installed into a fresh
virtualenv, scans a plate on the simulated Micro-Manager core from outside the checkout.

Catches what an editable install hides: package data left out of the wheel (the simulated
core's .cfg, the bundled model, the page, the migrations) and imports that only work from the
repo root.
"""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


def test_wheel_installs_into_a_fresh_venv_and_scans(tmp_path):
    # No build isolation: nothing is downloaded (setuptools >= 70 builds wheels by itself).
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", tmp_path / "dist", ROOT, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("mscreen-*.whl")

    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    where_packages = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run(python, "-c", where_packages, cwd=tmp_path).strip())
    # The wheel alone, by this interpreter's pip, into the empty venv; only then are the
    # already-installed dependencies made visible (a .pth line after the venv's own packages,
    # and .pth files there are not run, so the checkout's editable install stays out of it).
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel,
        cwd=tmp_path,
    )  # fmt: skip
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "mscreen-test-dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")

    where = _run(
        python, "-c",
        "import app, cli, hardware.sim, models.repository as r, migrations, store; "
        "print(app.__file__); print(r.BUNDLED_REPOSITORY)",
        cwd=tmp_path,
    ).split()  # fmt: skip
    assert all(Path(p).is_relative_to(purelib) for p in where), where
    installed = purelib / "hardware" / "sim" / "simulated_microscope.cfg"
    assert installed.exists(), "the simulated core's .cfg is not in the wheel"
    for page_file in ("index.html", "js/main.js", "docs/init.js"):  # the page and /docs
        assert (purelib / "app" / "static" / page_file).exists(), f"{page_file} not in the wheel"

    env = {"PATH": f"{target / 'bin'}:/usr/bin:/bin", "MSCREEN_DATA_DIR": str(tmp_path / "data")}
    out = _run(
        target / "bin" / "mscreen", "scan", "--plate", "WHEEL-1", "--wells", "A1,B2",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    lines = out.splitlines()
    row_a = next(line for line in lines if line.startswith(" A "))
    assert row_a.split()[1] in ("H", "L", "QC-x"), out
    assert "high:" in out and "failed: 0" in out, out
