"""The active-learning loop of one project, run by background jobs.

sync:    fetch the task list, the annotations Label Studio has and the store lacks (given while the
         backend was down) and the images not seen yet; if the project has no round, run round 0.
advance: when every query of the open round is answered (or on START_TRAINING), train a head on
         all labeled pixels, swap it in, run the next round and push its queries.
push:    put the open round's queries that no annotator can meet onto query tasks
         (ml_backend/label_studio/query_tasks.py): after a round is selected, and when a submitted query task
         left points with the placeholder.
segment: push the new head's segmentation of every image task (ml_backend/label_studio/segmentations.py).
answers: show on a query task the regions its answered clicks became; a skipped one leaves the
         queue (ml_backend/label_studio/answered_regions.py).
pin:     a head was pinned by hand (ml_backend/state/versions.py): close the open round (its unanswered
         queries stay recorded and are never asked again) and select the next one with that head,
         without training, so that Label Studio shows the pinned version.

Each round's answers are measured against the head that chose it when the round closes
(ml_backend/state/learning_curve.py). What a round does follows the project's effective settings
(`Services.settings_for`: the environment and Label Studio's extra params).

Each step is safe to repeat: a round is recorded before its queries are pushed and a query is
marked placed once its query task and prediction exist, so a job that died half-way resumes
where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

import numpy as np
import torch

from ml_backend.label_studio import round_notice as notice
from ml_backend.label_studio.annotations import reconcile
from ml_backend.label_studio.answered_regions import show_answered_regions
from ml_backend.label_studio.images import fetch_image, original_image
from ml_backend.label_studio.client import LabelStudioError, LabelStudioUnavailable
from ml_backend.state.labeled_set import build_labeled_set, labels_digest
from ml_backend.state.learning_curve import recent_round_seconds, record_round
from ml_backend.label_studio.query_tasks import is_query_task, publish_round, queue_version, retire_outside_queue
from ml_backend.label_studio.segmentations import push_segmentations
from ml_backend.services import Services
from model.head import train_head
from model.selection import current_records, image_record, labeled_features, record_digest, run_round

log = logging.getLogger(__name__)


def handle_job(services: Services, runner, project: int, kind: str, payload: dict | None = None) -> None:
    payload = payload or {}
    if kind == "sync":
        sync_project(services, runner, project)
    elif kind in ("advance", "train"):
        advance_project(services, runner, project, force=kind == "train")
    elif kind == "records":
        compute_records(services, project, payload["tasks"], payload["round"], payload.get("work_total"))
    elif kind == "select":
        select_round(services, runner, project, payload["round"], payload.get("head"), payload.get("work_total"))
    elif kind == "push":
        current = services.store.current_round(project)
        if current is not None and current["status"] in ("selected", "open"):
            push_round(services, runner, project, current["round"])
    elif kind == "segment":
        push_segmentations(services, project, runner)
    elif kind == "answers":
        show_answered_regions(services, project, payload["holder"], payload.get("skipped", False))
    elif kind == "pin":
        select_with_current_head(services, runner, project)
    else:
        raise ValueError(f"unknown job kind {kind!r}")


def sync_tasks(services: Services, runner, project: int) -> None:
    """Bring the task list and the annotations up to date with Label Studio (what happened while the
    backend was not listening: ml_backend/label_studio/annotations.py), take new tasks out of the labeling queue,
    fetch new images."""
    store, schema = services.store, services.schema(project)
    services.progress.update(project, "listing tasks")
    tasks = services.client(project).tasks(project)
    store.upsert_tasks(project, [(t["id"], str(t["data"].get(schema.image_key, ""))) for t in tasks
                                 if not is_query_task(services, project, t)])
    gone = sorted({row["task"] for row in store.tasks(project)} - {int(t["id"]) for t in tasks})
    if gone:
        log.info("project %s: %d tasks deleted in Label Studio while the backend was not listening", project, len(gone))
        store.delete_tasks(project, gone)
    reconcile(services, runner, project, tasks)
    # new images join the loop as candidates, never as tasks of the labeling queue: out of it first
    current = store.current_round(project)
    live = current["round"] if current and current["status"] in ("selected", "open") else None
    retire_outside_queue(services, project, live, tasks)
    pending = store.tasks(project, "pending")
    for n, row in enumerate(pending):
        fetch_image(services, project, row["task"], row["image_url"])
        services.progress.update(project, "fetching images", n + 1, len(pending))


# rounds ----------------------------------------------------------------------------------------
def sync_project(services: Services, runner, project: int) -> None:
    sync_tasks(services, runner, project)
    current = services.store.current_round(project)
    if current is None:
        if services.store.tasks(project, "ready"):
            announce_next_round(services, project, 0)
            plan_round(services, runner, project, 0, train=True)
        else:
            services.progress.update(project, "waiting for tasks", message="no usable images in the project yet")
    elif current["status"] == "selected":
        push_round(services, runner, project, current["round"])
    else:
        advance_when_answered(services, runner, project)


def advance_when_answered(services: Services, runner, project: int) -> bool:
    """Queue the next round once the open round has no open query left (with AUTO_ADVANCE), else
    show its progress. Checked on every annotation and again when a round opens, because answers
    can arrive while the round's queries are still being pushed."""
    current = services.store.current_round(project)
    if current is None or current["status"] != "open":
        return False
    counts = services.store.round_progress(project, current["round"])
    if counts["open"] == 0 and services.settings_for(project).auto_advance:
        runner.submit(project, "advance")
        return True
    if services.store.unplaced_queries(project, current["round"]):
        runner.submit(project, "push")  # points submitted with the placeholder go onto a new query task
    services.progress.update(project, f"round {current['round']} open",
                             counts["answered"] + counts["dismissed"], sum(counts.values()))
    return False


def advance_project(services: Services, runner, project: int, force: bool) -> None:
    store = services.store
    current = store.current_round(project)
    if current is None:
        sync_project(services, runner, project)
        return
    if current["status"] == "selected":
        push_round(services, runner, project, current["round"])
        return
    if current["status"] == "closed":
        log.info("project %s: a pinned head's round is being prepared; the request ends here", project)
        return
    counts = store.round_progress(project, current["round"])
    if counts["open"] and not force:
        log.info("project %s: round %s still has %d open queries", project, current["round"], counts["open"])
        return
    if force and not labeled_since_last_head(store, project):
        log.info("project %s: nothing labeled since the last head: the training request ends here", project)
        return
    started = time.time()  # a head pinned from here on wins over the one this job trains
    services.progress.update(project, "listing tasks", work=(round_work(current["round"] + 1), None), work_done=0)
    announce_next_round(services, project, current["round"] + 1)
    sync_tasks(services, runner, project)
    record_round(services, project, current["round"])
    store.complete_round(project, current["round"])
    plan_round(services, runner, project, current["round"] + 1, train=True, started=started)


def announce_next_round(services: Services, project: int, round_index: int) -> None:
    """Tell annotators, where they look, that the next round is being computed and about when it comes
    (ml_backend/label_studio/round_notice.py). Saying so is no reason to stop the round when Label Studio refuses."""
    status = notice.computing(round_index, time.time(), recent_round_seconds(services.store, project))
    try:
        services.client(project).post_notice(project, status)
    except (LabelStudioError, LabelStudioUnavailable) as exc:
        log.warning("project %s: annotators not told that round %d is being computed: %s", project, round_index, exc)


def select_with_current_head(services: Services, runner, project: int) -> None:
    """After a head is pinned: unless the round being asked was chosen by it, close that round (its
    unanswered queries stay in the store, never asked again; publishing the next round takes their
    tasks out of the queue) and select the next round with the pinned head, without training. A
    round no longer asked (answered, its next head kept out by this pin; or closed by an earlier
    pin) is followed by one of the pinned head even if that head chose it."""
    store = services.store
    head, latest = store.current_head(project), store.current_round(project)
    if head is None or latest is None:
        return
    live = latest["status"] in ("selected", "open")
    if live and latest["head_version"] == head["version"]:
        if latest["status"] == "selected":
            push_round(services, runner, project, latest["round"])
        log.info("project %s: round %d was chosen by %s already", project, latest["round"], head["version"])
        return
    if live:
        record_round(services, project, latest["round"])
        store.complete_round(project, latest["round"], "closed")
        log.info("project %s: round %d closed: %s was pinned", project, latest["round"], head["version"])
    plan_round(services, runner, project, latest["round"] + 1, train=False)


def labeled_since_last_head(store, project: int) -> bool:
    """Whether the stored labels differ from those the current head was trained on (a project
    without a head: whether anything is labeled at all). Repeated training requests stop here."""
    head, labels = store.current_head(project), store.labels(project)
    return head["labels_digest"] != labels_digest(labels) if head else bool(labels)


class RoundContext:
    """What the steps of a round share: the usable tasks, their features, records and labels. A records
    job asks for its batch `only`: the labeled set of the others (their images decoded, their
    expansions read) is not built again for each batch of the round."""

    def __init__(self, services: Services, project: int, only: Collection[int] | None = None):
        self.services, self.project = services, project
        store, engine = services.store, services.engine
        self.settings = s = services.settings_for(project)
        self.files = services.files(project)
        rows = store.tasks(project, "ready")
        self.config = engine.round_config(s, len(rows))  # the budget counts every usable image
        if only is not None:
            rows = [row for row in rows if row["task"] in only]
        self.tasks = [row["task"] for row in rows]
        self.index = {t: i for i, t in enumerate(self.tasks)}
        # Keys by image content: candidates and records follow the image, whatever its task id.
        keys = [f"image-{row['digest'] or row['task']}" for row in rows]
        self.source = engine.source(lambda i: self.files.load_image(self.tasks[i]), keys)
        self.cache = engine.records(s, self.files.records)
        expansions = services.expansions(project, s) if s.expander != "none" else None
        rows = store.labels(project)
        self.labels_digest = labels_digest(rows)  # recorded with the head trained on them
        rows = [row for row in rows if row["task"] in self.index]
        labeled = build_labeled_set(rows, self.files.load_image, expansions, s.region_pixel_cap)
        self.labeled = {self.index[t]: v for t, v in labeled.items()}
        self.pixels = {i: px for i, (px, _) in self.labeled.items()}  # image index -> labeled pixels
        # image index -> every pixel queried in an earlier round, answered or not: never asked again
        self.queried = {self.index[t]: px for t, px in store.queried_pixels(project).items() if t in self.index}
        self.need_draws = self.config.needs_noise_draws

    def record(self, i: int):
        """The image's stage-1 record for its labeled and queried pixels (computed when missing)."""
        return image_record(self.source, i, self.pixels.get(i, ()), self.config, self.need_draws, self.cache,
                            self.queried.get(i, ()))

    def has_record(self, task: int) -> bool:
        i = self.index[task]
        return self.cache.get(self.source.key(i), record_digest(self.pixels.get(i, ()), self.queried.get(i, ()))) \
            is not None

    def forget_stale_records(self) -> None:
        """Delete the records of labeled sets that have changed: the round being planned needs only
        the current ones, and the previous round's select job is done (a project's rounds run one at
        a time)."""
        stale = self.cache.retain(current_records(self.source, self.pixels, self.queried))
        if stale:
            log.info("project %s: %d records of earlier labeled sets deleted", self.project, stale)


def plan_round(services: Services, runner, project: int, round_index: int, train: bool,
               started: float | None = None) -> None:
    """With `train`, train on everything labeled so far (if anything is) and swap the head in; else
    the round is chosen by the current head (a pinned one). Then queue the per-image work in
    batches and the selection that waits for it. A head pinned after the work began (`started`,
    default now) wins: the head trained here is kept but not made current, and the round is left to
    the pin's `pin` job (queued with the pin), so nothing is computed for a head that will not serve."""
    started = time.time() if started is None else started
    store, engine = services.store, services.engine
    services.progress.update(project, "loading backbone", work=(round_work(round_index), None), work_done=0)
    ctx = RoundContext(services, project)
    if not ctx.tasks:
        services.progress.update(project, "waiting for tasks", message="no usable images")
        return
    ctx.forget_stale_records()
    labeled = ctx.labeled if train else {}
    # the round's work: the labeled images the head trains on, the images whose records are missing
    # after that (training computes the labeled images' own), and selecting and publishing
    missing = [t for t in ctx.tasks if not ctx.has_record(t)]
    work = (round_work(round_index), len(labeled) + len([t for t in missing if ctx.index[t] not in labeled]) + 1)
    services.progress.update(project, "loading backbone", work=work)
    version = None
    if not train:
        version = store.current_head(project)["version"]
    elif ctx.labeled:
        feats, classes = labeled_features(ctx.source, ctx.labeled, ctx.config, ctx.cache,
                                          services.progress.reporter(project, "training", work, share=True),
                                          ctx.queried)
        services.progress.update(project, "training head", message=f"{len(classes)} labeled pixels")
        head, report = train_head(feats, classes, len(services.schema(project).classes),
                                  engine.train_config(ctx.settings))
        version = f"p{project}-head-{len(store.heads(project)) + 1}"
        path = ctx.files.head_path(version)
        tmp = path.with_suffix(".tmp")
        torch.save(head.checkpoint(), tmp)
        tmp.replace(path)
        engine.remember_head(project, version, head)
        current = store.add_head(project, version, round_index, str(path), len(classes), report.as_dict(),
                                 ctx.labels_digest, engine.feature_setup().as_dict(), started)
        log.info("project %s: %s trained on %d pixels (%s)", project, version, len(classes), report.as_dict())
        if not current:
            pinned = store.latest_pin(project)["version"]
            log.info("project %s: %s trained but not made current: %s was pinned while it trained", project,
                     version, pinned)
            services.progress.update(project, f"{version} kept, not current", message=f"{pinned} is pinned")
            return
    missing = [t for t in missing if not ctx.has_record(t)]
    work = (work[0], len(labeled) + len(missing) + 1)
    size = services.settings.records_batch
    jobs = [runner.submit(project, "records", {"round": round_index, "tasks": missing[a:a + size],
                                               "work_total": work[1]})
            for a in range(0, len(missing), size)]
    services.progress.update(project, f"round {round_index} queued", work=work,
                             message=f"{len(missing)} images to process in {len(jobs)} batches"
                             f"{' (with noise draws)' if ctx.need_draws else ''}")
    runner.submit(project, "select", {"round": round_index, "head": version, "work_total": work[1]}, depends_on=jobs)


def round_work(round_index: int) -> str:
    """The progress name of a round's work, from the last answer before it to its queries."""
    return f"round {round_index}"


def compute_records(services: Services, project: int, tasks: list[int], round_index: int,
                    work_total: int | None = None) -> None:
    """Per-image stage 1 (features, local herding, draw features) for a batch of the round's images,
    each image a unit of the round's work (`work_total` of it over all jobs)."""
    ctx = RoundContext(services, project, only=set(tasks))
    todo = [t for t in tasks if t in ctx.index]
    stage = f"round {round_index}: features and local herding"
    work = (round_work(round_index), work_total)
    services.progress.update(project, stage, 0, len(todo), work=work, work_done=0)
    for n, task in enumerate(todo):
        ctx.record(ctx.index[task])
        services.progress.update(project, stage, n + 1, len(todo), work_done=n + 1)


def select_round(services: Services, runner, project: int, round_index: int, head_version: str | None,
                 work_total: int | None = None) -> None:
    """Global herding and uncertainty over the round's records, then publish: the round's last unit
    of work, done when the round opens (push_round)."""
    store, engine = services.store, services.engine
    work = (round_work(round_index), work_total)
    existing = store.current_round(project)
    if existing is not None and existing["round"] >= round_index:
        if existing["round"] == round_index and existing["status"] == "selected":
            push_round(services, runner, project, round_index)  # recorded before a crash: push it as it is
        else:
            log.info("project %s: round %d already selected", project, round_index)
        return
    current = store.current_head(project)
    if head_version is not None and head_version != current["version"]:
        log.info("project %s: round %d was planned with %s, no longer the current head (%s): not selected",
                 project, round_index, head_version, current["version"])
        return
    ctx = RoundContext(services, project)
    head = None
    if head_version is not None:
        head = engine.head(project, head_version, current["path"])
    result = run_round(ctx.source, ctx.pixels, head, ctx.config, ctx.cache,
                       services.progress.reporter(project, f"round {round_index}:", work), round_index=round_index,
                       queried=ctx.queried)
    suggested = [None] * len(result.queries)
    if head is not None:
        for k, (i, p) in enumerate(result.queries):
            rec, _ = ctx.record(i)
            feats = torch.from_numpy(rec.reference[np.flatnonzero(rec.picks == p)]).float()
            suggested[k] = int(head.log_probs(feats).argmax(1)[0]) if len(feats) else None
    queries = [{"task": ctx.tasks[i], "pixel": p, "rank": k, "score": result.scores[k] if result.scores else None,
                "suggested": suggested[k], "region": f"q{round_index}-{ctx.tasks[i]}-{p}"}
               for k, (i, p) in enumerate(result.queries)]
    store.save_round(project, round_index, head_version, queries, ctx.settings.project_view())
    log.info("project %s: round %d selected %d pixels on %d images (%s)", project, round_index, len(queries),
             len({q['task'] for q in queries}), {k: round(v, 2) for k, v in result.seconds.items()})
    push_round(services, runner, project, round_index)


def push_round(services: Services, runner, project: int, round_index: int) -> None:
    """Publish the round's queries in Label Studio's queue and open the round; after a round chosen
    by a new head, queue the segmentation of every task by that head."""
    store = services.store
    publish_round(services, project, round_index)
    round_row = store.round(project, round_index)
    if round_row["status"] == "selected":
        store.open_round(project, round_index)
        services.progress.update(project, f"round {round_index} open", work_done=1)  # the select job's unit
        if round_row["head_version"]:
            runner.submit(project, "segment")
        prefetch_expansions(services, project, sorted({q["task"] for q in store.queries(project, round_index)}))
        log.info("project %s: round %d open in Label Studio as %s", project, round_index,
                 queue_version(project, round_row))
    advance_when_answered(services, runner, project)


def prefetch_expansions(services: Services, project: int, tasks: list[int]) -> None:
    """Compute the expander's per-image work (SAM embeddings) for the queried images now, so that an
    annotator's first click on them is fast."""
    settings = services.settings_for(project)
    if settings.expander == "none":
        return
    try:
        expander = services.engine.expander(settings)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        log.warning("project %s: expander unavailable, no prefetch: %s", project, exc)
        return
    for n, task in enumerate(tasks):
        try:
            expander.prefetch(original_image(services, project, task))
        except ValueError as exc:
            log.warning("project %s task %s: no prefetch: %s", project, task, exc)
        services.progress.update(project, "prefetching click expansion", n + 1, len(tasks))
