"""The plate-map page (app/static/) in a real headless browser: Debian's Chromium driven by
Playwright against the real service (uvicorn on a free port, worker, SQLite, ONNX model).

A second test serves models with a decision set and an out-of-distribution guard (see
tests/test_call_policy_api.py) and checks the uncertain and no-call wells: their marks on the
map, the reason in the well panel, and the "confirm by FCT" list beside the plate.

Skips when /usr/bin/chromium or Playwright is missing, unless MSCREEN_REQUIRE_BROWSER=1 (CI),
where it fails instead. With MSCREEN_TEST_UPDATE_SCREENSHOT=1 the full-page screenshot it takes
at the end replaces docs/images/platemap.png (the docs' picture comes from this test only).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from app.auth import create_key
from app.main import create_app
from app.runtime import Runtime
from app.settings import Settings
from hardware.sim import SimulationConfig, fct_export_csv
from store.db import session_scope
from store.orm import Role

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the test skips, or fails where MSCREEN_REQUIRE_BROWSER=1
    expect = sync_playwright = None

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
# No downloads, no background traffic: the browser only talks to the service under test.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "platemap.png"
# A plate whose simulated frames include overexposed ones, so the map shows QC flags.
BARCODE = "MSC-2026-0002"
WELLS_TOTAL = 96
TIMEOUT_MS = 60_000


def _require_browser() -> None:
    """Skip (or, with MSCREEN_REQUIRE_BROWSER=1, fail) when the browser cannot run here."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    elif sync_playwright is None:
        problem = "Playwright for Python is missing (pip install -e '.[dev]')"
    if problem is None:
        return
    if os.environ.get("MSCREEN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test is required here (MSCREEN_REQUIRE_BROWSER=1): {problem}")
    pytest.skip(problem)


@pytest.fixture
def browser() -> Iterator:
    """Debian's headless Chromium under Playwright (its own browser downloads are not used)."""
    _require_browser()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class LiveService:
    url: str
    runtime: Runtime
    operator_key: str


def _free_socket() -> socket.socket:
    # Bound here and handed to uvicorn, so no other process can take the port in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def live_service(tmp_path: Path, sqlite_url: str) -> Iterator[LiveService]:
    """The real service under uvicorn in a background thread, on a fresh SQLite database."""
    with _live(tmp_path, sqlite_url) as service:
        yield service


@contextmanager
def _live(tmp_path: Path, sqlite_url: str, **overrides: Any) -> Iterator[LiveService]:
    """:func:`live_service` with ``overrides`` of its settings (another model repository)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=sqlite_url,
        worker_poll_seconds=0.05,
        onnx_provider="cpu",
        _env_file=None,  # type: ignore[call-arg]
        **overrides,
    )
    app = create_app(settings)
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        runtime: Runtime = app.state.runtime
        with session_scope(runtime.session_factory) as session:
            key = create_key(session, "browser-operator", Role.operator)
        yield LiveService(f"http://127.0.0.1:{port}", runtime, key)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _filled(page) -> int:
    """Wells of the main map that show a result (coloured, or hatched when there is no call)."""
    return page.locator('#plate [data-well]:not([data-state="empty"])').count()


def _errors_are_shown(page, key: str) -> None:
    """A missing key (401) and a bad well name (422) end up in the status line, with detail."""
    status = page.locator("#status")
    page.fill("#barcode", BARCODE)
    page.click("#load")
    expect(status).to_have_attribute("data-kind", "error")
    expect(status).to_contain_text("401")
    expect(status).to_contain_text("missing X-API-Key header")
    page.fill("#api-key", key)
    page.fill("#wells", "A1 Z99")
    page.click("#start-scan")
    expect(status).to_contain_text("422")
    expect(status).to_contain_text("Z99")
    assert page.evaluate("localStorage.getItem('mscreen.apiKey')") == key


def _scan_and_watch(page) -> list[int]:
    """Start a whole-plate scan from the page; the filled-well count, sampled every 150 ms."""
    page.fill("#wells", "")
    page.select_option("#objective", "40x")
    page.click("#start-scan")
    counts = [_filled(page)]
    deadline = time.monotonic() + 120
    while counts[-1] < WELLS_TOTAL and time.monotonic() < deadline:
        page.wait_for_timeout(150)
        counts.append(_filled(page))
    return counts


def _map_matches_api(page, calls: dict[str, dict]) -> None:
    shown = page.eval_on_selector_all(
        "#plate [data-well]",
        "cells => cells.map(c => [c.dataset.well, c.dataset.state, c.dataset.label || null,"
        " c.classList.contains('qc'), c.getAttribute('aria-label')])",
    )
    assert len(shown) == WELLS_TOTAL
    for name, state, label, qc, aria in shown:
        call = calls[name]
        assert (state, label) == (call["status"], call["label"]), name
        assert qc == (call["status"] != "ok" or bool(call["qc_flags"])), name
        assert aria.startswith(f"{name}: "), aria
    labels = [w["label"] for w in calls.values()]
    uncertain, no_call, excluded = (labels.count(x) for x in ("uncertain", "no call", None))
    expect(page.locator("#plate-summary")).to_have_text(
        re.compile(
            rf"{uncertain} uncertain · {no_call} no call · {excluded} excluded · "
            r"0 not yet scanned$"
        )
    )


def _images_loaded(page) -> None:
    page.wait_for_function(
        "() => ['#panel-image', '#panel-overlay'].every(s => {"
        " const i = document.querySelector(s); return i.complete && i.naturalWidth > 0; })"
    )
    assert page.eval_on_selector("#panel-image", "i => i.src").startswith("blob:")


def _panel_shows(page, well: dict) -> None:
    page.click(f'[data-well="{well["well"]}"]')
    expect(page.locator("#panel-title")).to_have_text(f"Well {well['well']}")
    expect(page.locator("#panel-probability")).to_have_text(f"{well['probability']:.3f}")
    expect(page.locator("#panel-label")).to_have_text(well["label"])
    model = well["model"]
    expect(page.locator("#panel-model")).to_have_text(f"{model['name']} v{model['version']}")
    expect(page.locator(f'[data-well="{well["well"]}"]')).to_have_attribute("aria-pressed", "true")
    _images_loaded(page)


def _agreement_shows(page, calls: dict[str, dict], fct: list[dict], evaluation: dict) -> None:
    expect(page.locator("#agreement")).to_be_visible()
    roc = page.locator("#roc-curve polyline.roc-line")
    expect(roc).to_have_count(1)
    assert len(roc.get_attribute("points").split()) == len(evaluation["model"]["roc"])
    expect(page.locator("#metrics-table tbody tr")).to_have_count(7)
    auc = evaluation["model"]["metrics"]["auc"]
    low, high = evaluation["model"]["ci95"]["auc"]
    auc_row = page.locator('#metrics-table tr[data-metric="auc"]')
    expect(auc_row).to_contain_text(f"{auc:.3f}")
    expect(auc_row).to_contain_text(f"{low:.3f} – {high:.3f}")

    fct_labels = {r["well"]: r["label"] for r in fct}
    called = [w for w in calls.values() if w["label"] in ("high", "low")]
    agree = sum(fct_labels[w["well"]] == w["label"] for w in called)
    verdicts = page.eval_on_selector_all(
        "#agreement-plate [data-agreement-well]", "cells => cells.map(c => c.dataset.agreement)"
    )
    assert verdicts.count("agree") == agree
    assert verdicts.count("disagree") == len(called) - agree
    assert verdicts.count("nocall") == WELLS_TOTAL - len(called)
    expect(page.locator("#agreement-summary")).to_contain_text(
        f"agrees with FCT on {agree} of {len(called)} called wells"
    )


def test_plate_map_scan_live_well_panel_and_agreement(browser, live_service, tmp_path):
    api = httpx.Client(
        base_url=live_service.url, headers={"X-API-Key": live_service.operator_key}, timeout=30
    )
    plate = f"/api/v1/plates/{BARCODE}"
    shot = tmp_path / "platemap.png"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.set_default_timeout(TIMEOUT_MS)
        page_errors: list[str] = []
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))

        page.goto(live_service.url + "/")
        expect(page).to_have_title("mscreen · plate map")
        assert page.locator("#plate [data-well]").count() == WELLS_TOTAL
        assert page.get_attribute('[data-well="B7"]', "aria-label") == "B7: not scanned"
        _errors_are_shown(page, live_service.operator_key)

        # The whole plate (about 15 s), followed live over server-sent events.
        counts = _scan_and_watch(page)
        assert counts[-1] == WELLS_TOTAL, f"wells filled over time: {counts}"
        assert counts == sorted(counts), f"the filled count went down: {counts}"
        intermediate = {c for c in counts if 0 < c < WELLS_TOTAL}
        assert len(intermediate) >= 3, f"wells did not fill in live: {counts}"
        expect(page.locator("#status")).to_contain_text("completed")
        expect(page.locator("#progress-text")).to_contain_text("completed · 96 / 96 wells")
        expect(page.locator("#progress-bar")).to_have_attribute("aria-valuenow", "100")

        calls = {w["well"]: w for w in api.get(f"{plate}/wells").json()["wells"]}
        _map_matches_api(page, calls)
        called = [w for w in calls.values() if w["label"] in ("high", "low")]
        _panel_shows(page, called[0])
        assert page.locator("#agreement").is_hidden()  # no FCT yet: evaluation is a 404

        # Ground truth through the API, then reload: agreement, metrics and ROC appear.
        config = SimulationConfig(seed=live_service.runtime.settings.simulation_seed)
        upload = api.put(
            f"{plate}/fct",
            content=fct_export_csv(config, BARCODE),
            headers={"Content-Type": "text/csv"},
        )
        assert upload.status_code == 200, upload.text
        fct = api.get(f"{plate}/fct").json()
        assert [r["well"] for r in fct] == list(calls)  # plate order
        assert all(
            (r["label"] == "high") == (r["cd73_pct"] > 95 and r["cd90_pct"] > 95)
            and r["event_count"] > 0
            for r in fct
        )
        page.click("#load")
        _agreement_shows(page, calls, fct, api.get(f"{plate}/evaluation").json())

        # For the picture: a well the model gets wrong, if any, with its FCT numbers.
        fct_labels = {r["well"]: r["label"] for r in fct}
        wrong = [w for w in called if fct_labels[w["well"]] != w["label"]]
        page.click(f'[data-well="{(wrong or called)[0]["well"]}"]')
        expect(page.locator("#panel-fct")).to_contain_text("disagrees" if wrong else "agrees")
        _images_loaded(page)
        assert page_errors == [], page_errors
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
        api.close()
    assert shot.stat().st_size < 1_000_000, f"the screenshot is {shot.stat().st_size} bytes"
    if os.environ.get("MSCREEN_TEST_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)


# -- calls a lab can act on: uncertain and no-call wells ---------------------------------------
CALL_WELLS = ["A1", "A2", "A3", "B1", "B8", "C2", "C11", "H9"]  # see tests/test_call_policy_api
OOD_BARCODE = "MSC-2026-0003"


def _scan_from_page(page, barcode: str, wells: list[str], alpha: str) -> None:
    """Start a scan from the page's form and wait until it is completed."""
    page.fill("#barcode", barcode)
    page.fill("#wells", " ".join(wells))
    page.fill("#alpha", alpha)
    page.click("#start-scan")
    # expect() has its own 5 s default, which a slow machine's scan can exceed.
    expect(page.locator("#status")).to_contain_text("completed", timeout=TIMEOUT_MS)
    expect(page.locator('#plate [data-well]:not([data-state="empty"])')).to_have_count(
        len(wells), timeout=TIMEOUT_MS
    )


def _well_shows(page, well: dict) -> None:
    """The map's cell and the well panel show an uncalled well's call, why and numbers."""
    cell = page.locator(f'[data-well="{well["well"]}"]')
    expect(cell).to_have_attribute("data-label", well["label"])
    expect(cell).to_have_text("?" if well["label"] == "uncertain" else "∅")
    cell.click()
    expect(page.locator("#panel-title")).to_have_text(f"Well {well['well']}")
    expect(page.locator("#panel-label")).to_have_text(well["label"])
    expect(page.locator("#panel-reason")).to_have_text(well["call_reason"])
    if well["label"] == "uncertain":
        expect(page.locator("#panel-call")).to_have_text("Uncertain: confirm by FCT")
        expect(page.locator("#panel-leaning")).to_have_text(f"{well['leaning']} (not a call)")
        expect(page.locator("#panel-confidence")).to_have_text(f"{well['confidence']:.3f}")
        expect(page.locator("#panel-ood")).to_have_text("–")
    else:
        expect(page.locator("#panel-call")).to_have_text("No call: out of distribution")
        expect(page.locator("#panel-leaning")).to_have_text("–")
        expect(page.locator("#panel-ood")).to_have_text(f"{well['ood_score']:.1f}")
    _images_loaded(page)


def _confirm_list_matches(page, confirm: dict) -> None:
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-count")).to_have_text(str(confirm["counts"]["to_confirm"]))
    shown = page.eval_on_selector_all(
        "#confirm-list [data-confirm-well]",
        "items => items.map(i => [i.dataset.confirmWell, i.querySelector('.confirm-reason')"
        ".textContent])",
    )
    assert [name for name, _ in shown] == [w["well"] for w in confirm["wells"]]
    for (_, text), well in zip(shown, confirm["wells"], strict=True):
        assert text.startswith(well["reason"]), (text, well)


def test_uncertain_and_no_call_wells_on_the_page(browser, tmp_path, sqlite_url):
    from tests.test_call_policy_api import call_repository

    repository = call_repository(tmp_path / "repo")
    with _live(tmp_path, sqlite_url, model_repository=repository, model_version=2) as live:
        with session_scope(live.runtime.session_factory) as session:
            admin = create_key(session, "browser-admin", Role.admin)
        api = httpx.Client(base_url=live.url, headers={"X-API-Key": live.operator_key}, timeout=30)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.set_default_timeout(TIMEOUT_MS)
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(live.url + "/")
            page.fill("#api-key", live.operator_key)

            # Selective calls at alpha 0.1: wells the model is unsure of are "uncertain".
            _scan_from_page(page, BARCODE, CALL_WELLS, "0.1")
            plate = f"/api/v1/plates/{BARCODE}"
            calls = {w["well"]: w for w in api.get(f"{plate}/wells").json()["wells"]}
            uncertain = [w for w in calls.values() if w["label"] == "uncertain"]
            assert uncertain and any(w["label"] in ("high", "low") for w in calls.values())
            expect(page.locator("#plate-summary")).to_contain_text(
                f"{len(uncertain)} uncertain · 0 no call · 1 excluded"
            )
            expect(page.locator("#plate-policy")).to_contain_text("confidence ≥ 0.950 to call")
            for name, call in calls.items():
                cell = page.locator(f'[data-well="{name}"]')
                if call["label"] == "uncertain":
                    expect(cell).to_have_attribute(
                        "aria-label", re.compile(rf"^{name}: uncertain, confirm by FCT")
                    )
            _well_shows(page, uncertain[0])
            _confirm_list_matches(page, api.get(f"{plate}/confirm").json())
            # A well picked from the list is shown in the panel.
            page.click(f'#confirm-list [data-confirm-well="{uncertain[-1]["well"]}"] button')
            expect(page.locator("#panel-title")).to_have_text(f"Well {uncertain[-1]['well']}")
            expect(page.locator("#panel-reason")).to_have_text(uncertain[-1]["call_reason"])

            # A model whose guard every field fails: "no call".
            activated = api.post(
                "/api/v1/models/hscnn-sim/3/activate", headers={"X-API-Key": admin}
            )
            assert activated.status_code == 200, activated.text
            _scan_from_page(page, OOD_BARCODE, ["A1", "B2"], "")
            plate = f"/api/v1/plates/{OOD_BARCODE}"
            calls = {w["well"]: w for w in api.get(f"{plate}/wells").json()["wells"]}
            assert [w["label"] for w in calls.values()] == ["no call", "no call"]
            expect(page.locator("#plate-summary")).to_contain_text("0 uncertain · 2 no call")
            expect(page.locator("#plate-policy")).to_contain_text("out of distribution above")
            _well_shows(page, calls["B2"])
            _confirm_list_matches(page, api.get(f"{plate}/confirm").json())
            assert page_errors == [], page_errors
        finally:
            page.close()
            api.close()
