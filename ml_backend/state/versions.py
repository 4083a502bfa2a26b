"""Heads as versions a person controls: list them, pin one as the current head, export one as a file.

Every head is kept (its weights under MODEL_DIR/projects/<project>/heads/, its row in the store)
and named `p<project>-head-<n>`, so that a name says its project. Pinning makes a head the one
that serves /predict and answers /setup at once, and queues a `pin` job (ml_backend/jobs/loop.py) that
closes the open round and selects the next one with that head, without training, so that Label
Studio's project switches to its version: its queries, and after the `segment` job its
segmentations. A pin made while a head trains wins: that head is kept but not made current
(Store.add_head), and its `superseded_by_pin` says why. Nothing is deleted: rolling back leaves
every answer in the store, and the head trained after the next round learns from all of them. The
HTTP endpoint (`POST /versions/pin`) and the command line (`python -m ml_backend heads ...`) both
come here.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch

from ml_backend.web.echo import names, quote
from ml_backend.web.payloads import MAX_ID, MAX_ID_DIGITS
from ml_backend.services import Services
from model.head_export import ExportedHead, FeatureSetup

log = logging.getLogger(__name__)

VERSION_NAME = re.compile(r"p([0-9]+)-head-[0-9]+")


class UnknownVersion(LookupError):
    """No head of that name in that project; the message lists the project's heads."""


def project_of(version: str) -> int | None:
    """The project a head's name carries (`p7-head-3` -> 7), None for a name without one. A project
    no store can hold (past 64 bits) is a ValueError that says so, not a lookup that overflows."""
    match = VERSION_NAME.fullmatch(version)
    if match is None:
        return None
    digits = match.group(1)
    if len(digits.lstrip("0")) > MAX_ID_DIGITS or not 0 < int(digits) <= MAX_ID:
        raise ValueError(f"{quote(version)} names project {quote(digits)}, which is not a positive 64-bit id")
    return int(digits)


def heads(store, project: int | None = None) -> list[dict]:
    """Every head of the project (or of every project), oldest first, with the one that serves marked
    and, for a head newer than that one, the pin that keeps it from serving."""
    projects = [project] if project is not None else store.projects()
    out = []
    for p in projects:
        rows = store.heads(p)
        current = next((h for h in rows if h["current"]), None)
        out += [{"project": p, "version": h["version"], "round": h["round"], "labeled": h["labeled"],
                 "created": h["created"], "current": bool(h["current"]), "report": h["report"],
                 "superseded_by_pin": superseded_by_pin(h, current)} for h in rows]
    return out


def superseded_by_pin(head: dict, current: dict | None) -> str | None:
    """Why a head newer than the current one does not serve: the current one was pinned after it was
    trained (a roll-back) or while it trained (store.add_head). None for any other head, and for a
    store that did not record pins yet."""
    if current is None or head["created"] <= current["created"] or current["pinned_at"] is None:
        return None
    when = "while this head trained" if current["pinned_at"] < head["created"] else "after this head was trained"
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(current["pinned_at"]))
    return f"{current['version']} pinned at {at} {when}"


def pins(store, project: int | None = None) -> dict[str, dict]:
    """Each project's latest pin (project id as text -> version and time), for projects with one."""
    projects = [project] if project is not None else store.projects()
    latest = {p: store.latest_pin(p) for p in projects}
    return {str(p): {"version": pin["version"], "at": pin["pinned_at"]} for p, pin in latest.items() if pin}


def _head(store, project: int, version: str) -> dict:
    row = store.head(project, version)
    if row is None:
        known = names(h["version"] for h in store.heads(project)) or "none yet"
        raise UnknownVersion(f"project {project} has no head {quote(version)} (its heads: {known})")
    return row


def pin(services: Services, runner, project: int, version: str) -> dict:
    """Make `version` the project's current head and queue the round that shows it in Label Studio."""
    _head(services.store, project, version)
    services.store.pin_head(project, version)
    job = runner.submit(project, "pin")
    log.info("project %s: %s pinned as the current head; job %s selects a round with it", project, version, job)
    return {"project": project, "current": version, "job": job}


def export_path(out: str | Path | None, version: str) -> Path:
    """Where a head is exported: `out` when it is a new path or a regular file (replaced), the head's
    own file name (`<version>.head.pt`) inside `out` when it is a directory, that name here without
    `out`. Anything else, a device such as /dev/null or a socket, is a ValueError: the export would
    replace it with a regular file."""
    name = f"{version}.head.pt"
    path = Path(out) if out else Path(name)
    if path.is_dir():
        path = path / name
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is neither a regular file nor a directory: give --out a new path, a file to "
                         "replace or a directory")
    return path


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
