"""The learning curve without ground truth: agreement of the head that chose a round with its answers,
what followed the round, the stopping hint, and the PNG drawn from the same numbers as /metrics."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from ml_backend.config import Settings
from ml_backend.state.learning_curve import CurveSeries, draw_curve, learning_curve, record_round, stopping_hint
from ml_backend.state.store import Label
from tests.ml_backend.web.test_server import CONFIG, make_client

ROAD, SKY = 3, 0  # class indices of the shipped configuration (CamVid's)


def answer(store, holder: int, task: int, annotation: int, labels: list[tuple[int, int]]) -> None:
    """An annotator's submission on query task `holder`: keypoints (pixel, class) on image `task`."""
    store.apply_annotation(7, annotation, task, "2026-01-01T00:00:00Z", [],
                           [Label(task, f"a{annotation}-{p}", p, c, "keypoint") for p, c in labels], holder=holder)


def open_round(store, round_index: int, head: str | None, queries: list[tuple[int, int, int | None]]) -> None:
    """A round of (task, pixel, class the head suggested) queries, placed on query tasks 100 + task."""
    store.save_round(7, round_index, head, [{"task": t, "pixel": p, "rank": k, "suggested": s, "region": f"q{t}-{p}"}
                                            for k, (t, p, s) in enumerate(queries)])
    for task in sorted({t for t, _, _ in queries}):
        store.place_queries(7, round_index, task, [p for t, p, _ in queries if t == task], 100 * round_index + task)
    store.open_round(7, round_index)


def project_with_two_rounds(tmp_path, **settings):
    """Round 0 (herding, no head) and round 1 (chosen by p7-head-1) answered, round 2 open."""
    c, backend, _ = make_client(tmp_path, expander="none", **settings)
    backend.setup("7.1", CONFIG)
    services, store = backend.services, backend.services.store
    for task in (1, 2):
        store.upsert_tasks(7, [(task, f"/data/upload/7/{task}.png")])
        services.files(7).save_image(task, np.zeros((64, 64, 3), dtype=np.uint8))
        store.set_task_image(7, task, 64, 64, "ready")
    open_round(store, 0, None, [(1, 10, None), (2, 20, None)])
    answer(store, 1, 1, 1, [(10, ROAD)])
    answer(store, 2, 2, 2, [(20, SKY)])
    record_round(services, 7, 0)
    store.complete_round(7, 0)
    store.add_head(7, "p7-head-1", 1, "/nowhere.pt", 2, {"labeled_pixels": 2, "epochs": 7, "final_loss": 0.5})
    # the head's segmentations at the model's resolution, as the segment job caches them
    maps = services.files(7).segmentations / "p7-head-1"
    maps.mkdir(parents=True)
    np.save(maps / "1.npy", np.full((64, 64), ROAD, dtype=np.uint8))
    np.save(maps / "2.npy", np.full((64, 64), SKY, dtype=np.uint8))
    # the head suggested Road, Car, Road, Sky; the answers: Road (agrees), Sky (no), Road (agrees), one dismissed
    open_round(store, 1, "p7-head-1", [(1, 30, ROAD), (1, 40, 5), (2, 50, ROAD), (2, 60, SKY)])
    answer(store, 101, 1, 3, [(30, ROAD), (40, SKY)])
    answer(store, 102, 2, 4, [(50, ROAD)])  # the point at 60 deleted: dismissed
    record_round(services, 7, 1)
    store.complete_round(7, 1)
    store.add_head(7, "p7-head-2", 2, "/nowhere.pt", 5, {"labeled_pixels": 5, "epochs": 9, "final_loss": 0.25})
    open_round(store, 2, "p7-head-2", [(1, 70, ROAD)])
    return c, backend


def test_agreement_is_measured_against_the_head_that_chose_the_round(tmp_path):
    _, backend = project_with_two_rounds(tmp_path)
    store = backend.services.store
    r0, r1, r2 = learning_curve(store, 7)
    assert (r0["version"], r0["answered"], r0["point_agreement"], r0["region_agreement"]) == ("p7-round-0", 2, None, None)
    assert r0["next_head"] == {"version": "p7-head-1", "labeled_pixels": 2, "epochs": 7, "final_loss": 0.5}
    assert (r1["answered"], r1["dismissed"], r1["unanswered"], r1["chosen_by"]) == (3, 1, 0, "p7-head-1")
    assert r1["point_agreement"] == 2 / 3 and r1["point_pixels"] == 3
    # the cached maps say Road on image 1 and Sky on image 2: only the answer at 30 agrees with them
    assert r1["region_agreement"] == 1 / 3 and r1["region_pixels"] == 3
    assert r1["next_head"]["version"] == "p7-head-2" and r1["next_head"]["final_loss"] == 0.25
    for row, following in ((r0, 1), (r1, 2)):
        waited = store.round(7, following)["pushed"] - store.last_closed(7, row["round"])
        assert row["seconds_to_next_round"] == round(waited, 1) and row["seconds_to_next_round"] >= 0
    assert (r2["status"], r2["unanswered"], r2["point_agreement"], r2["seconds_to_next_round"]) == ("open", 1, None, None)


def test_stopping_hint_after_n_rounds_at_or_above_the_threshold():
    def curve(*agreements):
        return [{"round": n, "point_agreement": a} for n, a in enumerate(agreements)]

    s = Settings(stop_agreement=0.9, stop_rounds=3)
    assert stopping_hint(curve(None, 0.95, 0.9), s) is None  # round 0 has no head: two measured rounds
    hint = stopping_hint(curve(None, 0.95, 0.9, 0.97), s)
    assert hint["rounds"] == [1, 2, 3] and "further rounds gain little" in hint["message"]
    assert "round 2: 0.90" in hint["message"]
    assert stopping_hint(curve(None, 0.95, 0.89, 0.97, 0.99), s) is None  # one below breaks the run
    assert stopping_hint(curve(None, 0.95, 0.89, 0.97, 0.99, 0.9), s)["rounds"] == [3, 4, 5]
    assert stopping_hint(curve(None, 0.5), Settings(stop_agreement=0.5, stop_rounds=1))["rounds"] == [1]


def test_health_and_the_log_give_the_hint_with_the_projects_own_threshold(tmp_path, caplog):
    caplog.set_level(logging.INFO, "ml_backend.state.learning_curve")
    c, backend = project_with_two_rounds(tmp_path)
    assert c.get("/health").json["projects"]["7"]["stopping_hint"] is None  # 0.67 < 0.9
    c.post("/setup", json={"project": "7.1", "schema": CONFIG, "extra_params": {"STOP_AGREEMENT": 0.6, "STOP_ROUNDS": 1}})
    hint = c.get("/health").json["projects"]["7"]["stopping_hint"]
    assert "further rounds gain little" in hint and "round 1: 0.67" in hint
    assert c.get("/metrics").json["projects"]["7"]["stopping_hint"] == hint
    record_round(backend.services, 7, 1)  # measured again (a pin closes a round the same way): the log says it too
    assert any(hint in r.getMessage() for r in caplog.records)


def series_from_metrics(rounds: list[dict]) -> CurveSeries:
    """The plotted series, read from /metrics by the test's own hand."""
    return CurveSeries(rounds=[r["round"] for r in rounds], point=[r["point_agreement"] for r in rounds],
                       region=[r["region_agreement"] for r in rounds], answered=[r["answered"] for r in rounds],
                       final_loss=[(r["next_head"] or {}).get("final_loss") for r in rounds],
                       labeled_pixels=[(r["next_head"] or {}).get("labeled_pixels") for r in rounds],
                       seconds=[r["seconds_to_next_round"] for r in rounds])


def test_the_curve_png_is_drawn_from_the_numbers_metrics_serves(tmp_path):
    c, _ = project_with_two_rounds(tmp_path)
    r = c.get("/metrics/7/curve.png")
    assert r.status_code == 200 and r.content_type == "image/png"
    with Image.open(io.BytesIO(r.data)) as png:
        assert png.size == (1000, 700)
    rounds = c.get("/metrics").json["projects"]["7"]["rounds"]
    assert [x["point_agreement"] for x in rounds] == [None, 2 / 3, None]
    series = series_from_metrics(rounds)
    threshold = Settings().stop_agreement
    title = "project 7: learning curve without ground truth"
    assert draw_curve(series, threshold, title) == r.data
    # the picture depends on each number: one changed value gives another PNG
    for field, values in [("point", [None, 0.5, None]), ("region", [None, 0.5, None]), ("answered", [2, 4, 0]),
                          ("final_loss", [0.5, 0.3, None]), ("labeled_pixels", [2, 6, None]),
                          ("seconds", [series.seconds[0], 99.0, None])]:
        assert draw_curve(CurveSeries(**{**series.__dict__, field: values}), threshold, title) != r.data, field
    assert c.get("/metrics/9/curve.png").status_code == 404
    assert c.get("/metrics/abc/curve.png").status_code == 400


def test_a_long_curve_is_drawn_from_evenly_spaced_rounds_keeping_the_first_and_the_last(tmp_path, monkeypatch):
    """5,000 rounds took 44-120 s and 1.8 GB to draw: every round with its numbers and its tick."""
    import ml_backend.web.backend
    from ml_backend.state.learning_curve import MAX_PLOTTED_ROUNDS

    c, backend, _ = make_client(tmp_path, expander="none")
    backend.setup("7.1", CONFIG)
    store = backend.services.store
    for r in range(1000):
        store.save_round(7, r, None, [{"task": 1, "pixel": r, "rank": 0, "suggested": None, "region": f"q{r}"}])
        store.save_round_metrics(7, r, {"answered": 1, "dismissed": 0, "unanswered": 0, "point_agreement": r / 1000,
                                        "point_pixels": 1, "region_agreement": None, "region_pixels": 0,
                                        "last_answer": None})
    drawn = []
    monkeypatch.setattr(ml_backend.web.backend, "draw_curve", lambda series, *args: drawn.append(series) or b"png")
    assert c.get("/metrics/7/curve.png").status_code == 200
    (series,) = drawn
    assert len(series.rounds) == MAX_PLOTTED_ROUNDS == 200 and series.total == 1000
    assert series.rounds[0] == 0 and series.rounds[-1] == 999 and series.point[-1] == 0.999
    steps = {b - a for a, b in zip(series.rounds, series.rounds[1:])}
    assert steps <= {5, 6}  # evenly spaced: 999 / 199
    png = draw_curve(series, 0.9, "project 7")
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.size == (1000, 700)
