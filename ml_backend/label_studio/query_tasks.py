"""A round's queries as Label Studio tasks, so that "Label All Tasks" serves exactly the open queries.

Label Studio's queue (projects/functions/next_task.py) serves only tasks that are not `is_labeled`
and that the annotator has not annotated yet; under uncertainty sampling it takes first the tasks
holding a prediction of the project's model version, lowest score first. An image annotated in an
earlier round would therefore never come back through the queue. So each round puts the queries
of each image on a task of its own, a *query task*: the image's URL, the round, and the query points
as a prediction of the round's version. Query tasks are created most informative first and scored
in [0, 1) by rank (below), image tasks and the query tasks of past rounds are taken out of the
queue, and the project is set to uncertainty sampling over the round's version. A query task that
comes back with points still carrying the placeholder is used up (the annotator has annotated it):
its open points go onto a fresh query task. Nothing here deletes or changes an annotation.

Every step can be repeated after a crash: a query task carries a key that names its round, image
and attempt, and an existing task with that key is reused instead of created again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from ml_backend.label_studio import round_notice as notice
from ml_backend.label_studio.regions import query_region
from ml_backend.services import Services

log = logging.getLogger(__name__)

RETIRE_THREADS = 4  # PATCHes in flight at once when many new tasks leave the queue


def image_task(services: Services, project: int, task: int) -> int:
    """The image task behind a Label Studio task id: a query task's image, else the task itself."""
    row = services.store.query_task(project, task)
    return row["task"] if row else task


def queue_version(project: int, round_row: dict) -> str:
    """The Label Studio model version of a round's query predictions: the head that chose them, or
    for round 0, which has no head, the round itself."""
    return round_row["head_version"] or f"p{project}-round-{round_row['round']}"


def query_score(rank: int, total: int) -> float:
    """A query task's Label Studio score: the rank of its best query in the round as a share of the
    round, in [0, 1): 0 is the round's most informative pixel, and uncertainty sampling serves
    lowest first."""
    return rank / max(total, 1)


def query_key(project: int, round_index: int, task: int, attempt: int) -> str:
    return f"{round_key(project, round_index)}{task}-{attempt}"


def round_key(project: int, round_index: int) -> str:
    """What the query keys of one round, and only of that round, start with."""
    return f"p{project}-r{round_index}-t"


def is_query_task(services: Services, project: int, task: dict) -> bool:
    """Query tasks are the backend's own: no image of the loop. The data key covers a task created
    just before a crash, before the store recorded it."""
    return "query_key" in task["data"] or services.store.query_task(project, int(task["id"])) is not None


def place_queries(services: Services, project: int, round_row: dict, version: str) -> list[int]:
    """Put every open query of the round that no annotator can meet onto a new query task, with its
    points as a prediction of `version`; the tasks stay out of the queue until `release_task`.
    Returns the query tasks to release. Label Studio is asked for the round's query tasks and the
    queried images only (as stored: a query task copies its image's URI), never the whole project."""
    store, schema, client = services.store, services.schema(project), services.client(project)
    round_index = round_row["round"]
    unplaced = store.unplaced_queries(project, round_index)
    if not unplaced:
        return []
    total = len(store.queries(project, round_index))
    made = client.tasks(project, resolve_uri=False, query={"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:data.query_key", "operator": "contains", "type": "String",
         "value": round_key(project, round_index)}]}})
    by_key = {t["data"]["query_key"]: int(t["id"]) for t in made if "query_key" in t["data"]}
    images = sorted({q["task"] for q in unplaced})
    raw_data = {int(t["id"]): t["data"] for t in client.tasks_by_id(project, images, resolve_uri=False)}
    attempts = defaultdict(int)
    for row in store.query_tasks(project):
        if row["round"] == round_index:
            attempts[row["task"]] += 1
    suggest = services.settings_for(project).suggest_classes
    by_image: dict[int, list[dict]] = defaultdict(list)  # in rank order of each image's best query
    for q in unplaced:
        by_image[q["task"]].append(q)
    holders = []
    for n, (task, queries) in enumerate(by_image.items()):
        image = store.task(project, task)
        key = query_key(project, round_index, task, attempts[task])
        holder = by_key.get(key)  # created before a crash cut this job short
        recovered = holder is not None
        if holder is None:
            holder = client.create_query_task(project, {
                schema.image_key: raw_data.get(task, {}).get(schema.image_key, image["image_url"]),
                "query_round": round_index, "query_for_task": task, "query_points": len(queries), "query_key": key,
                "query_instruction": notice.QUERY_HEADER})
        if not recovered or client.find_prediction(holder, version) is None:
            regions = [query_region(q["region"], q["pixel"], services.settings.resolution, schema, image["width"],
                                    image["height"], _suggestion(suggest, schema, q)) for q in queries]
            client.create_prediction(holder, regions, version, query_score(queries[0]["rank"], total))
        store.add_query_task(project, holder, round_index, task, key)
        store.place_queries(project, round_index, task, [q["pixel"] for q in queries], holder)
        holders.append(holder)
        services.progress.update(project, f"pushing round {round_index} queries", n + 1, len(by_image))
    log.info("project %s: round %d: %d open queries on %d new query tasks", project, round_index, len(unplaced),
             len(by_image))
    return holders


def _suggestion(suggest: bool, schema, query: dict) -> str | None:
    if not suggest or query["suggested"] is None:
        return None
    return f"Model suggests: {schema.classes[query['suggested']]}"


def retire_outside_queue(services: Services, project: int, round_index: int | None, tasks: list[dict]) -> int:
    """Take out of Label Studio's queue every task that is not a live query task of the open round
    (image tasks, past rounds' query tasks); returns how many it took out. One PATCH a task (Label
    Studio has no bulk call for it), RETIRE_THREADS at a time, with progress."""
    store, client = services.store, services.client(project)
    live = set()
    if round_index is not None:
        live = {q["holder"] for q in store.queries(project, round_index)
                if q["status"] == "open" and q["holder"] is not None}
    todo = [int(task["id"]) for task in tasks if not task["is_labeled"] and int(task["id"]) not in live]
    stage = "taking tasks out of the labeling queue"
    with ThreadPoolExecutor(RETIRE_THREADS) as pool:
        for n, _ in enumerate(pool.map(client.retire_task, todo)):
            if (n + 1) % 50 == 0 or n + 1 == len(todo):
                services.progress.update(project, stage, n + 1, len(todo))
    if todo:
        log.info("project %s: %d tasks taken out of the labeling queue (images and past queries)", project, len(todo))
    return len(todo)


def retire_used_query_tasks(services: Services, project: int, round_index: int) -> int:
    """Take out of the queue the query tasks of the previous round and of this one that hold no open
    query of this round (image tasks leave it when a sync sees them): a call per such task, however
    many tasks the project has. Returns how many."""
    store, client = services.store, services.client(project)
    live = {q["holder"] for q in store.queries(project, round_index) if q["status"] == "open"}
    done = [row["holder"] for row in store.query_tasks(project)
            if row["round"] in (round_index - 1, round_index) and row["holder"] not in live]
    for holder in done:
        client.retire_task(holder)
    return len(done)


def publish_round(services: Services, project: int, round_index: int) -> None:
    """Make the round's open queries exactly what Label Studio's queue serves. The order keeps the
    queue honest while it changes: past tasks leave it, the new query tasks are made with their
    points but out of the queue, the project switches to the round's version (Label Studio accepts
    a version only once predictions of it exist), and only then do the query tasks enter the queue:
    none is ever served without its points."""
    store, client = services.store, services.client(project)
    round_row = store.round(project, round_index)
    version = queue_version(project, round_row)
    try:
        retire_used_query_tasks(services, project, round_index)
        holders = place_queries(services, project, round_row, version)
        overlap = client.prepare_queue(project, version, round_key(project, round_index))
        for holder in holders:
            client.release_task(holder, overlap)
        open_queries = [q for q in store.queries(project, round_index) if q["status"] == "open"]
        client.post_notice(project, notice.open_round(round_index, len(open_queries),
                                                      len({q["holder"] for q in open_queries})))
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        if status not in (401, 403):
            raise
        todo = (f"Label Studio refused the backend's key (HTTP {status}) while it set up the labeling queue of "
                f"project {project}: use the key of a user who may manage the project (LABEL_STUDIO_API_KEY), "
                f"or set by hand in the project's settings: sampling 'Uncertainty sampling', model version "
                f"{version}, predictions shown to annotators, no training on annotation submission")
        log.error("project %s: %s", project, todo)
        services.progress.update(project, "labeling queue not set up", message=todo)
        raise RuntimeError(todo) from None
