"""The model class Label Studio talks to, in the familiar shape of label-studio-ml's
LabelStudioMLBase: `setup`, `predict(tasks, context)` and `fit(event, data)`.

HTTP handlers stay thin and call these; long work is handed to the job runner so that every
request answers within Label Studio's timeouts (1 s for /health, 3 s for /setup).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict

from werkzeug.exceptions import NotFound

from ml_backend.web import payloads

from ml_backend.state import versions
from ml_backend.label_studio.annotations import take_in
from ml_backend.label_studio.click_prompt import ContextError, click_session
from ml_backend.config import SettingsError
from ml_backend.label_studio.images import original_image
from ml_backend.state.database import StoreUnavailable
from ml_backend.jobs.runners import InProcessRunner, QueueUnavailable, rerun_for_credentials
from ml_backend.label_studio.label_config import LabelConfigError, LabelSchema, parse_label_config
from ml_backend.label_studio.client import LabelStudioRefused
from ml_backend.state.learning_curve import curve_series, draw_curve, learning_curve, stopping_hint
from ml_backend.jobs.loop import advance_when_answered
from ml_backend.web.payloads import RequestError
from ml_backend.label_studio.regions import brush_region
from ml_backend.label_studio.query_tasks import image_task
from ml_backend.label_studio.segmentations import segmentation
from ml_backend.services import Services

log = logging.getLogger(__name__)

HANDLED_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                  "TASKS_CREATED", "TASKS_DELETED", "START_TRAINING", "PROJECT_UPDATED")
SYNC_INTERVAL = 30.0  # seconds between task-list syncs triggered by /setup


class ActiveLearningBackend:
    def __init__(self, services: Services, runner: InProcessRunner):
        self.services = services
        self.runner = runner
        self._last_sync: dict[int, float] = {}
        self._lock = threading.Lock()
        self.started = time.time()
        self.reconcile = None  # the PeriodicReconcile that create_backend starts beside it

    # setup ---------------------------------------------------------------------------------------
    def setup(self, project_uid, label_config: str | None, hostname: str | None = None,
              access_token: str | None = None, authenticated: bool = False, extra_params=None) -> dict:
        """`authenticated`: the request passed BASIC_AUTH, and may change the project's Label Studio
        address and token (see Services.accept_setup_credentials). `extra_params`: the model's "Extra
        params" in Label Studio, the project's settings; they replace the ones the last /setup sent
        (none: the environment's), and one that cannot apply refuses the whole /setup."""
        request = payloads.setup(project_uid, label_config, hostname, access_token, extra_params)
        project, label_config = request.project, request.label_config
        schema = parse_label_config(label_config)
        problem = self.services.engine.checkpoint_problem()
        if problem:
            raise RequestError(problem)
        try:
            effective = self.services.settings.for_project(request.extra_params)
        except SettingsError as exc:
            raise RequestError(f"extra params: {exc}") from None
        overrides = {str(k).upper(): getattr(effective, str(k).lower()) for k in request.extra_params}
        new_credentials = self.services.accept_setup_credentials(project, request.hostname, request.access_token,
                                                                 authenticated)
        try:
            self.services.check_access(project)
        except LabelStudioRefused as exc:
            raise RequestError(str(exc)) from None  # 400: the Connect Model dialog shows its reason
        self.services.store.save_project(project, label_config, asdict(schema))
        if new_credentials:
            rerun_for_credentials(self.services.store, self.runner, project)
        if self.services.store.set_overrides(project, overrides):
            log.info("project %s: settings from Label Studio's extra params: %s", project, overrides or "none")
        with self._lock:
            due = time.time() - self._last_sync.get(project, 0.0) > SYNC_INTERVAL
            if due:
                self._last_sync[project] = time.time()
        if due:
            self.runner.submit(project, "sync")
        return {"model_version": self.model_version(project)}

    def model_version(self, project: int) -> str:
        head = self.services.store.current_head(project)
        return head["version"] if head else "none"

    def _schema(self, project: int, label_config: str | None) -> LabelSchema:
        if label_config:
            return parse_label_config(label_config)
        return self.services.schema(project)

    # predict -------------------------------------------------------------------------------------
    def predict(self, tasks: list, context: dict | None = None, project_uid=None,
                label_config: str | None = None) -> list[dict]:
        request = payloads.prediction(tasks, context, project_uid, label_config)
        project, tasks = request.project, request.tasks
        schema = self._schema(project, request.label_config)
        if request.clicks:
            task = {**tasks[0], "id": image_task(self.services, project, tasks[0]["id"])}  # a query task's image
            return [self._expand_click(project, schema, task, request.clicks)]
        return self._segmentations(project, schema, tasks)

    def _expand_click(self, project: int, schema: LabelSchema, task: dict, result: list) -> dict:
        """The region of the annotator's session so far (every point and the box of the newest click's
        class, see ml_backend/label_studio/click_prompt.py), or no region when its confidence stays below tau."""
        try:
            session = click_session(result, schema)
        except ContextError as exc:
            raise RequestError(f"unusable click: {exc}") from None
        image = original_image(self.services, project, int(task["id"]), (task.get("data") or {}).get(schema.image_key))
        h, w = image.shape[:2]
        try:
            prompt = session.prompt(w, h)
        except ContextError as exc:
            raise RequestError(f"unusable click: {exc}") from None
        expander = self.services.engine.expander(self.services.settings_for(project))
        mask, confidence, expanded = expander.prompt_region(image, prompt)
        regions = []
        if expanded:
            regions.append(brush_region(f"expanded-{session.newest}", mask, session.cls, schema, confidence))
        log.info("task %s: %d points (%d negative)%s -> %s region of %d pixels, confidence %.3f (tau %.2f)", task["id"],
                 len(prompt.points), len(prompt.points) - len(prompt.positives), " and a box" if prompt.box else "",
                 expander.name, int(mask.sum()) if expanded else 0, confidence, expander.tau)
        return {"result": regions, "score": confidence, "model_version": f"expander-{expander.name}"}

    def _segmentations(self, project: int, schema: LabelSchema, tasks: list[dict]) -> list[dict]:
        """The current head's segmentation of each task (a query task gets its image's), from the files
        the segmentation job writes, computing only what is missing. Before the first head: no result
        at all, which Label Studio stores nothing for (an empty prediction would be kept and block
        the real one later)."""
        head_row = self.services.store.current_head(project)
        if head_row is None:
            log.info("no prediction yet for %d task(s): no head has been trained in project %s (it trains after "
                     "round 0 is answered)", len(tasks), project)
            return []
        return [segmentation(self.services, project, image_task(self.services, project, int(task["id"])), head_row,
                             (task.get("data") or {}).get(schema.image_key)) for task in tasks]

    # fit (webhooks) ------------------------------------------------------------------------------
    def fit(self, event: str, data: dict) -> dict:
        if event not in HANDLED_EVENTS:
            log.info("webhook %s ignored: this backend does not use it", event)
            return {"status": "ignored", "reason": f"action {event} is not used by this backend"}
        message = payloads.event(event, data)
        project, store = message.project, self.services.store
        if event == "PROJECT_UPDATED":
            try:
                schema = parse_label_config(message.label_config)
            except LabelConfigError as exc:
                log.warning("project %s: new label config not usable, keeping the old one: %s", project, exc)
                return {"status": "ignored", "reason": str(exc)}
            store.save_project(project, message.label_config, asdict(schema))
            return {"status": "ok"}
        if event == "START_TRAINING":
            return {"status": "ok", "job": self.runner.submit(project, "train")}
        if event == "TASKS_CREATED":
            created = data.get("tasks")
            if isinstance(created, list) and created and all(
                    isinstance(t, dict) and isinstance(t.get("data"), dict) and "query_key" in t["data"] for t in created):
                return {"status": "ignored", "reason": "the backend's own query tasks"}  # no task listing for them
            return {"status": "ok", "job": self.runner.submit(project, "sync")}
        if event == "TASKS_DELETED":
            store.delete_tasks(project, message.ids)
            return {"status": "ok"}
        if event == "ANNOTATIONS_DELETED":
            store.delete_annotations(project, message.ids)
            return {"status": "ok"}
        taken = take_in(self.services, self.runner, project, message.annotations,
                        self._schema(project, message.label_config))
        down = taken.unqueued  # every annotation is stored and every job recorded: the 503 comes after the last
        try:
            advanced = advance_when_answered(self.services, self.runner, project)
        except QueueUnavailable as exc:
            down.append(exc)
        if down:
            raise down[0]
        return {"status": "ok", "annotations": taken.outcomes, "skipped_regions": taken.problems,
                "pending_regions": taken.pending, "advance": advanced}

    # introspection -------------------------------------------------------------------------------
    def versions(self, project: int | None = None) -> dict:
        """Head versions of one project or of all (names carry the project), oldest first, which head
        of each project is current, each project's latest pin, and why a newer head is not current."""
        heads = versions.heads(self.services.store, project)
        return {"versions": [h["version"] for h in heads],
                "current": {str(h["project"]): h["version"] for h in heads if h["current"]},
                "pinned": versions.pins(self.services.store, project),
                "heads": [{k: h[k] for k in ("project", "version", "round", "labeled", "created", "current",
                                             "superseded_by_pin")} for h in heads]}

    def pin(self, data: dict) -> dict:
        request = payloads.pin(data, versions.project_of)
        return versions.pin(self.services, self.runner, request.project, request.version)

    def curve_png(self, project_uid) -> bytes:
        project = payloads.project_id(project_uid)
        if self.services.store.project(project) is None:
            raise NotFound(f"project {project} is not known to this backend (Label Studio calls /setup on connect)")
        return draw_curve(curve_series(learning_curve(self.services.store, project)),
                          self.services.settings_for(project).stop_agreement,
                          f"project {project}: learning curve without ground truth")

    def _settings_view(self, project: int, curve: list[dict]) -> dict:
        settings = self.services.settings_for(project)
        hint = stopping_hint(curve, settings)
        return {"settings": settings.project_view(), "overrides": self.services.store.overrides(project),
                "stopping_hint": hint["message"] if hint else None}

    def _round_state(self, project: int) -> dict | None:
        """The latest round and what became of its queries (beside "progress": the work toward the
        next round, and the background jobs)."""
        current = self.services.store.current_round(project)
        if current is None:
            return None
        return {"round": current["round"], "status": current["status"],
                **self.services.store.round_progress(project, current["round"])}

    def projects_status(self) -> dict:
        store, out = self.services.store, {}
        for project in store.projects():
            current = store.current_round(project)
            head = store.current_head(project)
            curve = learning_curve(store, project)
            out[str(project)] = {
                "tasks": len(store.tasks(project)), "images_ready": len(store.tasks(project, "ready")),
                "images_failed": len(store.tasks(project, "failed")),
                "labeled_pixels": len(store.labels(project)), "annotations": store.annotation_count(project),
                "round": current["round"] if current else None, "round_status": current["status"] if current else None,
                "queries": store.round_progress(project, current["round"]) if current else None,
                "model_version": head["version"] if head else None,
                **self._settings_view(project, curve), "rounds": curve,
            }
        return out

    def health(self) -> dict:
        """What Label Studio's connect dialog and an operator need without credentials: whether the
        backend can work and, if not, the one thing to do; per project its progress (that of every
        process: it is in the store), its effective settings with the stopping hint, the tasks whose
        image failed (with the reason), why credentials from /setup were refused and, while it is, that
        the job queue ("job_queue") or the store's database ("store") is unreachable. Always a 200,
        which Label Studio needs to connect. Backend settings, paths and jobs are in /metrics. Per
        project, "round" is where the loop stands (its latest round and its queries) and "progress"
        the work toward the next round, with the background jobs beside it."""
        problem = self.services.engine.checkpoint_problem()
        engine = self.services.engine
        out = {
            "status": "UP" if problem is None else "NOT_READY", "ready": problem is None,
            "model_class": type(self).__name__, "model": {"backbone": engine.backbone.name, **engine.weights_status()},
        }
        try:
            out.update({
                "progress": self.services.progress.snapshot(), "failed_tasks": self.failed_tasks(),
                "projects": {str(p): {**self._settings_view(p, learning_curve(self.services.store, p)),
                                      "round": self._round_state(p)} for p in self.services.store.projects()},
            })
        except StoreUnavailable as exc:  # what the store holds cannot be shown; that it cannot, can
            out["store"] = f"{exc}; requests that need it get a 503 until it answers"
        if problem is not None:
            out["todo"] = problem
        if self.services.refused_credentials:
            out["refused_credentials"] = {str(p): why for p, why in self.services.refused_credentials.items()}
        if self.runner.outage:
            out["job_queue"] = self.runner.outage
        if self.services.refused_by_label_studio:
            out["refused_by_label_studio"] = {str(p): why for p, why in self.services.refused_by_label_studio.items()}
        return out

    def failed_tasks(self, limit: int = 20) -> dict:
        """project -> its first `limit` tasks whose image could not be used, with the reason."""
        store = self.services.store
        failed = {str(p): store.tasks(p, "failed") for p in store.projects()}
        return {p: [{"task": r["task"], "error": r["error"]} for r in rows[:limit]] for p, rows in failed.items() if rows}

    def metrics(self) -> dict:
        store = self.services.store
        return {
            "uptime_s": round(time.time() - self.started, 1), "backbone": self.services.engine.status(),
            "jobs": self.runner.describe(), "settings": self.services.settings.public(),
            "projects": self.projects_status(),
            "heads": {str(p): [{k: h[k] for k in ("version", "round", "labeled", "created", "current", "report")}
                               for h in store.heads(p)] for p in store.projects()},
            "recent_jobs": store.recent_jobs(20), "label_studio_calls": self.services.label_studio_calls(),
        }
