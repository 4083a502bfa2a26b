"""Every request body the backend accepts, checked once at the edge and turned into typed values.

The handlers downstream index into these values without checking again, so a wrong type cannot
surface as a 500 deep inside (a task id "abc", a project id past SQLite's 64 bits, an `updated_at`
that overflows when converted to UTC, a label config sent as an object). Anything that does not
fit is a RequestError naming the field, answered with a 400.

What stays outside: the content of annotation regions. An unusable region is skipped and
reported by `regions.labels_from_result` while the rest of its annotation is kept, so that one bad
region does not lose an annotator's other labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ml_backend.web.echo import quote
from ml_backend.state.timestamps import parse_timestamp

MAX_ID = 2 ** 63 - 1  # SQLite INTEGER; Label Studio's ids are positive
MAX_ID_DIGITS = len(str(MAX_ID))


class RequestError(ValueError):
    """A request the backend cannot act on; the message says why (answered with 400)."""


def json_object(raw: bytes) -> dict:
    """The body as a JSON object. Deep nesting ends in a RecursionError inside the parser, which
    is a malformed body like any other."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):  # bytes in no Unicode encoding; nesting past the parser's stack
        raise RequestError("the request body is not JSON (not Unicode text, or nested too deeply)") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    return data


def entity_id(value, what: str) -> int:
    """A Label Studio id: a positive integer, or its ASCII decimal digits as a string. Other scripts'
    digits are no id (int() would read "٢٠" as 20), and a string longer than the largest id is
    refused before int() sees it (which raises past 4,300 digits)."""
    if isinstance(value, str):
        digits = value.strip()
        if digits.isascii() and digits.isdigit() and len(digits.lstrip("0")) <= MAX_ID_DIGITS:
            value = int(digits)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise RequestError(f"{what} must be a positive integer id, not {quote(value)}")
    return value


def project_id(value) -> int:
    """Label Studio names projects as "<id>.<created timestamp>" in /setup and /predict, as an object
    with an "id" in webhooks, or as a bare id."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, str):
        value = value.split(".", 1)[0]
    try:
        return entity_id(value, "the project")
    except RequestError:
        raise RequestError(f"cannot read a project id from {quote(value)}") from None


def text(value, name: str) -> str | None:
    """An optional string field ("" counts as absent)."""
    if value is not None and not isinstance(value, str):
        raise RequestError(f"'{name}' must be a string, not {type(value).__name__}")
    return value or None


def timestamp(value) -> str:
    """Label Studio's ISO timestamp as the store orders it ("" when absent)."""
    try:
        return parse_timestamp(value)
    except ValueError:
        raise RequestError(f"unreadable timestamp {quote(value)}") from None


# /setup --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    project: int
    label_config: str | None
    hostname: str | None  # Label Studio's address and a token, as Label Studio sends them
    access_token: str | None
    extra_params: dict  # the model's "Extra params": the project's settings ({} when none are set)


def setup(project, label_config, hostname=None, access_token=None, extra_params=None) -> Setup:
    return Setup(project_id(project), text(label_config, "schema"), text(hostname, "hostname"),
                 text(access_token, "access_token"), settings_object(extra_params))


def settings_object(extra_params) -> dict:
    """The model's "Extra params" as a dict. Label Studio's Connect Model dialog stores its textarea
    as a JSON string and sends that string: empty means no settings, else it must hold a JSON
    object (an API client may send the object itself)."""
    example = 'a JSON object of settings, such as {"BUDGET": 20}'
    if isinstance(extra_params, str):
        if not extra_params.strip():
            return {}
        try:
            extra_params = json.loads(extra_params)
        except json.JSONDecodeError as exc:
            raise RequestError(f"Extra params are not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                               f"write {example}") from None
        except RecursionError:
            raise RequestError(f"Extra params are nested too deeply; write {example}") from None
    if extra_params is None:
        return {}
    if not isinstance(extra_params, dict):
        raise RequestError(f"Extra params must be {example}, not {type(extra_params).__name__} "
                           f"{quote(extra_params)}")
    return extra_params


# /predict ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    project: int
    tasks: list[dict]  # each {"id": int, "data": dict, ...}
    clicks: list[dict] | None  # the interactive context's regions (each with an object `value`), if any
    label_config: str | None


def prediction(tasks, context, project=None, label_config=None) -> Prediction:
    if not isinstance(tasks, list) or not tasks:
        raise RequestError("'tasks' must be a non-empty list of Label Studio tasks")
    checked = []
    for task in tasks:
        if not isinstance(task, dict) or "id" not in task:
            raise RequestError("every task needs an 'id'")
        data = task.get("data") or {}
        if not isinstance(data, dict):
            raise RequestError(f"task {quote(task['id'])}: 'data' must be an object")
        checked.append({**task, "id": entity_id(task["id"], "a task id"), "data": data})
    if context is not None and not isinstance(context, dict):
        raise RequestError("'params.context' must be an object")
    regions = (context or {}).get("result")
    if regions:
        if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
            raise RequestError("'params.context.result' must be a list of regions")
        if not all(isinstance(r.get("value", {}), dict) for r in regions):
            raise RequestError("every region of 'params.context.result' needs an object 'value'")
    return Prediction(project_id(project if project is not None else checked[0].get("project")), checked,
                      regions or None, text(label_config, "label_config"))


# /webhook ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Annotation:
    id: int
    task: int
    updated_at: str  # normalised by `timestamp`: "" when Label Studio sent none
    result: list  # the regions as sent, [] for a cancelled (skipped) task (an unusable region is skipped later)
    cancelled: bool  # a skip: dismisses the queries of the query task it was made on


@dataclass(frozen=True)
class Event:
    project: int
    label_config: str | None  # the project's config when the payload carries the project object
    annotations: list[Annotation]  # annotation events
    ids: list[int]  # TASKS_DELETED: task ids; ANNOTATIONS_DELETED: annotation ids


ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")


def event(action: str, data: dict) -> Event:
    project = data.get("project")
    if action == "PROJECT_UPDATED" and not isinstance(project, dict):
        raise RequestError("PROJECT_UPDATED needs the 'project' object with its 'label_config'")
    label_config = text(project.get("label_config"), "project.label_config") if isinstance(project, dict) else None
    annotations, ids = [], []
    if action in ANNOTATION_ACTIONS:
        task = data.get("task")
        default_task = task.get("id") if isinstance(task, dict) else None
        annotations = [annotation(item, default_task) for item in _items(data, "annotation")]
    elif action == "TASKS_DELETED":
        ids = [entity_id(item["id"], "a deleted task's id") for item in _items(data, "tasks")]
    elif action == "ANNOTATIONS_DELETED":
        ids = [entity_id(item["id"], "a deleted annotation's id") for item in _items(data, "annotations")]
    return Event(project_id(project), label_config, annotations, ids)


def annotation(item: dict, default_task) -> Annotation:
    """One annotation as a webhook (or Label Studio's annotation list) carries it."""
    task = item.get("task", default_task)
    if isinstance(task, dict):
        if "id" not in task:
            raise RequestError("the annotation's 'task' object needs an 'id'")
        task = task["id"]
    cancelled = bool(item.get("was_cancelled"))
    result = [] if cancelled else item.get("result") or []
    # Label Studio's own clock orders versions: updated_at, else created_at (a first version)
    stamp = timestamp(item.get("updated_at") or item.get("created_at"))
    return Annotation(entity_id(item["id"], "an annotation id"), entity_id(task, "the annotation's task id"),
                      stamp, result, cancelled)


def _items(data: dict, key: str) -> list[dict]:
    value = data.get(key)
    if value is None:
        raise RequestError(f"webhook payload lacks '{key}'")
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, dict) and "id" in v for v in items):
        raise RequestError(f"every entry of '{key}' needs an 'id'")
    return items


# /versions -----------------------------------------------------------------------------------
def versions_project(body: bytes, query: str | None) -> int | None:
    """The project of a /versions call (GET with ?project= or a JSON body), or None for all."""
    project = json_object(body).get("project") if body.strip() else None
    project = project if project is not None else query
    return project_id(project) if project else None


@dataclass(frozen=True)
class Pin:
    project: int
    version: str


def pin(data: dict, project_of) -> Pin:
    """`{"version": "p7-head-2"}`, with `"project"` optional: a head's name carries its project.
    `project_of` reads it from the name (None for a name without one, a ValueError for a project
    past 64 bits)."""
    version = text(data.get("version"), "version")
    if version is None:
        raise RequestError("/versions/pin needs 'version', the head to pin (GET /versions lists them)")
    try:
        named = project_of(version)
    except ValueError as exc:
        raise RequestError(f"'version': {exc}") from None
    project = project_id(data["project"]) if data.get("project") is not None else named
    if project is None:
        raise RequestError(f"/versions/pin needs 'project': {quote(version)} does not name one")
    if named is not None and named != project:
        raise RequestError(f"{quote(version)} is a head of project {named}, not of project {project}")
    return Pin(project, version)
