"""Annotations taken into the store, from Label Studio's webhooks and from Label Studio itself.

Label Studio is the source of truth: it does not deliver a webhook again, so an answer given while
the backend was stopped, or that the backend refused (a full disk), would otherwise never count.
Reconciliation reads back the annotations of every task that changed since it was last read (Label
Studio's `updated_at` moves with each annotation and prediction of a task) and takes in the
versions the store lacks through the same path as the webhooks, with the same rules: a version
replaces an older one only, a deleted annotation stays deleted. An annotation the store holds and
Label Studio no longer has was deleted while nobody listened: it is deleted here too, unless it
arrived after Label Studio was asked (a webhook that overtook the reading).

The `sync` job reconciles at start, on /setup and before a round is planned; `PeriodicReconcile`
queues it every RECONCILE_SECONDS for each project whose round is open, so that answers the backend
refused (a full disk) count once it can write again, with no new webhook or /setup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from ml_backend.web import payloads
from ml_backend.jobs.runners import QueueUnavailable
from ml_backend.label_studio.label_config import LabelSchema
from ml_backend.web.payloads import Annotation, RequestError
from ml_backend.label_studio.regions import labels_from_result
from ml_backend.label_studio.query_tasks import image_task
from ml_backend.services import Services
from ml_backend.jobs.outage_log import OutageLog

log = logging.getLogger(__name__)


@dataclass
class Taken:
    outcomes: list[str] = field(default_factory=list)  # per annotation: applied, stale or deleted
    problems: list[str] = field(default_factory=list)  # regions skipped, with the reason
    pending: list[str] = field(default_factory=list)  # query regions submitted with the placeholder
    unqueued: list[QueueUnavailable] = field(default_factory=list)  # jobs recorded while the queue was away


def take_in(services: Services, runner, project: int, annotations: list[Annotation], schema: LabelSchema) -> Taken:
    """Store each annotation version with the labels it gives its image; an answer taken in on a query
    task gets the regions it became shown on it (the `answers` job). The jobs are submitted once every
    annotation is stored, each one recorded even while the job queue is away (`unqueued`)."""
    store, taken, answered = services.store, Taken(), []
    for annotation in annotations:
        task = image_task(services, project, annotation.task)  # answers on a query task label its image
        row = store.task(project, task)
        size = (row["width"], row["height"]) if row and row["status"] == "ready" else None
        parsed = labels_from_result(annotation.result, schema, task, services.settings.resolution, size)
        taken.problems += parsed.problems
        taken.pending += parsed.pending
        outcome = store.apply_annotation(project, annotation.id, task, annotation.updated_at, annotation.result,
                                         parsed.labels, holder=annotation.task, pending=parsed.pending,
                                         cancelled=annotation.cancelled)
        taken.outcomes.append(outcome)
        if outcome == "applied" and task != annotation.task:  # taken in on a query task: show what it became
            answered.append(annotation)
    for annotation in answered:
        try:
            runner.submit(project, "answers", {"holder": annotation.task, "skipped": annotation.cancelled})
        except QueueUnavailable as exc:
            taken.unqueued.append(exc)
    return taken


def reconcile(services: Services, runner, project: int, listing: list[dict]) -> dict:
    """Bring the store's annotations in line with Label Studio's, given the project's task list (as
    LabelStudioClient.tasks lists it). Reads the annotations of the tasks that hold some, here or
    there, and changed since they were last read. Returns the counts of what it did."""
    store, client, schema = services.store, services.client(project), services.schema(project)
    known = store.annotation_versions(project)
    held: dict[int, set[int]] = defaultdict(set)  # Label Studio task -> the store's live annotations made on it
    for annotation, row in known.items():
        if not row["deleted"]:
            held[row["holder"]].add(annotation)
    seen = store.reconciled(project)
    listed = {int(t["id"]): t for t in listing}
    changed = [t for task, t in listed.items() if (t["annotations"] or task in held) and t["updated_at"] != seen.get(task)]
    counts = {"tasks_read": len(changed), "taken_in": 0, "deleted": 0}
    started = time.time()
    batch = 100
    for start in range(0, len(changed), batch):
        chosen, asked = changed[start:start + batch], time.time()
        read = client.annotations(project, [int(t["id"]) for t in chosen], batch)
        for t in chosen:
            task = int(t["id"])
            remote = []
            for item in read.get(task, []):
                try:
                    remote.append(payloads.annotation(item, task))
                except RequestError as exc:  # one unreadable annotation does not stop the others
                    log.warning("project %s task %s: annotation from Label Studio not usable: %s", project, task, exc)
            newer = [a for a in remote if a.id not in known
                     or (not known[a.id]["deleted"] and known[a.id]["updated_at"] < a.updated_at)]
            taken = take_in(services, runner, project, newer, schema)
            if taken.unqueued:  # stored, and their jobs recorded: the queue runs them when it is back
                raise taken.unqueued[0]
            counts["taken_in"] += taken.outcomes.count("applied")
            gone = held.get(task, set()) - {a.id for a in remote}
            counts["deleted"] += _delete_unless_newer(store, project, gone, known, asked)
            store.mark_reconciled(project, task, t["updated_at"])
        services.progress.update(project, "reading answers from Label Studio", start + len(chosen), len(changed))
    # tasks Label Studio no longer has took their annotations with them
    vanished = {a for task, ids in held.items() if task not in listed for a in ids}
    counts["deleted"] += _delete_unless_newer(store, project, vanished, known, started)
    if counts["taken_in"] or counts["deleted"]:
        log.info("project %s: reconciled with Label Studio: %d annotation versions taken in, %d deleted (from %d "
                 "tasks read)", project, counts["taken_in"], counts["deleted"], counts["tasks_read"])
    return counts


def _delete_unless_newer(store, project: int, annotations: set[int], known: dict, asked: float) -> int:
    """Delete the annotations that had reached the store before Label Studio was asked about them."""
    doomed = sorted(a for a in annotations if known[a]["received"] < asked)
    if doomed:
        store.delete_annotations(project, doomed)
    return len(doomed)


class PeriodicReconcile:
    """A thread of the web process: every `seconds`, a `sync` of each project whose latest round is open
    and that has Label Studio credentials (one task listing when nothing changed)."""

    def __init__(self, services: Services, runner, seconds: float):
        self.services, self.runner, self.seconds = services, runner, seconds
        self.outage = OutageLog(log, "reconciliation with Label Studio not queued", "reconciliation queued again")
        if seconds > 0:
            threading.Thread(target=self._loop, name="reconcile", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.seconds)
            try:
                self._tick()
            except Exception as exc:  # a full disk, the store's database or the queue away: the next tick tries
                self.outage.failed(exc)
            else:
                self.outage.succeeded()

    def _tick(self) -> None:
        store = self.services.store
        for project in store.projects():
            current = store.current_round(project)
            if current is not None and current["status"] == "open" and self.services.has_credentials(project):
                self.runner.submit(project, "sync")
