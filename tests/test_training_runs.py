"""Retraining runs: queue with a cap, cancel, reaper, validation, refusals, listing.

The lifecycle tests start real processes: a stand-in child (a Python process that sleeps and
forks a "preparation pool" into its group, exactly like the real child's ProcessPoolExecutor)
for the fast ones, and the real ``python -m cli train --run-id`` child for the slow one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import training_runs
from app.training_runs import TrainingRunQueue, group_alive, this_host
from models.repository import BUNDLED_REPOSITORY
from store.db import session_scope
from store.orm import AuditEvent, TrainingRun, TrainingRunStatus
from tests.conftest import copy_bundled_v1

RUNS = "/api/v1/training-runs"
TINY = {"train_plates": 1, "val_plates": 1, "test_plates": 1, "epochs": 1, "seed": 3}

# A stand-in child: named like the real one (the reaper checks /proc/<pid>/cmdline for the run
# id), forks two pool workers into its process group, then sleeps; it never reports (like a
# child killed mid-run). SLEEP is replaced per test.
STAND_IN = """
import os, sys, time
for _ in range(2):
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
time.sleep(float(sys.argv[1]))
"""


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A writable model repository holding a copy of the bundled model."""
    path = tmp_path / "repo"
    copy_bundled_v1(path)
    return path


@pytest.fixture
def settings(settings, repository):  # type: ignore[no-untyped-def]
    settings.model_repository = repository
    settings.training_poll_seconds = 0.1
    settings.training_kill_grace_seconds = 2.0
    return settings


def stand_in(sleep_s: float) -> Callable[[TrainingRunQueue, int], list[str]]:
    def command(queue: TrainingRunQueue, run_id: int) -> list[str]:
        return [sys.executable, "-c", STAND_IN, str(sleep_s), "--run-id", str(run_id)]

    return command


def use_stand_in(monkeypatch: pytest.MonkeyPatch, sleep_s: float) -> None:
    monkeypatch.setattr(TrainingRunQueue, "command", stand_in(sleep_s))


def wait_for(
    predicate: Callable[[], object], timeout_s: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout_s} s")


def run_status(service, run_id: int) -> dict:  # type: ignore[no-untyped-def]
    response = service.client.get(f"{RUNS}/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(service, run_id: int, statuses: tuple[str, ...], timeout_s: float = 30.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while (body := run_status(service, run_id))["status"] not in statuses:
        assert time.monotonic() < deadline, f"run {run_id} not {statuses} in {timeout_s} s: {body}"
        time.sleep(0.05)
    if body["status"] == "running" and body["pid"] is None:  # claimed, its process starting
        wait_for(lambda: run_status(service, run_id)["pid"], 10, f"run {run_id}'s pid")
        body = run_status(service, run_id)
    return body


def post_run(service, body: dict | None = None) -> int:  # type: ignore[no-untyped-def]
    response = service.client.post(RUNS, json=body or TINY, headers=service.headers("admin"))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    assert response.headers["Location"] == response.json()["url"]
    return int(response.json()["id"])


def count_runs(service) -> int:  # type: ignore[no-untyped-def]
    with session_scope(service.runtime.session_factory) as session:
        return int(session.scalar(select(func.count()).select_from(TrainingRun)) or 0)


def group_gone(pgid: int) -> bool:
    return not group_alive(pgid)


def zombies_of_this_process() -> list[int]:
    """Children of this (test) process that exited and were not reaped."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return "(gone)"


@pytest.fixture(autouse=True)
def _no_stray_groups() -> Iterator[None]:
    """Whatever a test started must be gone after it (no zombie of ours, no group left).
    Zombies left by other test files' processes (already there before) are not this test's."""
    before = set(zombies_of_this_process())
    yield
    deadline = time.monotonic() + 10
    while zombies := set(zombies_of_this_process()) - before:
        stats = {pid: _read(Path(f"/proc/{pid}/stat")) for pid in zombies}
        assert time.monotonic() < deadline, f"zombie children of this process: {stats}"
        time.sleep(0.05)


# -- lifecycle with stand-in children ---------------------------------------------------------


def test_the_cap_holds_the_second_run_queued_until_the_first_ends(service, monkeypatch):
    use_stand_in(monkeypatch, 1.5)
    first, second = post_run(service), post_run(service)
    running = wait_status(service, first, ("running",))
    assert running["host"] == this_host() and running["pid"]
    time.sleep(0.5)  # several dispatcher ticks
    assert run_status(service, second)["status"] == "queued"
    # The first's process exits without reporting: the queue fails it, then starts the second.
    failed = wait_status(service, first, ("failed",))
    assert "exited with code 0 without reporting" in failed["error"]
    wait_for(lambda: group_gone(running["pid"]), 10, "its forked pool killed and reaped")
    second_run = wait_status(service, second, ("running", "failed"))
    assert second_run["started_at"] >= failed["finished_at"]
    cancelled = service.client.post(f"{RUNS}/{second}/cancel", headers=service.headers("admin"))
    assert cancelled.status_code == 200


def test_too_many_waiting_is_409_and_writes_nothing(service, settings, monkeypatch):
    use_stand_in(monkeypatch, 30)
    settings.training_max_queued = 1
    first = post_run(service)
    wait_status(service, first, ("running",))
    post_run(service)  # waits
    refused = service.client.post(RUNS, json=TINY, headers=service.headers("admin"))
    assert refused.status_code == 409 and "MSCREEN_TRAINING_MAX_QUEUED" in refused.json()["detail"]
    assert count_runs(service) == 2
    for run_id in (first, first + 1):
        service.client.post(f"{RUNS}/{run_id}/cancel", headers=service.headers("admin"))
    wait_for(lambda: group_gone(run_status(service, first)["pid"]), 15, "first run's group gone")


def test_cancelling_a_queued_run_and_a_finished_one(service, settings, monkeypatch):
    use_stand_in(monkeypatch, 30)
    first, second = post_run(service), post_run(service)
    wait_status(service, first, ("running",))
    cancelled = service.client.post(
        f"{RUNS}/{second}/cancel?reason=wrong%20plates", headers=service.headers("admin")
    )
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["pid"] is None and body["finished_at"]
    assert "wrong plates" in body["error"]
    again = service.client.post(f"{RUNS}/{second}/cancel", headers=service.headers("admin"))
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    operator = service.client.post(f"{RUNS}/{first}/cancel", headers=service.headers("operator"))
    assert operator.status_code == 403
    with session_scope(service.runtime.session_factory) as session:
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "training.cancel")
        ).one()
        assert event.target == f"training-run:{second}" and event.reason == "wrong plates"
        assert event.details["before"] == {"status": "queued"}
        assert event.details["after"] == {"status": "cancelled"}
    pid = run_status(service, first)["pid"]
    service.client.post(f"{RUNS}/{first}/cancel", headers=service.headers("admin"))
    wait_for(lambda: group_gone(pid), 15, "first run's group gone")
    assert run_status(service, first)["status"] == "cancelled"


def test_cancelling_a_running_run_kills_its_whole_group(service, monkeypatch):
    use_stand_in(monkeypatch, 60)
    run_id = post_run(service)
    pid = wait_status(service, run_id, ("running",))["pid"]
    wait_for(lambda: len(_group_members(pid)) == 3, 10, "leader and two pool workers")
    started = time.monotonic()
    response = service.client.post(f"{RUNS}/{run_id}/cancel", headers=service.headers("admin"))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    wait_for(lambda: group_gone(pid), 10, "the run's process group gone")
    assert time.monotonic() - started < 8  # SIGTERM (then SIGKILL at 2 s) did it
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    time.sleep(0.3)
    assert run_status(service, run_id)["status"] == "cancelled"  # not overwritten by "failed"


def test_a_killed_child_is_reaped_failed_with_no_zombie_or_orphaned_pool(service, monkeypatch):
    use_stand_in(monkeypatch, 60)
    run_id = post_run(service)
    pid = wait_status(service, run_id, ("running",))["pid"]
    wait_for(lambda: len(_group_members(pid)) == 3, 10, "leader and two pool workers")
    os.kill(pid, signal.SIGKILL)  # the OOM killer, an admin's kill -9
    failed = wait_status(service, run_id, ("failed",))
    assert "killed by SIGKILL" in failed["error"]
    wait_for(lambda: group_gone(pid), 10, "the orphaned pool killed")
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


# -- the reaper on runs another (dead) service started ---------------------------------------


def _running_row(service, pid: int | None, *, host: str | None = None, age_s: float = 0) -> int:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    with session_scope(service.runtime.session_factory) as session:
        run = TrainingRun(
            params=TINY,
            status=TrainingRunStatus.running,
            pid=pid,
            host=host or this_host(),
            started_at=datetime.now(UTC) - timedelta(seconds=age_s),
        )
        session.add(run)
        session.flush()
        return run.id


def test_the_reaper_fails_runs_whose_process_is_gone_zombie_or_reused(service, settings):
    """What a service finds at start (or any time) on rows a dead service left."""
    service.runtime.training.stop()  # this test ticks a queue of its own by hand
    queue = TrainingRunQueue(settings, service.runtime.session_factory)
    # gone: a process that ran and was reaped
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    gone = _running_row(service, done.pid)
    # zombie: a child (of this test, not of the queue) killed and not reaped
    undead = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--run-id", "0"],
        start_new_session=True,
    )
    zombie = _running_row(service, undead.pid)
    os.kill(undead.pid, signal.SIGKILL)
    wait_for(lambda: training_runs.process_state(undead.pid, 0) == "zombie", 5, "a zombie")
    # reused: the pid now runs something else (this test process)
    reused = _running_row(service, os.getpid())
    # alive: a process whose command line names its run
    alive_id = _running_row(service, None)
    alive = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--run-id", str(alive_id)],
        start_new_session=True,
    )
    with session_scope(service.runtime.session_factory) as session:
        session.get_one(TrainingRun, alive_id).pid = alive.pid
    other_host = _running_row(service, done.pid, host="elsewhere")
    claimed_recently = _running_row(service, None)
    claimed_long_ago = _running_row(service, None, age_s=3600)
    with session_scope(service.runtime.session_factory) as session:
        # queued with a pid: an earlier version's run whose process never reported
        stale = TrainingRun(params=TINY, status=TrainingRunStatus.queued, pid=done.pid)
        waiting = TrainingRun(params=TINY, status=TrainingRunStatus.queued)
        session.add_all([stale, waiting])
        session.flush()
        stale_id, waiting_id = stale.id, waiting.id
    try:
        queue.reap()
        statuses = {
            run_id: run_status(service, run_id)
            for run_id in (gone, zombie, reused, alive_id, other_host, claimed_recently)
        }
        statuses[claimed_long_ago] = run_status(service, claimed_long_ago)
        assert statuses[gone]["status"] == "failed" and "is gone" in statuses[gone]["error"]
        assert statuses[zombie]["status"] == "failed"
        assert statuses[reused]["status"] == "failed" and "another" in statuses[reused]["error"]
        assert statuses[alive_id]["status"] == "running"
        assert statuses[other_host]["status"] == "running"  # its own host's service decides
        assert statuses[claimed_recently]["status"] == "running"
        assert statuses[claimed_long_ago]["status"] == "failed"
        assert run_status(service, stale_id)["status"] == "failed"
        assert run_status(service, waiting_id)["status"] == "queued"
        # A cancel of a run this service did not start still kills its group.
        cancelled = service.client.post(
            f"{RUNS}/{alive_id}/cancel", headers=service.headers("admin")
        )
        assert cancelled.status_code == 200
        assert alive.wait(5) == -signal.SIGTERM
    finally:
        alive.kill()
        alive.wait()
        undead.wait()
    # The reused pid's process (this one) was not signalled: this line runs.


def test_a_run_whose_process_cannot_start_fails_instead_of_staying_queued(service, monkeypatch):
    monkeypatch.setattr(
        TrainingRunQueue, "command", lambda self, run_id: ["/nonexistent/python", str(run_id)]
    )
    run_id = post_run(service)
    failed = wait_status(service, run_id, ("failed",))
    assert "could not be started" in failed["error"]
    assert "/nonexistent" not in failed["error"]


# -- refusals before anything is written ------------------------------------------------------


def test_no_train_extra_is_503_and_writes_nothing(service, monkeypatch):
    monkeypatch.setattr(training_runs, "missing_train_modules", lambda: ["torch", "onnx"])
    response = service.client.post(RUNS, json=TINY, headers=service.headers("admin"))
    assert response.status_code == 503
    assert "mscreen[train]" in response.json()["detail"]
    assert count_runs(service) == 0


def test_the_train_extra_check_imports_nothing(monkeypatch):
    calls: list[str] = []
    real = training_runs.importlib.util.find_spec

    def find_spec(name: str, package: str | None = None):  # type: ignore[no-untyped-def]
        calls.append(name)
        return None if name == "onnx" else real(name, package)

    monkeypatch.setattr(training_runs.importlib.util, "find_spec", find_spec)
    assert training_runs.missing_train_modules() == ["onnx"]
    assert calls == ["torch", "onnx", "sklearn"]


def test_the_bundled_repository_is_refused_with_the_setting_to_change(service, settings):
    settings.model_repository = BUNDLED_REPOSITORY
    response = service.client.post(RUNS, json=TINY, headers=service.headers("admin"))
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "MSCREEN_MODEL_REPOSITORY" in detail and str(BUNDLED_REPOSITORY) not in detail
    assert count_runs(service) == 0
    assert training_runs.repository_problem(BUNDLED_REPOSITORY / "hscnn-sim") is not None


def test_disabled_training_is_503(service, settings):
    settings.training_enabled = False
    response = service.client.post(RUNS, json=TINY, headers=service.headers("admin"))
    assert response.status_code == 503 and "MSCREEN_TRAINING_ENABLED" in response.json()["detail"]
    assert count_runs(service) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"source": "database", "plates": ["LAB\x00-1"]},
        {"source": "database", "plates": ["LAB-1\n"]},
        {"source": "database", "plates": ["../etc"]},
        {"source": "database", "plates": ["B" * 65]},
        {"source": "database", "plates": []},
        {"source": "database", "plates": [f"P{i}" for i in range(501)]},
        {"source": "simulated", "plates": ["LAB-1"]},
        {"name": "bad\x00name"},
        {"seed": 2**63},
        {"seed": -1},
        {"epochs": 10**6},
        {"unknown": 1},
    ],
)
def test_invalid_requests_are_422_and_write_nothing(service, body):
    response = service.client.post(RUNS, json=body, headers=service.headers("admin"))
    assert response.status_code == 422, response.text
    assert count_runs(service) == 0


def test_a_200_kb_plate_is_422_and_writes_nothing(service, settings):
    settings.max_body_bytes = 512 * 1024  # past the request guard, to reach the schema
    body = {"source": "database", "plates": ["P" * 200_000]}
    response = service.client.post(RUNS, json=body, headers=service.headers("admin"))
    assert response.status_code == 422, response.text[:300]
    assert count_runs(service) == 0


def test_ids_beyond_32_bits_are_422(service):
    for path in (f"{RUNS}/{2**31}", f"{RUNS}/0", f"{RUNS}?before_id={2**31}", f"{RUNS}?limit=0"):
        assert service.client.get(path).status_code == 422, path
    assert service.client.get(f"{RUNS}?limit=201").status_code == 422
    cancel = service.client.post(f"{RUNS}/{2**31}/cancel", headers=service.headers("admin"))
    assert cancel.status_code == 422
    assert service.client.get(f"{RUNS}/{2**31 - 1}").status_code == 404


def test_openapi_states_the_limits(service):
    schema = service.client.get("/openapi.json").json()
    create = schema["components"]["schemas"]["TrainingRunCreate"]["properties"]
    plates = create["plates"]["anyOf"][0]
    assert plates["maxItems"] == 500 and plates["items"]["pattern"].startswith("^[A-Za-z0-9]")
    paths = schema["paths"]
    assert "get" in paths[RUNS] and "post" in paths[f"{RUNS}/{{run_id}}/cancel"]


# -- listing ----------------------------------------------------------------------------------


def test_listing_runs_newest_first_paged_and_filtered(service, settings):
    settings.training_enabled = True
    service.runtime.training.stop()  # keep them queued
    ids = [post_run(service) for _ in range(5)]
    service.client.post(f"{RUNS}/{ids[1]}/cancel", headers=service.headers("admin"))
    listed = service.client.get(RUNS, params={"limit": 2}).json()
    assert [run["id"] for run in listed] == [ids[4], ids[3]]
    assert all(run["log_tail"] is None for run in listed)
    assert listed[0]["created_at"].endswith(("+00:00", "Z"))
    page = service.client.get(RUNS, params={"limit": 2, "before_id": ids[3]}).json()
    assert [run["id"] for run in page] == [ids[2], ids[1]]
    cancelled = service.client.get(RUNS, params={"status": "cancelled"}).json()
    assert [run["id"] for run in cancelled] == [ids[1]]
    assert service.client.get(RUNS, params={"status": "bogus"}).status_code == 422
    viewer = service.client.get(RUNS, headers=service.headers("viewer"))
    assert viewer.status_code == 200 and len(viewer.json()) == 5
    one = service.client.get(f"{RUNS}/{ids[0]}").json()
    assert one["status"] == "queued" and one["log_tail"] == [] and one["params"]["epochs"] == 1


# -- the real child ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_training_child_cancelled_mid_run_ends_cancelled_with_its_group_gone(service):
    """`python -m cli train --run-id` (with its preparation pool) cancelled while it trains."""
    run_id = post_run(service, {**TINY, "epochs": 50})
    pid = wait_status(service, run_id, ("running",))["pid"]
    # Mid-run: preparing its images in its process pool (more than one process in its group).
    wait_for(lambda: len(_group_members(pid)) > 1, 120, "the child's preparation pool")
    members = _group_members(pid)
    assert run_status(service, run_id)["status"] == "running"
    response = service.client.post(
        f"{RUNS}/{run_id}/cancel?reason=test", headers=service.headers("admin")
    )
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    wait_for(lambda: group_gone(pid), 30, "the child's process group gone")
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    time.sleep(0.5)
    final = run_status(service, run_id)
    assert final["status"] == "cancelled" and final["model_version"] is None
    assert not _group_members(pid)
    assert not [member for member in members if Path(f"/proc/{member}").exists()]


@pytest.mark.slow
def test_the_real_training_child_killed_mid_run_is_reaped_with_its_pool(service):
    """kill -9 of `python -m cli train --run-id` while its ProcessPoolExecutor prepares data:
    failed, no zombie, no orphaned pool worker left; the next run can start."""
    run_id = post_run(service, {**TINY, "epochs": 50})
    pid = wait_status(service, run_id, ("running",))["pid"]
    wait_for(lambda: len(_group_members(pid)) > 1, 120, "the child's preparation pool")
    members = _group_members(pid)
    os.kill(pid, signal.SIGKILL)
    failed = wait_status(service, run_id, ("failed",))
    assert "killed by SIGKILL" in failed["error"]
    wait_for(lambda: group_gone(pid), 30, "the orphaned pool gone")
    assert not [member for member in members if Path(f"/proc/{member}").exists()]
