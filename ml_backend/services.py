"""The long-lived pieces the HTTP handlers and the jobs share."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ml_backend.config import Settings
from ml_backend.engine import Engine
from ml_backend.label_config import LabelConfigError, LabelSchema
from ml_backend.label_studio import LabelStudioClient
from ml_backend.progress import Progress
from ml_backend.store import Store
from ml_backend.workspace import ProjectFiles


@dataclass
class Services:
    settings: Settings
    store: Store
    engine: Engine
    progress: Progress = field(default_factory=Progress)
    # Label Studio's own address and token from /setup, used when LABEL_STUDIO_API_KEY is not set.
    _setup_credentials: dict[int, tuple[str, str]] = field(default_factory=dict, repr=False)
    _clients: dict[tuple[str, str], LabelStudioClient] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        settings.model_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings, Store(settings.model_dir / "state.sqlite3"), Engine(settings))

    def remember_setup_credentials(self, project: int, hostname: str | None, token: str | None) -> None:
        if hostname and token:
            with self._lock:
                self._setup_credentials[project] = (hostname.rstrip("/"), token)

    def client(self, project: int) -> LabelStudioClient:
        s = self.settings
        if s.label_studio_api_key:
            url, key = s.label_studio_url, s.label_studio_api_key
        elif project in self._setup_credentials:
            url, key = self._setup_credentials[project]
        else:
            raise RuntimeError("no Label Studio credentials: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                               "(or connect the backend from Label Studio, whose /setup call carries them)")
        with self._lock:
            if (url, key) not in self._clients:
                self._clients[(url, key)] = LabelStudioClient(url, key)
            return self._clients[(url, key)]

    def files(self, project: int) -> ProjectFiles:
        return ProjectFiles(self.settings.model_dir, project)

    def schema(self, project: int) -> LabelSchema:
        row = self.store.project(project)
        if row is None:
            raise LabelConfigError(f"project {project} has not been set up yet (Label Studio calls /setup on connect)")
        return LabelSchema(**{**row["schema"], "classes": tuple(row["schema"]["classes"])})
