"""Where a project's files live under MODEL_DIR: resized and original task images, head checkpoints,
records, pushed segmentations and cached click expansions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


class ProjectFiles:
    def __init__(self, model_dir: Path, project: int):
        self.root = Path(model_dir) / "projects" / str(project)
        self.images = self.root / "images"
        self.heads = self.root / "heads"
        self.records = self.root / "records"
        self.originals = self.root / "originals"  # as downloaded, for /predict and click expansion
        self.segmentations = self.root / "segmentations"  # <head version>/<task>.json (as pushed) and .npy (class map)
        self.expansions = self.root / "expansions"  # the expander's regions of labeled clicks
        for d in (self.images, self.heads, self.records, self.originals):
            d.mkdir(parents=True, exist_ok=True)

    def image_path(self, task: int) -> Path:
        return self.images / f"{task}.png"

    def save_image(self, task: int, image: np.ndarray) -> None:
        tmp = self.images / f".{task}.tmp.png"
        Image.fromarray(image).save(tmp)
        os.replace(tmp, self.image_path(task))  # atomic: a crash leaves the old file or none

    def load_image(self, task: int) -> np.ndarray:
        with Image.open(self.image_path(task)) as im:
            return np.asarray(im.convert("RGB"))

    def original_path(self, task: int) -> Path:
        return self.originals / f"{task}.png"

    def segmentation_path(self, version: str, task: int) -> Path:
        """Without a suffix: the segmentation's files add theirs."""
        return self.segmentations / version / str(task)

    def head_path(self, version: str) -> Path:
        return self.heads / f"{version}.pt"
