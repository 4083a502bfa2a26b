"""A learning curve without ground truth: how often the head that chose a round agreed with the
annotators who answered it.

A round's queries are the pixels its head was least sure of, and every answer arrives before the
next head is trained; so the head's class at each answered pixel, compared with the annotator's,
estimates its accuracy where it is weakest (*point* agreement). The expanded regions of those
answers (the expander's region of each click, as training takes them) give a second, larger
estimate (*region* agreement: the share of their pixels where the head's segmentation gives the
click's class). Round 0 is chosen by herding alone and has no head to judge.

`record_round` measures a round when it closes (answered, training requested, or another head
pinned). The curve joins each round with what followed: the training report of the next head
and the seconds from the round's last answer to the next round's queries in Label Studio.

Stopping hint: when point agreement stays at or above STOP_AGREEMENT for STOP_ROUNDS rounds in a
row, the head is right even where it is least sure, and further rounds gain little.
"""

from __future__ import annotations

import io
import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ml_backend.config import Settings
from ml_backend.label_studio.query_tasks import queue_version
from ml_backend.label_studio.segmentations import class_map
from ml_backend.services import Services

log = logging.getLogger(__name__)


def record_round(services: Services, project: int, round_index: int) -> dict:
    """Measure the round's answers against the head that chose it, and keep the numbers."""
    store = services.store
    round_row = store.round(project, round_index)
    counts = store.round_progress(project, round_index)
    answers = store.answers(project, round_index)
    head_row = store.head(project, round_row["head_version"]) if round_row["head_version"] else None
    point, point_pixels, region, region_pixels = None, 0, None, 0
    if head_row is not None:
        judged = [a for a in answers if a["suggested"] is not None]
        point_pixels = len(judged)
        point = sum(a["class"] == a["suggested"] for a in judged) / point_pixels if judged else None
        try:
            region, region_pixels = _region_agreement(services, project, head_row, answers)
        except (OSError, ValueError, ImportError, RuntimeError) as exc:  # a measurement never stops the loop
            log.warning("project %s: no region agreement for round %d: %s", project, round_index, exc)
    metrics = {"answered": counts["answered"], "dismissed": counts["dismissed"], "unanswered": counts["open"],
               "point_agreement": point, "point_pixels": point_pixels, "region_agreement": region,
               "region_pixels": region_pixels, "last_answer": store.last_closed(project, round_index)}
    store.save_round_metrics(project, round_index, metrics)
    log.info("project %s: round %d: %d answered, %d dismissed, %d unanswered; agreement with %s: point %s, region %s",
             project, round_index, counts["answered"], counts["dismissed"], counts["open"],
             round_row["head_version"] or "no head", _share(point, point_pixels), _share(region, region_pixels))
    hint = stopping_hint(learning_curve(store, project), services.settings_for(project))
    if hint:
        log.info("project %s: %s", project, hint["message"])
    return metrics


def _share(value: float | None, pixels: int) -> str:
    return "-" if value is None else f"{value:.3f} of {pixels} px"


def _region_agreement(services: Services, project: int, head_row: dict, answers: list[dict]) -> tuple[float | None, int]:
    """(share of the answers' expanded-region pixels where the head gives the click's class, pixels)."""
    settings, files = services.settings_for(project), services.files(project)
    expansions = services.expansions(project, settings) if settings.expander != "none" else None
    by_task = defaultdict(list)
    for answer in answers:
        by_task[answer["task"]].append(answer)
    hits = total = 0
    for task, group in by_task.items():
        try:
            classes = class_map(services, project, task, head_row).ravel()
            image = files.load_image(task) if expansions else None
        except (OSError, ValueError) as exc:  # an image gone since: the others still count
            log.warning("project %s task %s: left out of the region agreement: %s", project, task, exc)
            continue
        for answer in group:
            pixel = answer["label_pixel"]
            region = expansions.region(task, pixel, lambda: image) if expansions else np.array([pixel])
            hits += int((classes[region] == answer["class"]).sum())
            total += len(region)
    return (hits / total if total else None), total


def learning_curve(store, project: int) -> list[dict]:
    """Per round: its queries and what became of them, the agreement measured when it closed, the
    training report of the head trained after it, and the seconds from its last answer to the next
    round's queries in Label Studio."""
    rounds = store.rounds(project)
    measured = store.round_metrics(project)
    trained_for = {h["round"]: h for h in store.heads(project)}  # a head trained when round r-1 closed has round r
    curve = []
    for n, row in enumerate(rounds):
        r = row["round"]
        m = measured.get(r)
        counts = store.round_progress(project, r) if m is None else {
            "answered": m["answered"], "dismissed": m["dismissed"], "open": m["unanswered"]}
        following = rounds[n + 1] if n + 1 < len(rounds) else None
        head = trained_for.get(r + 1)
        seconds = None
        if m is not None and m["last_answer"] is not None and following is not None and following["pushed"]:
            seconds = round(following["pushed"] - m["last_answer"], 1)
        curve.append({
            "round": r, "status": row["status"], "version": queue_version(project, row), "chosen_by": row["head_version"],
            "queries": sum(counts.values()), "answered": counts["answered"], "dismissed": counts["dismissed"],
            "unanswered": counts["open"],
            "point_agreement": m["point_agreement"] if m else None, "point_pixels": m["point_pixels"] if m else 0,
            "region_agreement": m["region_agreement"] if m else None, "region_pixels": m["region_pixels"] if m else 0,
            "next_head": None if head is None else {
                "version": head["version"], "labeled_pixels": head["report"].get("labeled_pixels", head["labeled"]),
                "epochs": head["report"].get("epochs"), "final_loss": head["report"].get("final_loss")},
            "seconds_to_next_round": seconds, "settings": row["settings"],
        })
    return curve


def recent_round_seconds(store, project: int) -> float | None:
    """The latest measured time from a round's last answer to the next round's queries, if any."""
    return next((r["seconds_to_next_round"] for r in reversed(learning_curve(store, project))
                 if r["seconds_to_next_round"] is not None), None)


def stopping_hint(curve: list[dict], settings: Settings) -> dict | None:
    """Whether point agreement has stayed at or above STOP_AGREEMENT for the last STOP_ROUNDS measured rounds."""
    measured = [row for row in curve if row["point_agreement"] is not None]
    recent = measured[-settings.stop_rounds:]
    if len(recent) < settings.stop_rounds or any(row["point_agreement"] < settings.stop_agreement for row in recent):
        return None
    shown = ", ".join(f"round {row['round']}: {row['point_agreement']:.2f}" for row in recent)
    return {"rounds": [row["round"] for row in recent], "threshold": settings.stop_agreement,
            "message": f"further rounds gain little: the head agreed with the annotators on at least "
                       f"{settings.stop_agreement:.0%} of the pixels it was least sure of in each of the last "
                       f"{len(recent)} rounds ({shown})"}


# the picture -------------------------------------------------------------------------------------
MAX_PLOTTED_ROUNDS = 200  # past this the picture shows evenly spaced rounds (5,000 took 44-120 s and 1.8 GB)
MAX_LABELED_ROUNDS = 30  # past this the marks go without their numbers and the axis chooses its own ticks


@dataclass(frozen=True)
class CurveSeries:
    """What the PNG plots, one value per plotted round (None where there is nothing to plot)."""

    rounds: list[int]
    point: list[float | None]
    region: list[float | None]
    answered: list[int]
    final_loss: list[float | None]  # of the head trained after the round
    labeled_pixels: list[int | None]  # that head's training pixels
    seconds: list[float | None]  # last answer to the next round's queries in Label Studio
    total: int | None = None  # rounds in the curve, when only some are plotted


def plotted_rounds(count: int, limit: int = MAX_PLOTTED_ROUNDS) -> list[int]:
    """Positions of at most `limit` evenly spaced rounds of `count`, the first and the last among them."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def curve_series(curve: list[dict]) -> CurveSeries:
    total = len(curve)
    curve = [curve[i] for i in plotted_rounds(total)]
    heads = [row["next_head"] or {} for row in curve]
    return CurveSeries([row["round"] for row in curve], [row["point_agreement"] for row in curve],
                       [row["region_agreement"] for row in curve], [row["answered"] for row in curve],
                       [h.get("final_loss") for h in heads], [h.get("labeled_pixels") for h in heads],
                       [row["seconds_to_next_round"] for row in curve], total if len(curve) < total else None)


def _values(values: list) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _label_points(ax, xs: list[int], ys: list, fmt: str, offset: int = 6) -> None:
    for x, y in zip(xs, ys):
        if y is not None:
            ax.annotate(format(y, fmt), (x, y), textcoords="offset points", xytext=(0, offset), ha="center",
                        fontsize=7)


def draw_curve(series: CurveSeries, threshold: float, title: str) -> bytes:
    """The learning curve as a PNG: agreement per round (with the stopping threshold), answers, the
    next head's final loss (with its training pixels), and the time to the next round. Up to
    MAX_LABELED_ROUNDS rounds every plotted number is written beside its mark; the title says when
    the rounds shown are a sample."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), dpi=100)
    FigureCanvasAgg(fig)
    (agree, answers), (loss, seconds) = fig.subplots(2, 2, sharex=True)
    xs = series.rounds
    labeled = len(xs) <= MAX_LABELED_ROUNDS
    width = 0.8 * max(1.0, (xs[-1] - xs[0]) / (len(xs) - 1)) if len(xs) > 1 else 0.8  # bars as wide as their spacing
    agree.plot(xs, _values(series.point), "o-", color="tab:blue", label="point (answered pixels)")
    agree.plot(xs, _values(series.region), "s--", color="tab:orange", label="region (expanded clicks)")
    if labeled:
        _label_points(agree, xs, series.point, ".2f")
        _label_points(agree, xs, series.region, ".2f", offset=-12)
    agree.axhline(threshold, color="gray", linestyle=":", linewidth=1, label=f"stopping hint at {threshold:.2f}")
    agree.set(ylim=(0, 1.08), ylabel="agreement with annotators", title="head that chose the round vs answers")
    agree.legend(fontsize=7, loc="lower right")
    answers.bar(xs, series.answered, width, color="tab:green")
    if labeled:
        _label_points(answers, xs, series.answered, "d", offset=2)
    answers.set(ylabel="answered queries", title="answers per round")
    loss.plot(xs, _values(series.final_loss), "o-", color="tab:red")
    for x, y, px in zip(xs, series.final_loss, series.labeled_pixels):
        if labeled and y is not None:
            loss.annotate(f"{y:.3f}\n{px} px", (x, y), textcoords="offset points", xytext=(0, 6), ha="center",
                          fontsize=7)
    loss.set(ylabel="final training loss", xlabel="round", title="next head: final loss (training pixels)")
    seconds.bar(xs, _values(series.seconds), width, color="tab:purple")
    if labeled:
        _label_points(seconds, xs, series.seconds, ".0f", offset=2)
    seconds.set(ylabel="seconds", xlabel="round", title="last answer to the next round's queries")
    for ax in (agree, answers, loss, seconds):
        if labeled:
            ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.margins(y=0.15)
    agree.set_ylim(0, 1.08)
    answers.set_ylim(bottom=0)
    seconds.set_ylim(bottom=0)
    if series.total:
        title += f"\n{len(xs)} of its {series.total:,} rounds shown, evenly spaced (the first and the last among them)"
    fig.suptitle(title)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
