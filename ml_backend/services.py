"""The long-lived pieces the HTTP handlers and the jobs share."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

from ml_backend.config import Settings, SettingsError
from ml_backend.engine import Engine
from ml_backend.label_studio.label_config import LabelConfigError, LabelSchema
from ml_backend.state.labeled_set import ExpansionCache
from ml_backend.label_studio.client import (DownloadLimits, LabelStudioClient, LabelStudioRefused, LabelStudioUnavailable,
                                     NoCredentials)
from ml_backend.jobs.progress import Progress
from ml_backend.state.store import Store
from ml_backend.state.workspace import ProjectFiles

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings  # the environment's: per backend, and every project's defaults
    store: Store
    engine: Engine
    progress: Progress
    downloads: DownloadLimits = field(default_factory=DownloadLimits)
    refused_credentials: dict[int, str] = field(default_factory=dict)  # project -> why, for /health
    refused_by_label_studio: dict[int, str] = field(default_factory=dict)  # project -> Label Studio's refusal
    _clients: dict[tuple[str, str], LabelStudioClient] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        settings.model_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.database_url or settings.model_dir / "state.sqlite3")
        return cls(settings, store, Engine(settings), Progress(store),
                   downloads=DownloadLimits(settings.download_timeout, settings.max_downloads))

    def settings_for(self, project: int) -> Settings:
        """The project's effective settings: the environment's, with the overrides Label Studio sent
        in /setup (validated when they arrived; a stored override that no longer validates, after
        the environment changed, is logged and left out)."""
        overrides = self.store.overrides(project)
        try:
            return self.settings.for_project(overrides)
        except SettingsError as exc:
            log.error("project %s: its settings from Label Studio no longer apply (%s); using the environment's",
                      project, exc)
            return self.settings

    def accept_setup_credentials(self, project: int, hostname: str | None, token: str | None,
                                 authenticated: bool) -> bool:
        """Take Label Studio's address and token from /setup when no LABEL_STUDIO_API_KEY is set, and keep
        them in the store (a restarted process and RQ workers elsewhere need them too). The first ones a
        project gets are kept; only an authenticated /setup (BASIC_AUTH) may change them, so that an
        anonymous caller cannot re-point a project to another server. A refusal is logged and kept for
        /health. True when the project got new or changed credentials."""
        if not (hostname and token) or self.settings.label_studio_api_key:
            return False
        url = hostname.rstrip("/")
        with self._lock:
            known = self.store.credentials(project)
            if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
                reason = "the address /setup sent is not an http(s) URL"
            elif known is None or known == (url, token) or authenticated:
                self.refused_credentials.pop(project, None)
                return self.store.save_credentials(project, url, token)
            else:
                reason = ("a /setup without authentication sent another Label Studio address or token than the "
                          "ones this project already uses; they are kept. To change them, set BASIC_AUTH_USER and "
                          "BASIC_AUTH_PASS (and the same in Label Studio's model settings), or set LABEL_STUDIO_URL "
                          "and LABEL_STUDIO_API_KEY")
            self.refused_credentials[project] = reason
        log.warning("project %s: Label Studio credentials from /setup refused: %s", project, reason)
        return False

    def check_access(self, project: int) -> None:
        """Ask Label Studio once whether it takes the credentials the project's jobs will use, so that
        /setup, and with it the Connect Model dialog, says at once when it does not (a default Label
        Studio 1.23 refuses the legacy token /setup carries). A refusal is kept for /health and
        raised; no answer in time is only logged, since the jobs retry."""
        try:
            client = self.client(project)
        except NoCredentials:
            return  # /health and the jobs say so
        try:
            client.check_access(project)
        except LabelStudioRefused as exc:
            with self._lock:
                self.refused_by_label_studio[project] = str(exc)
            log.warning("project %s: %s", project, exc)
            raise
        except LabelStudioUnavailable as exc:
            log.warning("project %s: credentials not checked: %s", project, exc)
            return
        with self._lock:
            self.refused_by_label_studio.pop(project, None)

    def has_credentials(self, project: int) -> bool:
        return bool(self.settings.label_studio_api_key) or self.store.credentials(project) is not None

    def client(self, project: int) -> LabelStudioClient:
        s = self.settings
        if s.label_studio_api_key:
            url, key = s.label_studio_url, s.label_studio_api_key
        elif (stored := self.store.credentials(project)) is not None:
            url, key = stored
        else:
            raise NoCredentials(
                "no Label Studio credentials: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or connect the "
                "backend from Label Studio, whose /setup call carries them)")
        with self._lock:
            if (url, key) not in self._clients:
                self._clients[(url, key)] = LabelStudioClient(url, key, downloads=self.downloads)
            return self._clients[(url, key)]

    def label_studio_calls(self) -> dict[str, int]:
        """This process's calls to Label Studio since it started, by kind (summed over its clients)."""
        with self._lock:
            clients = list(self._clients.values())
        return dict(sum((c.calls for c in clients), Counter()))

    def files(self, project: int) -> ProjectFiles:
        return ProjectFiles(self.settings.model_dir, project)

    def expansions(self, project: int, settings: Settings) -> ExpansionCache:
        """The project's cache of click expansions by `settings`' expander, shared by training, the
        learning curve and the regions shown for review."""
        return ExpansionCache(self.files(project).expansions, self.engine.expander(settings))

    def schema(self, project: int) -> LabelSchema:
        row = self.store.project(project)
        if row is None:
            raise LabelConfigError(f"project {project} has not been set up yet (Label Studio calls /setup on connect)")
        return LabelSchema(**{**row["schema"], "classes": tuple(row["schema"]["classes"])})
