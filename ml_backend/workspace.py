"""Where a project's files live under MODEL_DIR: resized task images, head checkpoints, records."""

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
        for d in (self.images, self.heads, self.records):
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

    def head_path(self, version: str) -> Path:
        return self.heads / f"{version}.pt"
