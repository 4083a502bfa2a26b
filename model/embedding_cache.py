"""An expander's per-image work, computed once and read by every process: SAM's image embedding, the
superpixel segmentation.

Two tiers. Memory: a small LRU per process, for the clicks that follow one another on an image.
Disk (given a directory, the backend's `MODEL_DIR/embeddings/<expander>`): one `.npz` per image,
keyed by the image's content digest under a directory named for the model, so gunicorn's threads
and processes and the RQ worker that prefetched a round's images all find what any of them
computed. Files are written to a private temporary name and renamed into place (a reader sees a
whole file or none), float arrays are stored in float16 (a SAM vit_b embedding: 2 MiB), and the
least recently used files are deleted once the directory outgrows its byte budget (a read
refreshes a file's mtime, so the order holds across processes).

Whatever tier answers, the arrays are the float16-rounded ones, so a click gives the same mask
whether its image was encoded in this process or another.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_DISK_BYTES = 2 * 2**30
STALE_TEMPORARY_S = 3600  # a temporary file this old was left by a process that died while writing


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class LRUCache:
    """A small thread-safe LRU map with hit/miss counters."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items


def _stored(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float16) if np.issubdtype(v.dtype, np.floating) else v for k, v in arrays.items()}


class EmbeddingCache:
    def __init__(self, memory_items: int, directory: str | Path | None = None,
                 disk_bytes: int = DEFAULT_DISK_BYTES):
        self.memory = LRUCache(memory_items)
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.disk_bytes = disk_bytes
        self.disk_hits = self.computed = 0
        self._compute_lock = threading.Lock()  # one computation at a time: a second click waits for the first

    def fetch(self, image: np.ndarray, compute: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The image's arrays from memory, else from disk, else from `compute(image)` (then stored in both)."""
        key = image_digest(image)
        arrays = self.memory.get(key)
        if arrays is not None:
            return arrays
        with self._compute_lock:
            if key in self.memory:
                return self.memory.get(key)
            arrays = self._read(key)
            if arrays is None:
                arrays = _stored(compute(image))
                self.computed += 1
                self._write(key, arrays)
            else:
                self.disk_hits += 1
            self.memory.put(key, arrays)
            return arrays

    def describe(self) -> dict:
        return {"memory_hits": self.memory.hits, "disk_hits": self.disk_hits, "computed": self.computed,
                "directory": str(self.directory) if self.directory else None}

    # disk ---------------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def _read(self, key: str) -> dict[str, np.ndarray] | None:
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
            os.utime(path)  # recently used: evicted last
            return arrays
        except FileNotFoundError:
            return None
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable cached embedding %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None

    def _write(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        if self.directory is None:
            return
        tmp = self.directory / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, self._path(key))
        except OSError as exc:  # a full or read-only disk costs speed, never the click
            log.warning("could not cache an embedding in %s: %s", self.directory, exc)
            tmp.unlink(missing_ok=True)
            return
        self._evict()

    def _evict(self) -> None:
        files = []
        for entry in os.scandir(self.directory):
            try:
                stat = entry.stat()
            except FileNotFoundError:  # deleted by another process meanwhile
                continue
            if entry.name.endswith(".npz"):
                files.append((stat.st_mtime, stat.st_size, entry.path))
            elif entry.name.endswith(".tmp") and time.time() - stat.st_mtime > STALE_TEMPORARY_S:
                Path(entry.path).unlink(missing_ok=True)
        used = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if used <= self.disk_bytes:
                break
            Path(path).unlink(missing_ok=True)
            used -= size
