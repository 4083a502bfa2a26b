"""Heads as versions: listing, pinning and exporting, through HTTP and the command line. The rounds a
pin leads to in Label Studio are tested against a real one (test_team_loop.py)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from unittest import mock

import numpy as np
import pytest
import torch

from ml_backend.jobs import loop
from ml_backend.jobs.runners import InProcessRunner, StoreRunner
from ml_backend.state.store import Label, Store
from model.features import FeatureConfig
from model.head import SegmentationHead
from model.head_export import ExportedHead, FeatureSetup
from tests.commands import run_main
from tests.ml_backend.web.test_server import CONFIG, make_client


def add_heads(backend, project: int, count: int) -> list[str]:
    """`count` heads of random weights, registered as training would (the newest current), on the
    768 features of the tiny backbone at 64 px, so that a round can be selected with them."""
    services = backend.services
    versions = []
    for n in range(1, count + 1):
        version = f"p{project}-head-{n}"
        path = services.files(project).head_path(version)
        torch.manual_seed(n)
        torch.save(SegmentationHead(768, len(services.schema(project).classes)).checkpoint(), path)
        services.store.add_head(project, version, n, str(path), 10 * n, {"labeled_pixels": 10 * n, "final_loss": 1 / n},
                                "digest", FeatureSetup("tiny", 0, None, FeatureConfig(resolution=64)).as_dict())
        versions.append(version)
    return versions


def test_versions_list_every_projects_heads_and_pinning_makes_one_current(tmp_path):
    c, backend, runner = make_client(tmp_path)
    for project in (7, 8):
        c.post("/setup", json={"project": f"{project}.1", "schema": CONFIG})
    add_heads(backend, 7, 3)
    add_heads(backend, 8, 1)
    listing = c.get("/versions").json
    assert listing["versions"] == ["p7-head-1", "p7-head-2", "p7-head-3", "p8-head-1"]
    assert listing["current"] == {"7": "p7-head-3", "8": "p8-head-1"}
    assert c.get("/versions?project=8").json["versions"] == ["p8-head-1"]
    assert c.post("/versions", json={"project": "7.1"}).json["current"] == {"7": "p7-head-3"}

    runner.jobs.clear()
    r = c.post("/versions/pin", json={"version": "p7-head-1"})
    assert r.status_code == 202 and r.json["current"] == "p7-head-1", r.json
    assert runner.jobs == [(7, "pin")]  # the round that shows it in Label Studio
    assert c.get("/versions").json["current"] == {"7": "p7-head-1", "8": "p8-head-1"}
    assert c.post("/setup", json={"project": "7.1", "schema": CONFIG}).json == {"model_version": "p7-head-1"}
    assert [h["version"] for h in backend.services.store.heads(7)] == ["p7-head-1", "p7-head-2", "p7-head-3"]
    assert c.post("/versions/pin", json={"project": 7, "version": "p7-head-3"}).status_code == 202  # forward again
    assert c.get("/versions?project=7").json["current"] == {"7": "p7-head-3"}


def test_pinning_a_head_that_is_not_there_changes_nothing(tmp_path):
    c, backend, runner = make_client(tmp_path)
    c.post("/setup", json={"project": "7.1", "schema": CONFIG})
    add_heads(backend, 7, 2)
    runner.jobs.clear()
    for body, status, fragment in [
            ({"version": "p7-head-9"}, 404, "project 7 has no head 'p7-head-9' (its heads: p7-head-1, p7-head-2)"),
            ({"version": "p8-head-1"}, 404, "project 8 has no head"),
            ({"project": 8, "version": "p7-head-1"}, 400, "is a head of project 7, not of project 8"),
            ({"version": "head-1"}, 400, "needs 'project'"), ({}, 400, "needs 'version'"),
            ({"version": 3}, 400, "'version' must be a string")]:
        r = c.post("/versions/pin", json=body)
        assert r.status_code == status and fragment in r.json["error"], r.json
    assert runner.jobs == [] and backend.services.store.current_head(7)["version"] == "p7-head-2"


def run_queued(services, runner, ran: list) -> None:
    """Run the jobs the recording runner holds and has not run yet, in submission order, as the
    in-process runner's thread does (those they submit too); `ran` lists the kinds run so far."""
    while len(ran) < len(runner.jobs):
        (project, kind), payload = runner.jobs[len(ran)], runner.payloads[len(ran)]
        ran.append(kind)
        if kind != "segment":  # pushes to Label Studio
            loop.handle_job(services, runner, project, kind, payload)


def train_while_pinning(tmp_path, monkeypatch, version: str, pin_job_runs: str):
    """Project 7 with heads 1 and 2 and its round 1 (chosen by head 2) answered: p7-head-3 trains
    for round 2, and `version` is pinned through /versions/pin while it trains; the pin job runs
    after the training job (the in-process runner's one thread) or during the training (an RQ
    worker beside it), then whatever the jobs queued. Round 2's publication is recorded, not sent."""
    c, backend, runner = make_client(tmp_path, records_batch=2, candidates=200, local_k=5, expander="none")
    services, store = backend.services, backend.services.store
    backend.setup("7.1", CONFIG)
    rng = np.random.default_rng(0)
    for task in (1, 2, 3, 4):
        store.upsert_tasks(7, [(task, f"/data/upload/7/{task}.png")])
        services.files(7).save_image(task, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        store.set_task_image(7, task, 64, 64, "ready", digest=f"d{task}")
    store.apply_annotation(7, 1, 1, "2026-01-01T00:00:00Z", [],
                           [Label(1, "a", 100, 2, "keypoint"), Label(1, "b", 900, 3, "keypoint")])
    add_heads(backend, 7, 2)
    store.save_round(7, 1, "p7-head-2", [{"task": 2, "pixel": 5, "rank": 0, "region": "q1-2-5"}])
    store.complete_round(7, 1)  # answered: the next head trains
    pushed, ran = [], []
    monkeypatch.setattr(loop, "push_round", lambda services, runner, project, round_index: pushed.append(round_index))
    train_head = loop.train_head

    def pinned_while_training(*args, **kwargs):
        assert c.post("/versions/pin", json={"version": version}).status_code == 202
        if pin_job_runs == "during the training":
            run_queued(services, runner, ran)
        return train_head(*args, **kwargs)

    monkeypatch.setattr(loop, "train_head", pinned_while_training)
    runner.jobs.clear()
    runner.payloads.clear()
    loop.plan_round(services, runner, 7, 2, train=True)
    run_queued(services, runner, ran)
    monkeypatch.setattr(loop, "train_head", train_head)
    return c, backend, runner, pushed


@pytest.mark.parametrize("pin_job_runs", ["after the training job", "during the training"])
def test_a_pin_made_while_a_head_trains_wins(tmp_path, monkeypatch, caplog, pin_job_runs):
    """Issue 25: p7-head-1 pinned while p7-head-3 trains had answered 202 and been undone when
    training ended. Now p7-head-1 stays current, p7-head-3 is kept, /versions says why, and round 2
    is selected with p7-head-1 only, whichever order the jobs run in. A training started after the
    pin wins as before."""
    caplog.set_level(logging.INFO, "ml_backend.jobs.loop")
    c, backend, runner, pushed = train_while_pinning(tmp_path, monkeypatch, "p7-head-1", pin_job_runs)
    services, store = backend.services, backend.services.store
    assert store.current_head(7)["version"] == "p7-head-1"
    assert [p["head"] for p in runner.payloads if p and "head" in p] == ["p7-head-1"]  # no round planned with head-3
    assert store.round(7, 2)["head_version"] == "p7-head-1" and pushed == [2]
    assert "project 7: p7-head-3 trained but not made current: p7-head-1 was pinned while it trained" in caplog.messages
    listing = c.get("/versions?project=7").json
    assert listing["versions"] == ["p7-head-1", "p7-head-2", "p7-head-3"] and listing["current"] == {"7": "p7-head-1"}
    assert listing["pinned"] == {"7": {"version": "p7-head-1", "at": store.latest_pin(7)["pinned_at"]}}
    why = {h["version"]: h["superseded_by_pin"] for h in listing["heads"]}
    at = r"p7-head-1 pinned at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert why["p7-head-1"] is None and re.fullmatch(f"{at} after this head was trained", why["p7-head-2"])
    assert re.fullmatch(f"{at} while this head trained", why["p7-head-3"]), why

    loop.plan_round(services, runner, 7, 3, train=True)  # the next training starts after the pin
    assert store.current_head(7)["version"] == "p7-head-4"
    assert all(h["superseded_by_pin"] is None for h in c.get("/versions").json["heads"])


def test_pinning_the_head_of_the_answered_round_while_the_next_trains_opens_a_round_with_it(tmp_path, monkeypatch):
    """Pinning p7-head-2, which chose the answered round 1, keeps it while p7-head-3 trains; the pin
    job, running after the training job, selects round 2 with it (it had found round 1 chosen by
    p7-head-2 already and stopped, leaving the project without an open round)."""
    c, backend, runner, pushed = train_while_pinning(tmp_path, monkeypatch, "p7-head-2", "after the training job")
    store = backend.services.store
    assert store.current_head(7)["version"] == "p7-head-2"
    latest = store.current_round(7)
    assert (latest["round"], latest["head_version"]) == (2, "p7-head-2") and pushed == [2]
    assert [h["superseded_by_pin"] is not None for h in c.get("/versions").json["heads"]] == [False, False, True]


def cli(model_dir, *args, **env) -> subprocess.CompletedProcess:
    """`python -m ml_backend heads ...` in this process (tests/commands.py), but for its logging setup,
    which would take pytest's handlers away; test_team_loop.py runs the command as a subprocess."""
    from ml_backend import __main__ as entry

    full = {**os.environ, "MODEL_DIR": str(model_dir), "BACKBONE": "tiny", "RESOLUTION": "64", **env}
    full.pop("REDIS_URL", None)
    with mock.patch.object(entry, "configure_logging"):
        return run_main(entry.main, ["heads", *args], full, clear_env=True)


def test_the_command_line_lists_pins_and_exports_heads(tmp_path):
    _, backend, _ = make_client(tmp_path)
    backend.setup("7.1", CONFIG)
    empty = cli(tmp_path, "list")
    assert empty.returncode == 0 and empty.stdout.startswith("no heads yet for any project in "), empty.stdout
    add_heads(backend, 7, 2)
    assert "no heads yet for project 8" in cli(tmp_path, "list", "--project", "8").stdout
    listed = cli(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert rows[1].split()[:4] == ["7", "p7-head-1", "1", "10"] and not rows[1].endswith("*")
    assert rows[2].split()[:4] == ["7", "p7-head-2", "2", "20"] and rows[2].endswith("*")

    pinned = cli(tmp_path, "pin", "p7-head-1")
    assert pinned.returncode == 0, pinned.stderr
    store = Store(tmp_path / "state.sqlite3")
    assert store.current_head(7)["version"] == "p7-head-1"
    rows = cli(tmp_path, "list").stdout.splitlines()
    assert rows[1].endswith("*") and re.search(r"  superseded: p7-head-1 pinned at \S+ after this head was trained$",
                                               rows[2]), rows
    (job,) = [j for j in store.interrupted_jobs() if j["kind"] == "pin"]  # for the server's job thread
    assert job["project"] == 7 and job["status"] == "queued"

    out = tmp_path / "exported.pt"
    exported = cli(tmp_path, "export", "p7-head-2", "--out", str(out))
    assert exported.returncode == 0 and str(out) in exported.stdout, exported.stderr
    head = ExportedHead.load(out)
    assert head.version == "p7-head-2" and head.classes == tuple(backend.services.schema(7).classes)
    assert head.report == {"labeled_pixels": 20, "final_loss": 0.5} and head.features.config.resolution == 64
    saved = torch.load(backend.services.store.head(7, "p7-head-2")["path"], weights_only=True)["state_dict"]
    assert all(torch.equal(head.weights["state_dict"][k], v) for k, v in saved.items())

    missing = cli(tmp_path, "pin", "p7-head-5")
    assert missing.returncode == 2 and "project 7 has no head 'p7-head-5'" in missing.stderr
    unnamed = cli(tmp_path, "export", "head-1")
    assert unnamed.returncode == 2 and "does not name its project: add --project" in unnamed.stderr


def test_the_servers_job_thread_runs_a_job_another_process_recorded(tmp_path):
    store = Store(tmp_path / "state.sqlite3")
    ran = []
    runner = InProcessRunner(store, lambda project, kind, payload: ran.append((project, kind)))
    StoreRunner(Store(tmp_path / "state.sqlite3")).submit(7, "pin")  # as `heads pin` does without REDIS_URL
    deadline = time.time() + 10
    while not ran and time.time() < deadline:
        time.sleep(0.1)
    assert ran == [(7, "pin")]
    time.sleep(2 * InProcessRunner.ADOPT_INTERVAL)
    assert ran == [(7, "pin")] and runner.idle()  # once
    assert [j["status"] for j in store.recent_jobs()] == ["done"]


def test_export_writes_into_a_directory_and_refuses_what_is_not_a_file(tmp_path):
    _, backend, _ = make_client(tmp_path)
    backend.setup("7.1", CONFIG)
    add_heads(backend, 7, 1)
    out = tmp_path / "exports"
    out.mkdir()
    into_dir = cli(tmp_path, "export", "p7-head-1", "--out", str(out))  # a traceback and a stray .tmp before
    assert into_dir.returncode == 0 and str(out / "p7-head-1.head.pt") in into_dir.stdout, into_dir.stderr
    assert [p.name for p in out.iterdir()] == ["p7-head-1.head.pt"]
    assert ExportedHead.load(out / "p7-head-1.head.pt").version == "p7-head-1"
    device = cli(tmp_path, "export", "p7-head-1", "--out", os.devnull)  # was replaced by a regular file
    assert device.returncode == 2 and "/dev/null is neither a regular file nor a directory" in device.stderr
    assert not os.path.isfile(os.devnull) and "Traceback" not in device.stderr
    replaced = cli(tmp_path, "export", "p7-head-1", "--out", str(out / "p7-head-1.head.pt"))  # a file: replaced
    assert replaced.returncode == 0 and [p.name for p in out.iterdir()] == ["p7-head-1.head.pt"]


def test_a_head_name_past_64_bits_is_an_error_on_the_command_line_too(tmp_path):
    too_far = cli(tmp_path, "pin", "p9223372036854775808-head-1")
    assert too_far.returncode == 2 and "not a positive 64-bit id" in too_far.stderr and "Traceback" not in too_far.stderr
