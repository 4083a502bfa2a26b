"""Heads as versions a person controls: list them, pin one as the current head, export one as a file.

Every head is kept (its weights under MODEL_DIR/projects/<project>/heads/, its row in the store)
and named `p<project>-head-<n>`, so that a name says its project. Pinning makes a head the one
that serves /predict and answers /setup at once, and queues a `pin` job (ml_backend/loop.py) that
closes the open round and selects the next one with that head, without training, so that Label
Studio's project switches to its version: its queries, and after the `segment` job its
segmentations. Nothing is deleted: rolling back leaves every answer in the store, and the head
trained after the next round learns from all of them. The HTTP endpoint (`POST /versions/pin`) and
the command line (`python -m ml_backend heads ...`) both come here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ml_backend.services import Services
from model.head_export import ExportedHead, FeatureSetup

log = logging.getLogger(__name__)

VERSION_NAME = re.compile(r"^p(\d+)-head-\d+$")


class UnknownVersion(LookupError):
    """No head of that name in that project; the message lists the project's heads."""


def project_of(version: str) -> int | None:
    """The project a head's name carries (`p7-head-3` -> 7)."""
    match = VERSION_NAME.match(version)
    return int(match.group(1)) if match else None


def heads(store, project: int | None = None) -> list[dict]:
    """Every head of the project (or of every project), oldest first, with the one that serves marked."""
    projects = [project] if project is not None else store.projects()
    return [{"project": p, "version": h["version"], "round": h["round"], "labeled": h["labeled"],
             "created": h["created"], "current": bool(h["current"]), "report": h["report"]}
            for p in projects for h in store.heads(p)]


def _head(store, project: int, version: str) -> dict:
    row = store.head(project, version)
    if row is None:
        known = ", ".join(h["version"] for h in store.heads(project)) or "none yet"
        raise UnknownVersion(f"project {project} has no head {version!r} (its heads: {known})")
    return row


def pin(services: Services, runner, project: int, version: str) -> dict:
    """Make `version` the project's current head and queue the round that shows it in Label Studio."""
    _head(services.store, project, version)
    services.store.pin_head(project, version)
    job = runner.submit(project, "pin")
    log.info("project %s: %s pinned as the current head; job %s selects a round with it", project, version, job)
    return {"project": project, "current": version, "job": job}


def export(services: Services, project: int, version: str, path: str | Path) -> Path:
    """Write the head as one file (model/head_export.py) that `python -m model segment` reads."""
    row = _head(services.store, project, version)
    if row["features"] is not None:
        features = FeatureSetup.from_dict(row["features"])
    else:
        features = services.engine.feature_setup()
        log.warning("%s was trained before heads recorded their features: exporting the backend's current feature "
                    "configuration (%s, %d px)", version, features.backbone, features.config.resolution)
    weights = torch.load(row["path"], map_location="cpu", weights_only=True)
    details = {"project": project, "round": row["round"], "created": row["created"], "labeled": row["labeled"],
               "labels_digest": row["labels_digest"]}
    return ExportedHead(version, tuple(services.schema(project).classes), weights, features, row["report"],
                        details).save(path)
