"""Calls from the backend to Label Studio, through label-studio-sdk.

The SDK takes either a legacy token or a personal access token (it trades the latter for short-
lived access tokens). Every call retries with exponential backoff when Label Studio is
unreachable or answers 5xx, and logs what it is waiting for; the key is never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urljoin, urlparse

import httpx
from label_studio_sdk import LabelStudio

log = logging.getLogger(__name__)
T = TypeVar("T")

QUERY_VIEW_TITLE = "Active learning: open queries"
MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024


class LabelStudioUnavailable(RuntimeError):
    """Label Studio did not answer after all retries."""


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and status >= 500


class LabelStudioClient:
    def __init__(self, url: str, api_key: str, attempts: int = 5, backoff: float = 1.0):
        if not url or not api_key:
            raise ValueError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed to talk to Label Studio")
        self.url = url.rstrip("/")
        self.attempts = attempts
        self.backoff = backoff
        self.sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=60)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:  # the SDK raises httpx and its own ApiError types
                if not _retryable(exc) or attempt == self.attempts:
                    if _retryable(exc):
                        raise LabelStudioUnavailable(
                            f"Label Studio at {self.url} did not answer '{what}' after {attempt} attempts: "
                            f"{type(exc).__name__}: {exc}") from exc
                    raise
                log.warning("Label Studio at %s: '%s' failed (%s: %s); retry %d/%d in %.1fs", self.url, what,
                            type(exc).__name__, exc, attempt, self.attempts - 1, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # reading -----------------------------------------------------------------------------------
    def tasks(self, project: int, resolve_uri: bool = True) -> list[dict]:
        """Every task of the project as {"id", "data", "is_labeled"}; `resolve_uri=False` gives the data
        as stored (cloud URIs unresolved: what a copy of the task must hold)."""
        def fetch():
            return [{"id": t.id, "data": dict(t.data or {}), "is_labeled": bool(t.is_labeled)}
                    for t in self.sdk.tasks.list(project=project, fields="task_only", resolve_uri=resolve_uri)]
        return self._call(f"list tasks of project {project}", fetch)

    def _auth_headers(self) -> dict[str, str]:
        # The SDK's client wrapper owns the token logic (legacy token or refreshed JWT access token).
        return dict(self.sdk._client_wrapper.get_headers())

    def download(self, url: str) -> bytes:
        """Fetch a task's file. Label Studio paths (/data/upload/..., /data/local-files/...) and URLs on
        Label Studio's host get the API credentials; other hosts never see them."""
        absolute = urljoin(self.url + "/", url) if url.startswith("/") else url
        parsed = urlparse(absolute)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"cannot fetch {url!r}: only Label Studio paths and http(s) URLs are supported "
                             f"(configure cloud storage with presigned URLs in Label Studio)")
        same_host = parsed.netloc == urlparse(self.url).netloc

        def fetch() -> bytes:
            headers = self._auth_headers() if same_host else {}
            with httpx.stream("GET", absolute, headers=headers, timeout=60, follow_redirects=True) as response:
                response.raise_for_status()
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise ValueError(f"{url} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MB")
                    chunks.append(chunk)
                return b"".join(chunks)
        return self._call(f"download {url}", fetch)

    # writing -----------------------------------------------------------------------------------
    def create_prediction(self, task: int, result: list[dict], model_version: str, score: float | None) -> int:
        prediction = self._call(f"create prediction on task {task}", lambda: self.sdk.predictions.create(
            task=task, result=result, model_version=model_version, score=score))
        return int(prediction.id)

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

    def prepare_queue(self, project: int, model_version: str, instruction: str, marker: str) -> int:
        """The project settings the queue of queries needs: uncertainty sampling over the predictions of
        `model_version` (lowest score first), predictions shown to annotators, no training request on
        every submission, and the annotator instructions (added once to any the project has).
        Returns the project's annotations per task (the overlap of a task in the queue)."""
        current = self._call(f"read project {project}", lambda: self.sdk.projects.get(id=project))
        existing = current.expert_instruction or ""
        extra = {} if marker in existing else {"expert_instruction": (existing + "\n" if existing else "") + instruction}
        self._call(f"set up the labeling queue of project {project}", lambda: self.sdk.projects.update(
            id=project, model_version=model_version, sampling="Uncertainty sampling", show_collab_predictions=True,
            min_annotations_to_start_training=0, show_instruction=True, **extra))
        data = {
            "title": QUERY_VIEW_TITLE,
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
                 "value": [model_version]},
                {"filter": "filter:tasks:completed_at", "operator": "empty", "type": "Datetime", "value": True}]},
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
