"""Segmentation datasets on disk, as `SegmentationDataset`s: one adapter per layout.

`load_dataset(root, split)` finds the adapter from what the directory holds (never from its
name) and refuses to guess when none or several layouts fit; `name=` chooses one. Each adapter
brings its paper's preprocessing unless `preprocess=` overrides it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model.datasets import ade_bed, camvid, cityscapes, folder, label_studio, pascal_context
from model.datasets.segmentation import IGNORE_INDEX, SegmentationDataset

CAMVID_CLASSES = camvid.CLASSES
load_camvid = camvid.load


@dataclass(frozen=True)
class Adapter:
    load: Callable[[Path, str, str], SegmentationDataset]
    layout: str  # what the directory holds, for errors
    preprocess: str  # the paper's (model/preprocessing.py)
    recognizes: Callable[[Path], bool] | None  # None: chosen by name only


ADAPTERS = {
    "folder": Adapter(folder.load, folder.LAYOUT, folder.PREPROCESS, folder.recognizes),
    "label-studio": Adapter(label_studio.load, label_studio.LAYOUT, label_studio.PREPROCESS, label_studio.recognizes),
    "camvid": Adapter(camvid.load, camvid.LAYOUT, camvid.PREPROCESS, camvid.recognizes),
    "cityscapes": Adapter(cityscapes.load, cityscapes.LAYOUT, cityscapes.PREPROCESS, cityscapes.recognizes),
    "pascal-context": Adapter(pascal_context.load, pascal_context.LAYOUT, pascal_context.PREPROCESS,
                              pascal_context.recognizes),
    "pascal-context-59": Adapter(pascal_context.load_59, pascal_context.LAYOUT, pascal_context.PREPROCESS, None),
    "ade-bed": Adapter(ade_bed.load, ade_bed.LAYOUT, ade_bed.PREPROCESS, ade_bed.recognizes),
}


def detect(root: Path) -> str:
    """The one adapter whose layout the directory holds."""
    found = [name for name, a in ADAPTERS.items() if a.recognizes and a.recognizes(root)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{root} fits several layouts ({', '.join(found)}): choose one with --dataset")
    layouts = "; ".join(f"{name}: {a.layout}" for name, a in ADAPTERS.items() if a.recognizes)
    raise ValueError(f"{root} holds no known dataset layout ({layouts}); or choose one with --dataset")


def load_dataset(root: str | Path, split: str, name: str | None = None,
                 preprocess: str | None = None) -> SegmentationDataset:
    """The `split` of the dataset at `root`, by adapter `name` or the layout found there."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist")
    if name is not None and name not in ADAPTERS:
        raise ValueError(f"no adapter {name!r}; known: {', '.join(ADAPTERS)}")
    adapter = ADAPTERS[name or detect(root)]
    return adapter.load(root, split, preprocess or adapter.preprocess)


__all__ = ["ADAPTERS", "CAMVID_CLASSES", "IGNORE_INDEX", "SegmentationDataset", "detect", "load_camvid", "load_dataset"]
