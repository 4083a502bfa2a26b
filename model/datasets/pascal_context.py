"""PASCAL-Context on VOC2010: the paper's 33 classes, or the common 59.

    VOC2010/JPEGImages/2008_000008.jpg           VOCtrainval_03-May-2010.tar
    VOC2010/ImageSets/Main/train.txt, val.txt    the splits: 4,998 and 5,105 images
    VOC2010/trainval/2008_000008.mat             trainval.tar.gz of the Pascal-Context page (LabelMap, 459 labels)

The paper (4.1) uses "the 33 most frequent categories", as does the reference's preprocessing
(these 459-label ids, in its order); every other label, unlabeled (0) included, is void. The
59-class version of the literature (`--dataset pascal-context-59`) keeps the 59 ids of the Detail
API / MMSegmentation mapping, in alphabetical order, with the same void rule. Images are squashed
to the square (the paper's text and table 3).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from model.datasets.segmentation import IGNORE_INDEX, SegmentationDataset

LAYOUT = "JPEGImages/, ImageSets/Main/<split>.txt and trainval/*.mat (VOC2010 with Pascal-Context's labels)"
PREPROCESS = "resize"
PAPER_33 = (("aeroplane", 2), ("bicycle", 23), ("bird", 25), ("boat", 31), ("bottle", 34), ("bus", 45), ("car", 59),
            ("cat", 65), ("chair", 72), ("cow", 98), ("table", 397), ("dog", 113), ("horse", 207), ("motorbike", 258),
            ("person", 284), ("pottedplant", 308), ("sheep", 347), ("sofa", 368), ("train", 416), ("tvmonitor", 427),
            ("sky", 360), ("grass", 187), ("ground", 189), ("road", 324), ("building", 44), ("tree", 420),
            ("water", 445), ("mountain", 259), ("wall", 440), ("floor", 158), ("track", 415), ("keyboard", 220),
            ("ceiling", 68))
COMMON_59 = (("aeroplane", 2), ("bag", 9), ("bed", 18), ("bedclothes", 19), ("bench", 22), ("bicycle", 23),
             ("bird", 25), ("boat", 31), ("book", 33), ("bottle", 34), ("building", 44), ("bus", 45), ("cabinet", 46),
             ("car", 59), ("cat", 65), ("ceiling", 68), ("chair", 72), ("cloth", 80), ("computer", 85), ("cow", 98),
             ("cup", 104), ("curtain", 105), ("dog", 113), ("door", 115), ("fence", 144), ("floor", 158),
             ("flower", 159), ("food", 162), ("grass", 187), ("ground", 189), ("horse", 207), ("keyboard", 220),
             ("light", 232), ("motorbike", 258), ("mountain", 259), ("mouse", 260), ("person", 284), ("plate", 295),
             ("platform", 296), ("pottedplant", 308), ("road", 324), ("rock", 326), ("sheep", 347), ("shelves", 349),
             ("sidewalk", 354), ("sign", 355), ("sky", 360), ("snow", 366), ("sofa", 368), ("table", 397),
             ("track", 415), ("train", 416), ("tree", 420), ("truck", 424), ("tvmonitor", 427), ("wall", 440),
             ("water", 445), ("window", 454), ("wood", 458))
LABELS = 459
DOWNLOAD = "https://cs.stanford.edu/~roozbeh/pascal-context/"


def _lookup(classes: tuple[tuple[str, int], ...]) -> np.ndarray:
    table = np.full(LABELS + 1, IGNORE_INDEX, dtype=np.uint8)
    table[[label for _, label in classes]] = np.arange(len(classes))
    return table


def read_label_map(path: Path, lookup: np.ndarray) -> np.ndarray:
    """The .mat's LabelMap (459 labels) through `lookup` to class indices and void."""
    try:
        label_map = loadmat(path)["LabelMap"]
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a Pascal-Context label file with a LabelMap ({exc})") from None
    if label_map.ndim != 2 or label_map.min() < 0 or label_map.max() > LABELS:
        raise ValueError(f"{path}: LabelMap must be a 2-D map of labels 0..{LABELS}")
    return lookup[label_map]


def splits(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)


def recognizes(root: Path) -> bool:
    return (root / "JPEGImages").is_dir() and (root / "trainval").is_dir() and (root / "ImageSets" / "Main").is_dir()


def load(root: Path, split: str, preprocess: str = PREPROCESS, classes: tuple[tuple[str, int], ...] = PAPER_33,
         name: str = "pascal-context") -> SegmentationDataset:
    root = Path(root)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"Pascal-Context split '{split}' needs {listing}; splits here: "
                                f"{', '.join(splits(root)) if (root / 'ImageSets' / 'Main').is_dir() else 'none'}")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    labels = [root / "trainval" / f"{i}.mat" for i in ids]
    for kind, paths, where in (("images", images, "VOCtrainval_03-May-2010.tar"),
                               ("label files", labels, f"trainval.tar.gz from {DOWNLOAD}")):
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the {len(ids)} {kind} of {listing.name} are missing, "
                                    f"e.g. {missing[0]} ({where})")
    return SegmentationDataset(name, split, images, labels, tuple(n for n, _ in classes), IGNORE_INDEX, preprocess,
                               partial(read_label_map, lookup=_lookup(classes)))


def load_59(root: Path, split: str, preprocess: str = PREPROCESS) -> SegmentationDataset:
    return load(root, split, preprocess, COMMON_59, "pascal-context-59")
