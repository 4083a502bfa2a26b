"""Calls from the backend to Label Studio, through label-studio-sdk.

The SDK takes either a legacy token or a personal access token (it trades the latter for short-
lived access tokens). Every call retries with exponential backoff when Label Studio is
unreachable or answers 5xx, and logs what it is waiting for. An error answer becomes a
LabelStudioError that carries the status and Label Studio's own short reason only: the SDK's
ApiError prints the answer's headers (a `set-cookie: sessionid=...` among them), and no header,
cookie or token goes into a log line or a message.

Task files are fetched with httpx directly (the SDK has no download call for arbitrary task URLs).
Only files on Label Studio's own host get the key and retries; any other host gets one plain
attempt. Each download has an overall deadline that covers connecting, redirects, headers and
body (a server sending one byte every few seconds is cut off at the deadline, not after each
read), a size cap, and a cap on how many run at once, so that slow image hosts cannot occupy every
thread of the server.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urljoin, urlparse

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from ml_backend.label_studio import round_notice as notice

log = logging.getLogger(__name__)
# httpcore's DEBUG lines print every answer's headers, Label Studio's session cookie among them
logging.getLogger("httpcore").setLevel(logging.INFO)
T = TypeVar("T")

QUERY_VIEW_TITLE = "Active learning: open queries"
MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024
MAX_REDIRECTS = 5


ACCESS_ADVICE = ("Create a personal access token (Account & Settings > Personal Access Token) and start the backend "
                 "with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set to that token, or turn on Legacy Tokens (Organization "
                 "> API Token Settings)")
CHECK_SECONDS = 2.0  # the credentials check inside /setup, which Label Studio gives 3 s


class LabelStudioUnavailable(RuntimeError):
    """Label Studio did not answer after all retries (or the backend has no credentials for it)."""


class NoCredentials(LabelStudioUnavailable):
    """Neither LABEL_STUDIO_API_KEY nor a /setup gave the project a Label Studio address and token; a
    job that fails for this runs again when they come."""


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error: the status and its short reason (never the headers)."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


class LabelStudioRefused(LabelStudioError):
    """Label Studio refused the backend's credentials (401/403), or, asked for the project, knows no
    such project (404)."""


def answer_error(url: str, what: str, exc: ApiError) -> LabelStudioError:
    """The SDK's error as a LabelStudioError: status and Label Studio's `detail` (200 characters at
    most), what a person needs to act; refusals say what to do."""
    status = int(exc.status_code or 0)
    body = exc.body
    detail = body.get("detail") or body.get("error") if isinstance(body, dict) else body
    reason = " ".join(str(detail or "").split())[:200]
    answer = f"'{what}': HTTP {status}" + (f" {reason}" if reason else "")
    if status in (401, 403):
        return LabelStudioRefused(f"Label Studio at {url} refused the backend's token ({answer}). {ACCESS_ADVICE}",
                                  status)
    return LabelStudioError(f"Label Studio at {url} answered {answer}", status)


class DownloadError(ValueError):
    """One file that could not be fetched. The reason is short and never quotes the remote answer."""


NO_ANSWER = (httpx.TransportError, ConnectionError, TimeoutError)


class DownloadLimits:
    """What every download of the process shares: seconds per file (all of it), files at once, bytes."""

    def __init__(self, timeout: float = 60.0, concurrent: int = 4, max_bytes: int = MAX_DOWNLOAD_BYTES):
        self.timeout, self.concurrent, self.max_bytes = timeout, concurrent, max_bytes
        self.slots = threading.BoundedSemaphore(concurrent)


class _Deadline:
    """Shuts a download's sockets when its time is up, whatever it is waiting for (connect, headers
    that trickle in, body); httpx's own timeouts bound each read, not the whole transfer."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def trace(self, event: str, info: dict) -> None:  # httpcore's trace extension
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                self._sockets.append(sock)
                if self.expired:
                    _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv(), which close() does not
    except OSError:
        pass


def _text(stamp) -> str:
    return stamp.isoformat() if hasattr(stamp, "isoformat") else str(stamp or "")


def _scheme(url: str) -> str | None:
    try:
        return urlparse(url).scheme
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


class _Transient(Exception):
    """A failure worth retrying on Label Studio's own host: no connection, or a 5xx."""

    def __init__(self, reason: str, connection: bool):
        super().__init__(reason)
        self.connection = connection


class LabelStudioClient:
    def __init__(self, url: str, api_key: str, attempts: int = 5, backoff: float = 1.0,
                 downloads: DownloadLimits | None = None):
        if not url or not api_key:
            raise ValueError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed to talk to Label Studio")
        self.url = url.rstrip("/")
        self.attempts = attempts
        self.backoff = backoff
        self.downloads = downloads or DownloadLimits()
        # the retries are `_call`'s (attempts, backoff, logged); the SDK's own two per call would
        # multiply them (5 attempts were 15 requests of up to 60 s each)
        self.sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=60, max_retries=0)
        self.calls: Counter[str] = Counter()  # calls by kind (ids as N), for /metrics and the scale benchmark
        self._count_lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._count_lock:
            self.calls[re.sub(r"[0-9]+", "N", what)] += 1

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        self._count(what)
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except ApiError as exc:
                error: Exception = answer_error(self.url, what, exc)
            except NO_ANSWER as exc:
                error = LabelStudioUnavailable(f"Label Studio at {self.url} did not answer '{what}' after {attempt} "
                                               f"attempts: {type(exc).__name__}: {exc}")
            if isinstance(error, LabelStudioError) and error.status_code < 500:
                raise error from None
            if attempt == self.attempts:
                raise (LabelStudioUnavailable(f"{error} ({attempt} attempts)") if isinstance(error, LabelStudioError)
                       else error) from None
            log.warning("'%s' failed (%s); retry %d/%d in %.1fs", what, error, attempt, self.attempts - 1, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def check_access(self, project: int) -> None:
        """One cheap call with the backend's credentials (the project itself, no retry, CHECK_SECONDS):
        LabelStudioRefused when Label Studio refuses them, LabelStudioUnavailable when it does not
        answer in time."""
        options = {"timeout_in_seconds": CHECK_SECONDS, "max_retries": 0}
        self._count(f"read project {project}")
        try:
            self.sdk.projects.get(id=project, request_options=options)
        except ApiError as exc:
            if exc.status_code == 404:
                raise LabelStudioRefused(f"Label Studio at {self.url} does not know project {project}: is it the "
                                         "Label Studio that holds it (LABEL_STUDIO_URL)?", 404) from None
            raise answer_error(self.url, f"read project {project}", exc) from None
        except NO_ANSWER as exc:
            raise LabelStudioUnavailable(f"Label Studio at {self.url} did not answer within {CHECK_SECONDS:g} s "
                                         f"({type(exc).__name__})") from None

    # reading -----------------------------------------------------------------------------------
    def tasks(self, project: int, resolve_uri: bool = True, query: dict | None = None) -> list[dict]:
        """The project's tasks as {"id", "data", "is_labeled", "updated_at" (Label Studio's text, which
        changes whenever one of the task's annotations or predictions does), "annotations" (how many,
        skips included)}: every task, or those a Data Manager `query` picks (its "filters" or
        "selectedItems"); `resolve_uri=False` gives the data as stored (cloud URIs unresolved: what a
        copy of the task must hold)."""
        picked = json.dumps(query) if query is not None else None

        def fetch():
            return [{"id": t.id, "data": dict(t.data or {}), "is_labeled": bool(t.is_labeled),
                     "updated_at": _text(getattr(t, "updated_at", None)),
                     "annotations": (t.total_annotations or 0) + (t.cancelled_annotations or 0)}
                    for t in self.sdk.tasks.list(project=project, fields="task_only", resolve_uri=resolve_uri,
                                                 query=picked)]
        return self._call(f"list {'chosen ' if query is not None else ''}tasks of project {project}", fetch)

    def tasks_by_id(self, project: int, ids: list[int], resolve_uri: bool = True, batch: int = 100) -> list[dict]:
        """The tasks `ids` as `tasks` gives them, `batch` a call (the ids travel in the URL)."""
        return [t for start in range(0, len(ids), batch) for t in self.tasks(
            project, resolve_uri, {"selectedItems": {"all": False, "included": ids[start:start + batch]}})]

    def annotations(self, project: int, tasks: list[int], batch: int = 100) -> dict[int, list[dict]]:
        """Every annotation of each task, skips included, as Label Studio's webhooks carry them ({"id",
        "task", "result", "updated_at", "created_at", "was_cancelled"}): the Data Manager's task list of
        just those tasks (a task's own annotation list leaves skips out), `batch` tasks a call."""
        keys = ("id", "task", "result", "updated_at", "created_at", "was_cancelled")
        out: dict[int, list[dict]] = {}
        for start in range(0, len(tasks), batch):
            chosen = tasks[start:start + batch]
            query = json.dumps({"selectedItems": {"all": False, "included": chosen}})

            def fetch():
                return {int(t.id): [{k: a.get(k) for k in keys} for a in (getattr(t, "annotations", None) or [])]
                        for t in self.sdk.tasks.list(project=project, fields="all", query=query, resolve_uri=False)}
            out.update(self._call(f"read the annotations of {len(chosen)} tasks of project {project}", fetch))
        return out

    def _auth_headers(self) -> dict[str, str]:
        # The SDK's client wrapper owns the token logic (legacy token or refreshed JWT access token).
        return dict(self.sdk._client_wrapper.get_headers())

    def download(self, url: str) -> bytes:
        """Fetch a task's file. Label Studio paths (/data/upload/..., /data/local-files/...) and URLs on
        Label Studio's host get the API credentials and retries; other hosts never see the key and
        get one attempt. Raises DownloadError for this file, LabelStudioUnavailable when Label
        Studio's own host cannot be reached at all."""
        if not isinstance(url, str) or not url:
            raise DownloadError("the task has no image URL")
        self._count("download a task file")
        absolute = urljoin(self.url + "/", url) if url.startswith("/") else url
        if _scheme(absolute) not in ("http", "https"):
            raise DownloadError("only Label Studio paths and http(s) URLs can be fetched (configure cloud "
                                "storage with presigned URLs in Label Studio)")
        own_host = self._own_host(absolute)
        limits = self.downloads
        with _Deadline(limits.timeout) as deadline:
            if not limits.slots.acquire(timeout=max(0.0, deadline.remaining())):
                raise DownloadError(f"{limits.concurrent} other downloads held every slot for {limits.timeout:g} s")
            try:
                delay = self.backoff
                for attempt in range(1, self.attempts + 1):
                    try:
                        return self._fetch(absolute, deadline)
                    except _Transient as exc:
                        last = attempt == self.attempts or deadline.remaining() < delay
                        if not own_host or last:
                            if own_host and exc.connection:
                                raise LabelStudioUnavailable(
                                    f"Label Studio at {self.url} did not answer a download after {attempt} "
                                    f"attempts: {exc}") from None
                            raise DownloadError(str(exc)) from None
                        log.warning("Label Studio at %s: download failed (%s); retry %d/%d in %.1fs", self.url, exc,
                                    attempt, self.attempts - 1, delay)
                        time.sleep(delay)
                        delay *= 2
            finally:
                limits.slots.release()
        raise AssertionError("unreachable")

    def _own_host(self, url: str) -> bool:
        return urlparse(url).netloc == urlparse(self.url).netloc

    def _fetch(self, url: str, deadline: _Deadline) -> bytes:
        """One attempt: follow at most MAX_REDIRECTS redirects by hand (each target checked and given
        the key only on Label Studio's host), then read the body within the deadline and size cap."""
        seconds = self.downloads.timeout
        with httpx.Client(follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise DownloadError(f"no complete answer within {seconds:g} s")
                headers = self._auth_headers() if self._own_host(url) else {}
                request = client.build_request("GET", url, headers=headers, timeout=remaining,
                                               extensions={"trace": deadline.trace})
                try:
                    response = client.send(request, stream=True)
                    try:
                        if response.is_redirect:
                            url = urljoin(str(response.url), response.headers.get("location", ""))
                            if _scheme(url) not in ("http", "https"):
                                raise DownloadError("redirected to an address that is not http(s)")
                            continue
                        if response.status_code >= 500:
                            raise _Transient(f"HTTP {response.status_code}", connection=False)
                        if response.status_code >= 400:
                            raise DownloadError(f"HTTP {response.status_code}")
                        return self._body(response)
                    finally:
                        response.close()
                except (httpx.InvalidURL, UnicodeError):  # e.g. a host name IDNA cannot encode
                    raise DownloadError("not a valid URL") from None
                except httpx.TransportError as exc:
                    if deadline.expired or isinstance(exc, httpx.TimeoutException):
                        raise DownloadError(f"no complete answer within {seconds:g} s") from None
                    raise _Transient(f"connection failed ({type(exc).__name__})",
                                     connection=isinstance(exc, (httpx.ConnectError, httpx.ProxyError))) from None
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects")

    def _body(self, response: httpx.Response) -> bytes:
        cap = self.downloads.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise DownloadError(f"larger than {cap:,} bytes")
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > cap:
                raise DownloadError(f"larger than {cap:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # writing -----------------------------------------------------------------------------------
    def create_prediction(self, task: int, result: list[dict], model_version: str, score: float | None) -> int:
        prediction = self._call(f"create prediction on task {task}", lambda: self.sdk.predictions.create(
            task=task, result=result, model_version=model_version, score=score))
        return int(prediction.id)

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        """Many predictions ({"task", "result", "model_version", "score"}) in one call."""
        self._call(f"import {len(predictions)} predictions into project {project}",
                   lambda: self.sdk.projects.import_predictions(id=project, request=predictions))

    def update_prediction(self, prediction: int, result: list[dict]) -> None:
        self._call(f"update prediction {prediction}", lambda: self.sdk.predictions.update(id=prediction, result=result))

    def find_prediction(self, task: int, model_version: str) -> int | None:
        def find():
            for p in self.sdk.predictions.list(task=task):
                if p.model_version == model_version:
                    return int(p.id)
            return None
        return self._call(f"list predictions of task {task}", find)

    def create_query_task(self, project: int, data: dict) -> int:
        """A task created out of the labeling queue (is_labeled, overlap 0): the queue must not serve it
        before its query points exist and the project shows their version (`release_task`)."""
        task = self._call(f"create a query task in project {project}", lambda: self.sdk.tasks.create(
            project=project, data=data, is_labeled=True, overlap=0))
        return int(task.id)

    def release_task(self, task: int, overlap: int) -> None:
        """Put a query task into the labeling queue."""
        self._call(f"put task {task} into the labeling queue",
                   lambda: self.sdk.tasks.update(id=str(task), overlap=overlap, is_labeled=False))

    def retire_task(self, task: int) -> None:
        """Take the task out of the labeling queue: a task is served while it is not `is_labeled`, and
        Label Studio recomputes that as (annotators >= overlap), which overlap 0 keeps true."""
        self._call(f"take task {task} out of the labeling queue",
                   lambda: self.sdk.tasks.update(id=str(task), overlap=0, is_labeled=True))

    def prepare_queue(self, project: int, model_version: str, round_key: str) -> int:
        """The project settings the queue of queries needs: uncertainty sampling over the predictions of
        `model_version` (lowest score first), predictions shown to annotators, no training request on
        every submission, a skip that counts as done (Label Studio then serves the task to nobody
        else), and the saved view of the round's open query tasks: those whose `query_key` starts
        with `round_key`, with no annotation and no skip yet. Returns the project's annotations per
        task (the overlap of a task in the queue)."""
        current = self._call(f"read project {project}", lambda: self.sdk.projects.get(id=project))
        self._call(f"set up the labeling queue of project {project}", lambda: self.sdk.projects.update(
            id=project, model_version=model_version, sampling="Uncertainty sampling", show_collab_predictions=True,
            min_annotations_to_start_training=0, show_instruction=True, skip_queue="IGNORE_SKIPPED"))
        data = {
            "title": QUERY_VIEW_TITLE,
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:data.query_key", "operator": "contains", "type": "String", "value": round_key},
                {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
                {"filter": "filter:tasks:cancelled_annotations", "operator": "equal", "type": "Number", "value": 0}]},
            "ordering": ["tasks:predictions_score"],
        }

        def upsert():
            for view in self.sdk.views.list(project=project):
                if (view.data or {}).get("title") == QUERY_VIEW_TITLE:
                    self.sdk.views.update(id=view.id, data=data, project=project)
                    return
            self.sdk.views.create(project=project, data=data)
        self._call(f"save the query view of project {project}", upsert)
        return int(current.maximum_annotations or 1)

    def post_notice(self, project: int, status: str) -> None:
        """Tell annotators where the loop stands (ml_backend/label_studio/round_notice.py): the backend's part of the
        project's instructions and description is replaced, what the project had before it is kept."""
        current = self._call(f"read project {project}", lambda: self.sdk.projects.get(id=project))
        instruction = notice.merged(current.expert_instruction, notice.instruction_block(status),
                                    notice.INSTRUCTION_START)
        description = notice.merged(current.description, notice.description_line(status), notice.DESCRIPTION_MARKER)
        self._call(f"write the notice of project {project}", lambda: self.sdk.projects.update(
            id=project, expert_instruction=instruction, description=description, show_instruction=True))
        log.info("project %s: told annotators: %s", project, status)
