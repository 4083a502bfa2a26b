"""The backend's durable state: a SQLite file in MODEL_DIR, or a PostgreSQL database (DATABASE_URL).

Every annotation Label Studio sends is kept verbatim; the labeled pixels derived from it are
replaced only by a newer version of the same annotation (by Label Studio's `updated_at`), and a
deleted annotation leaves a tombstone so that a late or repeated delivery cannot bring it back.
The labeled set therefore depends only on which annotations exist and their latest versions,
whatever order or how often the webhooks arrive.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ml_backend.state.database import Session, open_database
from ml_backend.state.schema import migrate
from ml_backend.state.timestamps import parse_timestamp


@dataclass(frozen=True)
class Label:
    task: int
    region: str
    pixel: int  # flat index at the model resolution
    cls: int
    source: str  # "keypoint" or "brush" (expansions are derived at training time, not stored)


class Store:
    """The backend's state in a SQLite file (a path) or a PostgreSQL database (a `postgresql://` URL),
    migrated to the newest schema when opened. Every method that writes is one transaction; one that
    writes a project's rows holds the project's lock (see ml_backend.state.database), so a read-then-write
    (a newer version of an annotation, a singleton job, a pin) is decided on what every earlier writer
    committed. Only a job's own row is written without it, by one statement."""

    def __init__(self, location: str | Path):
        self.database = open_database(location)
        try:
            migrate(self.database)
        except BaseException:
            self.database.close()  # its connections, which nothing else would close
            raise

    def close(self) -> None:
        self.database.close()

    def _all(self, sql: str, args: Iterable = ()) -> list[dict]:
        return self.database.all(sql, args)

    def _one(self, sql: str, args: Iterable = ()) -> dict | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    # projects ---------------------------------------------------------------------------------
    def save_project(self, project: int, label_config: str, schema: dict) -> None:
        with self.database.transaction(project) as db:
            db.execute("INSERT INTO projects (project, label_config, schema, updated) VALUES (?,?,?,?) "
                       "ON CONFLICT(project) DO UPDATE SET "
                       "label_config=excluded.label_config, schema=excluded.schema, updated=excluded.updated",
                       (project, label_config, json.dumps(schema), time.time()))

    def project(self, project: int) -> dict | None:
        row = self._one("SELECT * FROM projects WHERE project=?", (project,))
        if row:
            row["schema"] = json.loads(row["schema"])
            row["overrides"] = json.loads(row["overrides"])
        return row

    def set_overrides(self, project: int, overrides: dict) -> bool:
        """Replace the project's settings from Label Studio's extra params; True if they changed."""
        with self.database.transaction(project) as db:
            row = db.execute("SELECT overrides FROM projects WHERE project=?", (project,)).fetchone()
            if row is None or json.loads(row["overrides"]) == overrides:
                return False
            db.execute("UPDATE projects SET overrides=? WHERE project=?", (json.dumps(overrides), project))
            return True

    def overrides(self, project: int) -> dict:
        row = self._one("SELECT overrides FROM projects WHERE project=?", (project,))
        return json.loads(row["overrides"]) if row else {}

    def projects(self) -> list[int]:
        return [r["project"] for r in self._all("SELECT project FROM projects ORDER BY project")]

    # Label Studio credentials from /setup -------------------------------------------------------
    def save_credentials(self, project: int, url: str, token: str) -> bool:
        """Keep the Label Studio address and token a project's jobs use (from /setup), so that a restarted
        process and workers elsewhere reach Label Studio too; True if they are new or changed. Their own
        table: nothing that lists projects, jobs or settings can show them."""
        with self.database.transaction(project) as db:
            old = db.execute("SELECT url, token FROM credentials WHERE project=?", (project,)).fetchone()
            if old is not None and (old["url"], old["token"]) == (url, token):
                return False
            db.execute("INSERT INTO credentials (project, url, token, updated) VALUES (?,?,?,?) ON CONFLICT(project) "
                       "DO UPDATE SET url=excluded.url, token=excluded.token, updated=excluded.updated",
                       (project, url, token, time.time()))
            return True

    def credentials(self, project: int) -> tuple[str, str] | None:
        row = self._one("SELECT url, token FROM credentials WHERE project=?", (project,))
        return (row["url"], row["token"]) if row else None

    # tasks ------------------------------------------------------------------------------------
    def upsert_tasks(self, project: int, tasks: Iterable[tuple[int, str]]) -> int:
        """Add tasks (id, image URL) not seen before; a changed URL resets the task to pending."""
        added = 0
        with self.database.transaction(project) as db:
            for task, url in tasks:
                old = db.execute("SELECT image_url FROM tasks WHERE project=? AND task=?", (project, task)).fetchone()
                if old is None:
                    db.execute("INSERT INTO tasks (project, task, image_url) VALUES (?,?,?)", (project, task, url))
                    added += 1
                elif old["image_url"] != url:
                    db.execute("UPDATE tasks SET image_url=?, status='pending', error=NULL WHERE project=? AND task=?",
                               (url, project, task))
        return added

    def set_task_image(self, project: int, task: int, width: int | None, height: int | None,
                       status: str, error: str | None = None, digest: str | None = None) -> None:
        with self.database.transaction(project) as db:
            db.execute("UPDATE tasks SET width=?, height=?, status=?, error=?, digest=? WHERE project=? AND task=?",
                       (width, height, status, error, digest, project, task))

    def delete_tasks(self, project: int, tasks: Iterable[int]) -> None:
        with self.database.transaction(project) as db:
            for task in tasks:
                db.execute("INSERT INTO tasks (project, task, image_url, deleted) VALUES (?,?,'',1) "
                           "ON CONFLICT(project, task) DO UPDATE SET deleted=1", (project, task))

    def tasks(self, project: int, status: str | None = None) -> list[dict]:
        sql = "SELECT * FROM tasks WHERE project=? AND deleted=0"
        args: list = [project]
        if status:
            sql += " AND status=?"
            args.append(status)
        return self._all(sql + " ORDER BY task", args)

    def task(self, project: int, task: int) -> dict | None:
        return self._one("SELECT * FROM tasks WHERE project=? AND task=?", (project, task))

    # annotations and labels -------------------------------------------------------------------
    def apply_annotation(self, project: int, annotation: int, task: int, updated_at: str, result: list,
                         labels: list[Label], *, holder: int | None = None, pending: Iterable[str] = (),
                         cancelled: bool = False) -> str:
        """Store an annotation version; returns 'applied', 'stale' or 'deleted' (tombstoned).
        `task` is the image task the labels belong to; `holder` the Label Studio task the annotation
        was made on (a query task, or the image task itself); `pending` the query regions submitted
        still carrying the placeholder; `cancelled` a skip."""
        stamp = parse_timestamp(updated_at)
        with self.database.transaction(project) as db:
            old = db.execute("SELECT updated_at, deleted FROM annotations WHERE project=? AND annotation=?",
                             (project, annotation)).fetchone()
            if old is not None and old["deleted"]:
                return "deleted"
            if old is not None and old["updated_at"] > stamp:
                return "stale"
            db.execute("INSERT INTO annotations (project, annotation, task, updated_at, received, deleted, result, "
                       "holder, pending, cancelled) VALUES (?,?,?,?,?,0,?,?,?,?) ON CONFLICT(project, annotation) "
                       "DO UPDATE SET task=excluded.task, updated_at=excluded.updated_at, received=excluded.received, "
                       "result=excluded.result, holder=excluded.holder, pending=excluded.pending, "
                       "cancelled=excluded.cancelled",
                       (project, annotation, task, stamp, time.time(), json.dumps(result),
                        task if holder is None else holder, json.dumps(sorted(pending)), int(cancelled)))
            db.execute("DELETE FROM labels WHERE project=? AND annotation=?", (project, annotation))
            # the latest round annotators could see when this version arrived (None before round 0)
            round_index = db.execute("SELECT MAX(round) AS round FROM queries WHERE project=? AND holder IS NOT NULL",
                                     (project,)).fetchone()["round"]
            db.executemany("INSERT INTO labels (project, task, annotation, region, pixel, class, source, round) "
                           "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(project, annotation, region, pixel) DO UPDATE SET "
                           "task=excluded.task, class=excluded.class, source=excluded.source, round=excluded.round",
                           [(project, lb.task, annotation, lb.region, lb.pixel, lb.cls, lb.source, round_index)
                            for lb in labels])
            self._refresh_queries(db, project, task)
        return "applied"

    def delete_annotations(self, project: int, annotations: Iterable[int]) -> None:
        with self.database.transaction(project) as db:
            for annotation in annotations:
                row = db.execute("SELECT task FROM annotations WHERE project=? AND annotation=?",
                                 (project, annotation)).fetchone()
                db.execute("INSERT INTO annotations (project, annotation, task, updated_at, received, deleted, result) "
                           "VALUES (?,?,?,?,?,1,'[]') ON CONFLICT(project, annotation) DO UPDATE SET deleted=1",
                           (project, annotation, row["task"] if row else -1, parse_timestamp(None), time.time()))
                db.execute("DELETE FROM labels WHERE project=? AND annotation=?", (project, annotation))
                if row:
                    self._refresh_queries(db, project, row["task"])

    def labels(self, project: int) -> list[dict]:
        """Labeled pixels of every task not deleted (synced or not yet), oldest annotation first per
        pixel (by Label Studio's timestamp, then annotation id), so that a consumer keeping the last
        value per pixel keeps the newest."""
        return self._all(
            "SELECT l.task, l.pixel, l.class, l.source, l.region, l.annotation, l.round FROM labels l "
            "JOIN annotations a ON a.project=l.project AND a.annotation=l.annotation "
            "LEFT JOIN tasks t ON t.project=l.project AND t.task=l.task "
            "WHERE l.project=? AND COALESCE(t.deleted, 0)=0 AND a.deleted=0 "
            "ORDER BY l.task, l.pixel, a.updated_at, a.annotation",
            (project,))

    def held_labels(self, project: int, holder: int) -> list[dict]:
        """The keypoint labels of the live annotations made on Label Studio task `holder` (a query task)."""
        return self._all(
            "SELECT l.task, l.pixel, l.class, l.region, l.annotation FROM labels l JOIN annotations a "
            "ON a.project=l.project AND a.annotation=l.annotation WHERE l.project=? AND a.holder=? AND a.deleted=0 "
            "AND l.source='keypoint' ORDER BY a.updated_at, a.annotation, l.region", (project, holder))

    def annotation_count(self, project: int) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM annotations WHERE project=? AND deleted=0", (project,))
        return int(row["n"]) if row else 0

    def annotation_versions(self, project: int) -> dict[int, dict]:
        """annotation -> {holder, updated_at, deleted, received}: what reconciliation compares with Label
        Studio's annotations."""
        return {r["annotation"]: r for r in self._all(
            "SELECT annotation, COALESCE(holder, task) AS holder, updated_at, deleted, received FROM annotations "
            "WHERE project=?", (project,))}

    def reconciled(self, project: int) -> dict[int, str]:
        """Label Studio task -> its `updated_at` when its annotations were last read from Label Studio."""
        return {r["task"]: r["updated_at"] for r in self._all("SELECT task, updated_at FROM reconciled WHERE project=?",
                                                             (project,))}

    def mark_reconciled(self, project: int, task: int, updated_at: str) -> None:
        with self.database.transaction(project) as db:
            db.execute("INSERT INTO reconciled (project, task, updated_at) VALUES (?,?,?) "
                       "ON CONFLICT(project, task) DO UPDATE SET updated_at=excluded.updated_at",
                       (project, task, updated_at))

    # rounds and queries -----------------------------------------------------------------------
    def current_round(self, project: int) -> dict | None:
        return self._one("SELECT * FROM rounds WHERE project=? ORDER BY round DESC LIMIT 1", (project,))

    def save_round(self, project: int, round_index: int, head_version: str | None,
                   queries: list[dict], settings: dict | None = None) -> None:
        """Record a round's queries (status 'selected': chosen, not yet in Label Studio), with the
        project's settings that chose them."""
        with self.database.transaction(project) as db:
            db.execute("INSERT INTO rounds (project, round, status, head_version, created, pushed, settings) "
                       "VALUES (?,?,?,?,?,NULL,?) ON CONFLICT(project, round) DO UPDATE SET status=excluded.status, "
                       "head_version=excluded.head_version, created=excluded.created, pushed=NULL, "
                       "settings=excluded.settings", (project, round_index, "selected", head_version, time.time(),
                                                     json.dumps(settings) if settings is not None else None))
            db.execute("DELETE FROM queries WHERE project=? AND round=?", (project, round_index))
            db.executemany(
                "INSERT INTO queries (project, round, task, pixel, rank, score, suggested, region) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [(project, round_index, q["task"], q["pixel"], q["rank"], q.get("score"), q.get("suggested"),
                  q["region"]) for q in queries])

    def unplaced_queries(self, project: int, round_index: int) -> list[dict]:
        """Open queries of the round that no annotator can meet: never put on a query task, or left
        with the placeholder on one that has been submitted (whose holder is used up)."""
        return self._all(
            "SELECT q.* FROM queries q WHERE q.project=? AND q.round=? AND q.status='open' AND (q.holder IS NULL OR "
            "EXISTS (SELECT 1 FROM annotations a WHERE a.project=q.project AND a.holder=q.holder AND a.deleted=0)) "
            "ORDER BY q.rank", (project, round_index))

    def add_query_task(self, project: int, holder: int, round_index: int, task: int, key: str) -> None:
        with self.database.transaction(project) as db:
            db.execute("INSERT INTO query_tasks (project, holder, round, task, key, created) VALUES (?,?,?,?,?,?) "
                       "ON CONFLICT(project, holder) DO UPDATE SET round=excluded.round, task=excluded.task, "
                       "key=excluded.key, created=excluded.created", (project, holder, round_index, task, key, time.time()))

    def query_task(self, project: int, holder: int) -> dict | None:
        """The query task `holder` (round, image task), or None for any other task."""
        return self._one("SELECT * FROM query_tasks WHERE project=? AND holder=?", (project, holder))

    def query_tasks(self, project: int) -> list[dict]:
        return self._all("SELECT * FROM query_tasks WHERE project=? ORDER BY holder", (project,))

    def place_queries(self, project: int, round_index: int, task: int, pixels: Iterable[int], holder: int) -> None:
        """The queries now wait on query task `holder` (Label Studio created it with their points)."""
        with self.database.transaction(project) as db:
            db.executemany("UPDATE queries SET holder=? WHERE project=? AND round=? AND task=? AND pixel=?",
                           [(holder, project, round_index, task, int(p)) for p in pixels])
            self._refresh_queries(db, project, task)

    def open_round(self, project: int, round_index: int) -> None:
        with self.database.transaction(project) as db:
            db.execute("UPDATE rounds SET status='open', pushed=? WHERE project=? AND round=?",
                       (time.time(), project, round_index))
            for row in db.execute("SELECT DISTINCT task FROM queries WHERE project=? AND round=?",
                                  (project, round_index)).fetchall():
                self._refresh_queries(db, project, row["task"])

    def queries(self, project: int, round_index: int) -> list[dict]:
        return self._all("SELECT * FROM queries WHERE project=? AND round=? ORDER BY rank", (project, round_index))

    def _refresh_queries(self, db: Session, project: int, task: int) -> None:
        """A query is answered once a live keypoint label of its image sits on its pixel or carries its
        region id. Otherwise the latest live annotation of the query task holding it decides: a skip,
        or a submission without the query's point, dismisses it; a submission with the point still
        carrying the placeholder keeps it open (it goes onto a new query task). No annotation: open.
        `closed` keeps when the query stopped being open (the learning curve's last answer)."""
        for q in db.execute("SELECT q.round, q.pixel, q.region, q.holder, q.status, q.closed FROM queries q JOIN rounds r "
                            "ON r.project=q.project AND r.round=q.round WHERE q.project=? AND q.task=? "
                            "AND r.status IN ('open', 'complete', 'closed')", (project, task)).fetchall():
            hit = db.execute(
                "SELECT 1 FROM labels l JOIN annotations a ON a.project=l.project AND a.annotation=l.annotation "
                "WHERE l.project=? AND l.task=? AND a.deleted=0 AND l.source='keypoint' AND (l.pixel=? OR l.region=?) "
                "LIMIT 1", (project, task, q["pixel"], q["region"])).fetchone()
            latest = None if q["holder"] is None else db.execute(
                "SELECT pending, cancelled FROM annotations WHERE project=? AND holder=? AND deleted=0 "
                "ORDER BY updated_at DESC, annotation DESC LIMIT 1", (project, q["holder"])).fetchone()
            if hit:
                status = "answered"
            elif latest is None or (not latest["cancelled"] and q["region"] in json.loads(latest["pending"])):
                status = "open"
            else:
                status = "dismissed"
            closed = None if status == "open" else q["closed"] if q["status"] == status else time.time()
            db.execute("UPDATE queries SET status=?, closed=? WHERE project=? AND round=? AND task=? AND pixel=?",
                       (status, closed, project, q["round"], task, q["pixel"]))

    def queried_pixels(self, project: int) -> dict[int, list[int]]:
        """task -> every pixel any round has queried there (whatever became of the query)."""
        out: dict[int, list[int]] = {}
        for row in self._all("SELECT DISTINCT task, pixel FROM queries WHERE project=? ORDER BY task, pixel", (project,)):
            out.setdefault(row["task"], []).append(row["pixel"])
        return out

    def round_progress(self, project: int, round_index: int) -> dict:
        rows = self._all("SELECT status, COUNT(*) AS n FROM queries WHERE project=? AND round=? GROUP BY status",
                         (project, round_index))
        counts = {r["status"]: r["n"] for r in rows}
        return {"open": counts.get("open", 0), "answered": counts.get("answered", 0),
                "dismissed": counts.get("dismissed", 0)}

    def round(self, project: int, round_index: int) -> dict | None:
        return self._one("SELECT * FROM rounds WHERE project=? AND round=?", (project, round_index))

    def rounds(self, project: int) -> list[dict]:
        rows = self._all("SELECT * FROM rounds WHERE project=? ORDER BY round", (project,))
        for row in rows:
            row["settings"] = json.loads(row["settings"]) if row["settings"] else None
        return rows

    def answers(self, project: int, round_index: int) -> list[dict]:
        """The round's answered queries with the class their newest live keypoint label gives them:
        {task, pixel (the query's), suggested (the class the round's head gave it), label_pixel, class}."""
        rows = self._all(
            "SELECT q.task, q.pixel, q.suggested, l.pixel AS label_pixel, l.class FROM queries q "
            "JOIN labels l ON l.project=q.project AND l.task=q.task AND l.source='keypoint' "
            "AND (l.pixel=q.pixel OR l.region=q.region) "
            "JOIN annotations a ON a.project=l.project AND a.annotation=l.annotation AND a.deleted=0 "
            "WHERE q.project=? AND q.round=? AND q.status='answered' ORDER BY q.rank, a.updated_at, a.annotation",
            (project, round_index))
        return list({(r["task"], r["pixel"]): r for r in rows}.values())

    def last_closed(self, project: int, round_index: int) -> float | None:
        """When the round's last query was answered or dismissed."""
        return self._one("SELECT MAX(closed) AS t FROM queries WHERE project=? AND round=?", (project, round_index))["t"]

    # the learning curve -----------------------------------------------------------------------
    def save_round_metrics(self, project: int, round_index: int, metrics: dict) -> None:
        columns = ("answered", "dismissed", "unanswered", "point_agreement", "point_pixels", "region_agreement",
                   "region_pixels", "last_answer")
        with self.database.transaction(project) as db:
            db.execute(f"INSERT INTO round_metrics (project, round, {', '.join(columns)}, recorded) "
                       f"VALUES (?,?,{','.join('?' * len(columns))},?) ON CONFLICT(project, round) DO UPDATE SET "
                       f"{', '.join(f'{c}=excluded.{c}' for c in (*columns, 'recorded'))}",
                       (project, round_index, *[metrics[c] for c in columns], time.time()))

    def round_metrics(self, project: int) -> dict[int, dict]:
        return {r["round"]: r for r in self._all("SELECT * FROM round_metrics WHERE project=? ORDER BY round",
                                                 (project,))}

    # segmentations ----------------------------------------------------------------------------
    def segmented_tasks(self, project: int, version: str) -> set[int]:
        """The image tasks whose segmentation by `version` Label Studio has (or that cannot be segmented)."""
        return {r["task"] for r in self._all("SELECT task FROM segmentations WHERE project=? AND version=? AND "
                                            "prediction IS NOT NULL", (project, version))}

    def mark_segmentation(self, project: int, task: int, version: str, prediction: int) -> None:
        """`prediction`: Label Studio's id, 0 when imported in bulk (no id comes back), -1 for an image that
        could not be segmented."""
        with self.database.transaction(project) as db:
            db.execute("INSERT INTO segmentations (project, task, version, prediction) VALUES (?,?,?,?) "
                       "ON CONFLICT(project, task, version) DO UPDATE SET prediction=excluded.prediction",
                       (project, task, version, prediction))

    def complete_round(self, project: int, round_index: int, status: str = "complete") -> None:
        """The round leaves the queue: 'complete' (answered, or training requested), or 'closed' (a
        head was pinned: its unanswered queries stay here, never asked again)."""
        with self.database.transaction(project) as db:
            db.execute("UPDATE rounds SET status=? WHERE project=? AND round=?", (status, project, round_index))

    # head versions ----------------------------------------------------------------------------
    def add_head(self, project: int, version: str, round_index: int, path: str, labeled: int, report: dict,
                 labels_digest: str | None = None, features: dict | None = None,
                 started: float | None = None) -> bool:
        """Register a trained head and make it the one that serves, in one transaction; with the
        digest of the labels it was trained on, so that a repeated training request can tell, and
        the feature configuration it expects (for export). A head whose training `started` before the
        project's latest pin is registered but not made current: the pin wins. True if it is current."""
        with self.database.transaction(project) as db:
            pinned = db.execute("SELECT MAX(pinned_at) AS t FROM heads WHERE project=?", (project,)).fetchone()["t"]
            current = started is None or pinned is None or pinned <= started
            if current:
                db.execute("UPDATE heads SET current=0 WHERE project=?", (project,))
            # a version registered again is a new head: the old one's pin goes with it
            db.execute("INSERT INTO heads (project, version, round, path, labeled, report, created, current, "
                       "labels_digest, features) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(project, version) DO UPDATE "
                       "SET round=excluded.round, path=excluded.path, labeled=excluded.labeled, report=excluded.report, "
                       "created=excluded.created, current=excluded.current, labels_digest=excluded.labels_digest, "
                       "features=excluded.features, pinned_at=NULL",
                       (project, version, round_index, path, labeled, json.dumps(report), time.time(), int(current),
                        labels_digest, json.dumps(features) if features is not None else None))
            return current

    def pin_head(self, project: int, version: str) -> bool:
        """Make an existing head the one that serves and record when; False if the project has no such head."""
        with self.database.transaction(project) as db:
            if db.execute("SELECT 1 FROM heads WHERE project=? AND version=?", (project, version)).fetchone() is None:
                return False
            db.execute("UPDATE heads SET current=CASE WHEN version=? THEN 1 ELSE 0 END, "
                       "pinned_at=CASE WHEN version=? THEN ? ELSE pinned_at END WHERE project=?",
                       (version, version, time.time(), project))
            return True

    def latest_pin(self, project: int) -> dict | None:
        """The project's most recently pinned head (version, pinned_at), None if none was ever pinned."""
        return self._one("SELECT version, pinned_at FROM heads WHERE project=? AND pinned_at IS NOT NULL "
                         "ORDER BY pinned_at DESC LIMIT 1", (project,))

    def current_head(self, project: int) -> dict | None:
        return self._decoded(self._one("SELECT * FROM heads WHERE project=? AND current=1", (project,)))

    def head(self, project: int, version: str) -> dict | None:
        return self._decoded(self._one("SELECT * FROM heads WHERE project=? AND version=?", (project, version)))

    def heads(self, project: int) -> list[dict]:
        return [self._decoded(h) for h in self._all("SELECT * FROM heads WHERE project=? ORDER BY created", (project,))]

    @staticmethod
    def _decoded(head: dict | None) -> dict | None:
        if head is not None:
            head["report"] = json.loads(head["report"]) if head["report"] else {}
            head["features"] = json.loads(head["features"]) if head["features"] else None
        return head

    # progress ---------------------------------------------------------------------------------
    def set_progress(self, project: int, job: int, stage: str, done: int | None, total: int | None,
                     message: str | None, work: str | None = None, work_total: int | None = None,
                     work_done: int | None = None) -> None:
        """What job `job` (0: the project outside any job) is doing now: its stage with its own counts,
        and the piece of work it has a share of (`work`, of `work_total` items over all its jobs, of
        which it has done `work_done`). The work, its size and the share are kept when not given, so
        a job joins a work once. The clock restarts with a new work (a new stage, outside any work)."""
        now = time.time()
        with self.database.transaction(project) as db:
            db.execute("INSERT INTO progress (project, job, stage, done, total, message, work, work_total, work_done, "
                       "started, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(project, job) DO UPDATE SET "
                       "started=CASE WHEN COALESCE(excluded.work, progress.work, progress.stage)=COALESCE(excluded.work, "
                       "progress.work, excluded.stage) THEN progress.started ELSE excluded.started END, "
                       "stage=excluded.stage, done=excluded.done, total=excluded.total, message=excluded.message, "
                       "work=COALESCE(excluded.work, progress.work), "
                       "work_total=COALESCE(excluded.work_total, progress.work_total), "
                       "work_done=COALESCE(excluded.work_done, progress.work_done), updated=excluded.updated",
                       (project, job, stage, done, total, message, work, work_total, work_done, now, now))

    def progress(self, project: int | None = None) -> list[dict]:
        """Progress rows, newest first, with their job's kind and status (None for job 0)."""
        where = "WHERE p.project=? " if project is not None else ""
        return self._all("SELECT p.*, j.kind, j.status FROM progress p LEFT JOIN jobs j ON j.id=p.job "
                         f"{where}ORDER BY p.updated DESC, p.job DESC", () if project is None else (project,))

    def work_share(self, project: int, job: int) -> dict:
        """Job `job`'s progress row with what its work adds up to over all its jobs: `shares_done`, the
        sum of their shares (None when none reports one), and `work_started`, the first one's start;
        for a row outside any work, its own. One row, however many jobs share the work (1,250 records
        jobs at 10,000 images): each progress update reads it."""
        return self._one("SELECT p.*, s.shares_done, COALESCE(s.work_started, p.started) AS work_started FROM progress p "
                         "LEFT JOIN (SELECT work, SUM(work_done) AS shares_done, MIN(started) AS work_started "
                         "FROM progress WHERE project=? AND work IS NOT NULL GROUP BY work) s ON s.work=p.work "
                         "WHERE p.project=? AND p.job=?", (project, project, job))

    def delete_progress(self, project: int, jobs: Iterable[int]) -> None:
        with self.database.transaction(project) as db:
            db.executemany("DELETE FROM progress WHERE project=? AND job=?", [(project, j) for j in jobs])

    # jobs -------------------------------------------------------------------------------------
    def add_job(self, project: int, kind: str, payload: dict | None = None) -> int:
        with self.database.transaction(project) as db:
            return self._insert_job(db, project, kind, payload)

    def add_singleton_job(self, project: int, kind: str, payload: dict | None = None) -> tuple[int, bool]:
        """The project's job of this kind that waits to start, or a new one: (id, is_new). One
        transaction, so that two processes asking at once get one job."""
        with self.database.transaction(project) as db:
            queued = db.execute("SELECT id FROM jobs WHERE project=? AND kind=? AND status='queued' ORDER BY id LIMIT 1",
                                (project, kind)).fetchone()
            return (int(queued["id"]), False) if queued else (self._insert_job(db, project, kind, payload), True)

    @staticmethod
    def _insert_job(db: Session, project: int, kind: str, payload: dict | None) -> int:
        return int(db.execute("INSERT INTO jobs (project, kind, payload, status, created) VALUES (?,?,?,'queued',?) "
                              "RETURNING id", (project, kind, json.dumps(payload) if payload is not None else None,
                                               time.time())).fetchall()[0]["id"])

    def queued_job(self, project: int, kind: str) -> dict | None:
        """The project's job of this kind that waits to start, if any (a running one does not count:
        work submitted while it runs may need a run of its own)."""
        return self._one("SELECT * FROM jobs WHERE project=? AND kind=? AND status='queued' ORDER BY id LIMIT 1",
                         (project, kind))

    def start_job(self, job: int) -> None:
        with self.database.transaction() as db:  # one statement on the job's row
            db.execute("UPDATE jobs SET status='running', started=? WHERE id=?", (time.time(), job))

    def finish_job(self, job: int, error: str | None = None) -> None:
        with self.database.transaction() as db:  # one statement on the job's row
            db.execute("UPDATE jobs SET status=?, error=?, finished=? WHERE id=?",
                       ("failed" if error else "done", error, time.time(), job))

    def failed_for_credentials(self, project: int, errors: Iterable[str]) -> list[dict]:
        """The project's failed jobs whose error starts with one of `errors` (exception names), not yet
        run again, oldest first."""
        errors = tuple(errors)
        where = " OR ".join("error LIKE ?" for _ in errors)
        rows = self._all(f"SELECT * FROM jobs WHERE project=? AND status='failed' AND ({where}) ORDER BY id",
                         (project, *[f"{e}:%" for e in errors]))
        for row in rows:
            row["payload"] = json.loads(row["payload"]) if row["payload"] else {}
        return rows

    def mark_rerun(self, job: int, again: int) -> None:
        """A failed job was run again as job `again`: it is not run again a second time."""
        with self.database.transaction() as db:
            db.execute("UPDATE jobs SET status='rerun', error=error || ? WHERE id=?", (f" (run again as job {again})", job))

    def interrupted_jobs(self) -> list[dict]:
        """Jobs a previous process left queued or running (it died): they must run again."""
        return self._all("SELECT * FROM jobs WHERE status IN ('queued','running') ORDER BY id")

    def job(self, job: int) -> dict | None:
        row = self._one("SELECT * FROM jobs WHERE id=?", (job,))
        if row is not None:
            row["payload"] = json.loads(row["payload"]) if row["payload"] else {}
        return row

    def recent_jobs(self, limit: int = 10) -> list[dict]:
        return self._all("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
