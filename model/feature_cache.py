"""Decoder activations on disk, per (image, noise), at their native resolutions in float16.

The noises are seeded, so an image's maps never change for a given backbone and feature
configuration: the simulation reuses them across rounds, strategies and seeds. Native maps are
far smaller than dense per-pixel features (tiny backbone at 128x128: 4.5 MB per image and noise
instead of 25 MB; imagenet256 at 256x256: 145 MB instead of 1.6 GB), and the cache stops adding
files once its size budget is spent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from model.features import FeatureMaps

log = logging.getLogger(__name__)


class FeatureMapCache:
    def __init__(self, directory: str | Path, fingerprint: dict, budget_bytes: int):
        tag = hashlib.sha1(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.directory = Path(directory) / tag
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "fingerprint.json").write_text(json.dumps(fingerprint, sort_keys=True, default=str))
        self.budget = budget_bytes
        self.used = sum(p.stat().st_size for p in self.directory.glob("*.npz"))
        self.hits = self.misses = 0

    def _path(self, key: str, noise: int) -> Path:
        return self.directory / f"{hashlib.sha1(key.encode()).hexdigest()}-{noise}.npz"

    def get(self, key: str, noise: int, resolution: int, normalize: bool) -> FeatureMaps | None:
        path = self._path(key, noise)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with np.load(path) as z:
                maps = [torch.from_numpy(z[f"m{i}"]).float() for i in range(len(z.files))]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable cached maps %s: %s", path.name, exc)
            self.misses += 1
            return None
        self.hits += 1
        return FeatureMaps(maps, resolution, normalize)

    def put(self, key: str, noise: int, maps: FeatureMaps) -> None:
        arrays = {f"m{i}": m.detach().to(torch.float16).cpu().numpy() for i, m in enumerate(maps.maps)}
        size = sum(a.nbytes for a in arrays.values())
        if self.used + size > self.budget:
            return
        path = self._path(key, noise)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        self.used += size
