"""A segmentation dataset as the simulation sees it, whatever layout it came from.

Image paths in a fixed order; for each image a label source and the function that reads it into a
map of class indices 0..C-1 and the void value (a PNG for most layouts, a `.mat` for Pascal-Context,
an export's regions for Label Studio); the class names; the preprocessing that makes both square.
Every read is checked: a label map whose size differs from its image's, or that holds a value that
is neither a class nor void, raises an error naming the file, so bad data stops a run instead of
being learned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.preprocessing import PREPROCESSING, remap_void

IGNORE_INDEX = 255


def require_split(dataset: str, split: str, available: list[str], *directories: Path) -> None:
    """An error naming what a split lacks and the splits there are."""
    if not all(d.is_dir() for d in directories):
        raise FileNotFoundError(f"{dataset} split '{split}' needs {' and '.join(map(str, directories))}; "
                                f"splits here: {', '.join(available) or 'none'}")


def label_files(images: list[Path], label_for: Callable[[Path], Path], label_dir: Path,
                download: str = "") -> list[Path]:
    """Each image's label file; an error naming the missing ones (and where they come from)."""
    labels = [label_for(p) for p in images]
    missing = [str(p.relative_to(label_dir)) for p in labels if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} label maps missing in {label_dir}, e.g. {missing[0]}"
                                + (f" ({download})" if download else ""))
    return labels


def subdirectories(directory: Path) -> list[str]:
    return sorted(d.name for d in directory.iterdir() if d.is_dir()) if directory.is_dir() else []


def read_png_labels(path: Path) -> np.ndarray:
    """A single-channel PNG of class indices (grey or palette)."""
    with Image.open(path) as im:
        if len(im.getbands()) != 1:
            raise ValueError(f"{path}: a label map must be single-channel (grey or palette), this one is {im.mode}")
        return np.asarray(im)


@dataclass
class SegmentationDataset:
    name: str
    split: str
    image_paths: list[Path]
    label_sources: Sequence[Any]  # one per image, what `read_labels` reads; str() names it in errors
    class_names: tuple[str, ...]
    void: int
    preprocess: str = "resize"  # or "center-crop" (model/preprocessing.py)
    read_labels: Callable[[Any], np.ndarray] = read_png_labels
    _digests: dict[Path, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {self.preprocess!r}; choose {', '.join(PREPROCESSING)}")
        if not 0 < len(self.class_names) <= IGNORE_INDEX:
            raise ValueError(f"{self.name}: {len(self.class_names)} classes; 1 to {IGNORE_INDEX} are supported")
        if len(self.image_paths) != len(self.label_sources):
            raise ValueError(f"{self.name}: {len(self.image_paths)} images but {len(self.label_sources)} label maps")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def key(self, index: int) -> str:
        """The image's identity: a digest of its file's bytes, plus the preprocessing unless it is `resize`.

        Candidate pixels are seeded by the key and feature caches keyed by it, so an image gets the
        same candidates and cached maps whatever layout, directory or file name it is read through
        (a CamVid frame in the folder layout, or uploaded to Label Studio under a prefixed name),
        and an edited file never meets stale cached features.
        """
        path = self.image_paths[index]
        if path not in self._digests:
            with open(path, "rb") as f:
                self._digests[path] = hashlib.file_digest(f, "sha256").hexdigest()[:32]
        digest = self._digests[path]
        return digest if self.preprocess == "resize" else f"{digest}@{self.preprocess}"

    def image(self, index: int, resolution: int) -> np.ndarray:
        with Image.open(self.image_paths[index]) as im:
            return PREPROCESSING[self.preprocess][0](im, resolution)

    def raw_labels(self, index: int) -> np.ndarray:
        """The label map at its image's size: class indices and void, checked."""
        source = self.label_sources[index]
        labels = np.asarray(self.read_labels(source))
        with Image.open(self.image_paths[index]) as im:
            width, height = im.size
        if labels.shape != (height, width):
            shape = "x".join(map(str, labels.shape[::-1]))
            raise ValueError(f"{source}: label map of {shape} pixels, but its image {self.image_paths[index]} "
                             f"is {width}x{height}")
        bad = (labels < 0) | ((labels >= self.num_classes) & (labels != self.void))
        if bad.any():
            values = ", ".join(str(v) for v in np.unique(labels[bad])[:10])
            raise ValueError(f"{source}: values {values} are neither a class (0..{self.num_classes - 1}: "
                             f"{', '.join(self.class_names[:3])}, ...) nor void ({self.void})")
        return labels

    def labels(self, index: int, resolution: int) -> np.ndarray:
        """Label map at `resolution` with void mapped to IGNORE_INDEX."""
        square = PREPROCESSING[self.preprocess][1](self.raw_labels(index), resolution)
        return remap_void(square, self.void, IGNORE_INDEX)

    def check(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Read every label map once, so that a bad one stops a run before any feature is computed."""
        for i in range(len(self)):
            self.raw_labels(i)
            if progress:
                progress(i + 1, len(self))

    def head(self, count: int | None) -> SegmentationDataset:
        """The first `count` images in the fixed order (all of them for None)."""
        if count is None:
            return self
        return replace(self, image_paths=self.image_paths[:count], label_sources=self.label_sources[:count])
