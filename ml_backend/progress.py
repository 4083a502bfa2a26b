"""What the background work of each project is doing, for /health and the logs."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Progress:
    def __init__(self):
        self._lock = threading.Lock()
        self._state: dict[int, dict] = {}

    def update(self, project: int, stage: str, done: int | None = None, total: int | None = None,
               message: str | None = None) -> None:
        with self._lock:
            old = self._state.get(project, {})
            state = {"stage": stage, "done": done, "total": total, "message": message, "updated": time.time()}
            changed = old.get("stage") != stage
            tenth = (total and done is not None and total >= 10 and done % max(1, total // 10) == 0) or done == total
            self._state[project] = state
        if changed or tenth or message:
            count = f" {done}/{total}" if total else ""
            log.info("project %s: %s%s%s", project, stage, count, f" ({message})" if message else "")

    def reporter(self, project: int, prefix: str = ""):
        """A callback (stage, done, total) for model/ code."""
        return lambda stage, done, total: self.update(project, f"{prefix}{stage}", done, total)

    def snapshot(self) -> dict:
        with self._lock:
            return {str(p): dict(s) for p, s in self._state.items()}
